"""``stowkit plugin serve``: the Docker volume plugin and the scheduler, in one process."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any, TextIO

from stowkit.cli.common import Command
from stowkit.corelib import dockerplugin, notify, schedule
from stowkit.corelib.dockerplugin.app import PluginApp
from stowkit.corelib.dockerplugin.server import PluginServer
from stowkit.corelib.errors import StowkitError
from stowkit.corelib.schedule.runner import Scheduler


def serve(
    conf: Any,
    driver: Any,
    socket_path: str,
    out: TextIO,
    with_scheduler: bool = True,
    ready_line: str = "stowkit plugin listening on {socket}",
) -> int:
    """Serve ``driver`` on ``socket_path`` (and run the schedule) until SIGTERM/SIGINT.

    On a signal: stop accepting requests, let running jobs finish, remove the
    socket file.  Shared by ``stowkit plugin serve`` and ``stowkit-buttervolume run``.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        schedule.register_opts(conf)
        store = schedule.open_store(conf)
        server = PluginServer(socket_path, PluginApp(driver, store))
        # Collect what a crash left (hidden temporaries no live process holds)
        # before serving; a failure here must not keep Docker's volumes offline.
        try:
            for item, outcome in driver.cleanup():
                out.write(f"cleanup: {item}: {outcome}\n")
        except StowkitError as exc:
            out.write(f"cleanup skipped: {exc}\n")
        # With [scheduler] store = catalog, `stowkit agent` runs the jobs, not this process.
        run_jobs = with_scheduler and store.runs_here
        jobs = Scheduler.from_conf(conf, driver) if run_jobs else None
        try:
            server.start()
            if jobs is not None:
                jobs.start()
            out.write(ready_line.format(socket=socket_path) + "\n")
            out.flush()
            notify.ready()  # systemd (Type=notify): the socket accepts requests now
            while not stop.wait(1.0):
                pass
            notify.stopping()
        finally:
            server.stop()
            if jobs is not None:
                jobs.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


class Serve(Command):
    """Serve the Docker volume plugin on a unix socket and run scheduled jobs.

    Stops cleanly on SIGTERM or SIGINT: no new requests, running jobs finish,
    the socket file is removed.
    """

    service = True  # logs through oslo.log

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--socket",
            metavar="PATH",
            help="Socket to listen on (default [docker_plugin] socket, "
            "/run/docker/plugins/stowkit.sock; Docker names the driver after the file).",
        )
        parser.add_argument("--no-scheduler", action="store_true", help="Serve the plugin only.")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        conf = self.app.conf
        dockerplugin.register_opts(conf)
        path = parsed_args.socket or conf[dockerplugin.GROUP].socket
        return serve(
            conf, self.driver("volume"), path, self.app.stdout, not parsed_args.no_scheduler
        )


COMMANDS = {"plugin serve": Serve}
