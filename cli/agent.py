"""``stowkit agent``: run the jobs the backup catalog holds for this host (doc/agent.md)."""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stowkit.cli.common import Command
from stowkit.corelib import catalogclient
from stowkit.corelib.agent import actions, engine, options
from stowkit.corelib.catalogclient import CatalogClient
from stowkit.corelib.errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from stowkit.corelib.keystone import ServiceLogin

LOG = logging.getLogger(__name__)


class TrustCatalogs:
    """A central agent's catalog per job: its trust's project, with the trust's token.

    The token is exchanged by the Keystone owner from the agent's own login
    when the job is first looked at, and again when the agent's token changed.
    """

    def __init__(self, login: ServiceLogin, own: CatalogClient) -> None:
        self.login = login
        self.own = own
        self._ignored: set[str] = set()

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
        return CatalogClient(
            self.own.url, str(project), self.login.trust_headers(str(trust_id), what)
        )


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
        login = catalogclient.login(conf)
        if login is None and opts.central:
            raise ConfigError("[agent] central = true needs Keystone credentials")
        catalog = catalogclient.connect(
            conf,
            login,
            url=parsed_args.catalog_url,
            project=parsed_args.project,
            client_id=parsed_args.client_id,
        )
        catalog_for = TrustCatalogs(login, catalog) if login is not None and opts.central else None
        url, project, client_id, hostname = (
            catalog.url,
            catalog.project,
            catalog.client_id,
            catalog.hostname,
        )

        def context() -> actions.Context:
            return actions.Context(
                hostname=hostname,
                volumes=lambda: self.driver("volume"),
                blockstore=lambda: self.driver("blockstore"),
                image_sync=lambda: self._image_sync,
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
