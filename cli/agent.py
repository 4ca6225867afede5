"""``stowkit agent``: run the jobs the backup catalog holds for this host (doc/agent.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.cli.catalogreach import (
    configured_url,
    keystone_catalog,
    keystone_error,
    keystone_wanted,
    token_headers,
)
from stowkit.cli.common import Command
from stowkit.corelib import catalogdocs
from stowkit.corelib.agent import actions, engine, options
from stowkit.corelib.agent.client import CatalogClient, HttpCatalog, noauth_headers
from stowkit.corelib.catalogapi.schemas import check_id
from stowkit.corelib.errors import ConfigError, InvalidArgument

LOG = logging.getLogger(__name__)


def trust_auth(service_session: Any, trust_id: str) -> Any:
    """A keystoneauth1 plugin: the agent's own token exchanged for one scoped by a trust.

    Keystone's documented way to consume a trust: the trustee authenticates
    with the token method and the ``OS-TRUST:trust`` scope; the token it gets
    is scoped to the trustor's project with the delegated roles.
    """
    from keystoneauth1.identity import v3

    auth_url = getattr(service_session.auth, "auth_url", None)
    if not auth_url:
        raise ConfigError("[agent] central: the agent's credentials name no auth_url")
    return v3.Token(auth_url=auth_url, token=service_session.get_token(), trust_id=trust_id)


class TrustCatalogs:
    """A central agent's catalog per job: its trust's project, with the trust's token.

    One keystoneauth1 session per trust, made again when the agent's own
    token changed (the trust token is exchanged from it).
    """

    def __init__(self, service_session: Any, url: str, own: HttpCatalog) -> None:
        self.service_session = service_session
        self.url = url
        self.own = own
        self._made: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self._ignored: set[str] = set()

    def _session(self, trust_id: str) -> Any:
        from keystoneauth1 import exceptions as ks_exc
        from keystoneauth1 import session as ks_session

        try:
            token = self.service_session.get_token()
        except ks_exc.ClientException as exc:
            raise keystone_error(exc, "the agent's credentials") from None
        with self._lock:
            made = self._made.get(trust_id)
            if made is None or made[0] != token:
                auth = trust_auth(self.service_session, trust_id)
                made = (token, ks_session.Session(auth=auth, verify=self.service_session.verify))
                self._made[trust_id] = made
            return made[1]

    def __call__(self, job: Mapping[str, Any]) -> CatalogClient | None:
        trust_id = (job.get("user_credentials") or {}).get("trust_id")
        project = job.get("project_id") or self.own.project
        if not trust_id:
            if project == self.own.project:
                return self.own
            job_id = str(job.get("job_id"))
            if job_id not in self._ignored:
                self._ignored.add(job_id)
                LOG.error("job %s (project %s) ignored: it has no trust", job_id, project)
            return None
        what = f"trust {trust_id} of job {job.get('job_id')}"
        return HttpCatalog(
            self.url,
            str(project),
            token_headers(_Lazy(lambda: self._session(str(trust_id))), what),
        )


class _Lazy:
    """A session made on first use (a trust is exchanged only when the job is looked at)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def get_token(self) -> str:
        return self.make().get_token()


class Agent(Command):
    """Register this host as a catalog client and run its jobs, as freezer-scheduler does.

    Jobs run when their job_schedule says (date, interval, cron fields, start
    and end dates); start, stop, abort and remove events are honoured; each
    run is claimed in the catalog first, so no run ever happens twice, even
    across restarts or with agents sharing one client id.  SIGTERM/SIGINT:
    stop polling, abort the runs in progress between two actions, report them.
    """

    service = True  # logs through oslo.log

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--catalog-url", metavar="URL", help="[agent] catalog_url")
        parser.add_argument("--project", help="[agent] project")
        parser.add_argument("--client-id", help="[agent] client_id")
        parser.add_argument(
            "--poll-interval", type=float, metavar="SECONDS", help="[agent] poll_interval"
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="Look at the jobs once, wait for the runs that started, and exit.",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        conf = self.app.conf
        options.register_opts(conf)
        opts = conf[options.GROUP]
        poll = parsed_args.poll_interval or opts.poll_interval
        if poll < 0.2:
            raise InvalidArgument("--poll-interval must be at least 0.2 seconds")
        given_url = configured_url(conf, parsed_args.catalog_url)
        catalog_for = None
        if keystone_wanted(conf):
            if parsed_args.project:
                raise InvalidArgument("--project: with Keystone the project is the token's")
            catalog, session, url = keystone_catalog(conf, given_url)
            project = catalog.project
            if opts.central:
                catalog_for = TrustCatalogs(session, url, catalog)
        else:
            if opts.central:
                raise ConfigError("[agent] central = true needs Keystone credentials")
            project = check_id(parsed_args.project or opts.project, "project")
            url = given_url or opts.catalog_url
            catalog = HttpCatalog(url, project, noauth_headers(opts.user_id))
        hostname, client_id = catalogdocs.identity(conf, project, parsed_args.client_id)

        def context() -> actions.Context:
            return actions.Context(
                hostname=hostname,
                volumes=lambda: self.driver("volume"),
                blockstore=lambda: self.driver("blockstore"),
                image_sync=self._image_sync,
                find_backups=lambda match: catalog.find_backups(match, limit=100),
                forget_backup=catalog.delete_backup,
                freezer_agent=opts.freezer_agent,
            )

        agent = engine.Agent(
            catalog,
            client_id,
            hostname,
            context,
            poll_interval=poll,
            claim_timeout=opts.claim_timeout,
            catalog_for=catalog_for,
            central=opts.central,
        )
        if parsed_args.once:
            agent.register()
            agent.poll_once()
            agent.wait_runs()
            return 0

        def on_signal(signum: int, frame: object) -> None:
            agent.stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.app.stdout.write(f"stowkit agent: client {client_id} on {url} (project {project})\n")
        self.app.stdout.flush()
        try:
            agent.serve()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def _image_sync(self, regions: list[str]) -> Any:
        from stowkit.corelib import imagesync

        return imagesync.build(self.app.conf, self.driver("image")).sync(regions)


COMMANDS = {"agent": Agent}
