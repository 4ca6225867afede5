"""``stowkit agent``: run the jobs the backup catalog holds for this host (doc/agent.md)."""

from __future__ import annotations

import argparse
import signal
import socket
from typing import Any

from stowkit.cli.common import Command
from stowkit.corelib.agent import actions, engine, options
from stowkit.corelib.agent.client import HttpCatalog, noauth_headers
from stowkit.corelib.catalogapi.schemas import check_id
from stowkit.corelib.errors import InvalidArgument


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
        project = check_id(parsed_args.project or opts.project, "project")
        hostname = opts.hostname or socket.gethostname()
        client_id = check_id(
            parsed_args.client_id or opts.client_id or f"{project}_{hostname}", "client_id"
        )
        poll = parsed_args.poll_interval or opts.poll_interval
        if poll < 0.2:
            raise InvalidArgument("--poll-interval must be at least 0.2 seconds")
        url = parsed_args.catalog_url or opts.catalog_url
        catalog = HttpCatalog(url, project, noauth_headers(opts.user_id))

        def context() -> actions.Context:
            return actions.Context(
                hostname=hostname,
                volumes=lambda: self.driver("volume"),
                blockstore=lambda: self.driver("blockstore"),
                image_sync=self._image_sync,
                find_backups=lambda match: catalog.find_backups(match, limit=100),
                freezer_agent=opts.freezer_agent,
            )

        agent = engine.Agent(
            catalog,
            client_id,
            hostname,
            context,
            poll_interval=poll,
            claim_timeout=opts.claim_timeout,
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
