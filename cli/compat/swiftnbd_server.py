"""``stowkit-swiftnbd-server``: swiftnbd-server's flags and secrets file, on stowkit's server.

    stowkit-swiftnbd-server [--secrets FILE] [-a AUTH_URL] [-k ...] [-b ADDR] [-p PORT]
                            [-c MB] [-l LOG_FILE] [--syslog] [-f] [--pid-file F] [-v]

Every container of the secrets file is served (its ``read-only`` key is
honoured), each with its own credentials.  Differences from swiftnbd 0.11,
all for safety: the device lock is an atomic lock object with a lease, taken
when the first client connects and released on the last disconnect (not at
start), and the cache is write-back with FLUSH/FUA honoured (see doc/nbd.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from oslo_config import cfg

from stowkit.cli.common import one_line_errors, report
from stowkit.cli.compat.swiftnbd_ctl import (
    Ctl,
    Secrets,
    add_common_arguments,
)
from stowkit.corelib import config
from stowkit.corelib.errors import StowkitError
from stowkit.corelib.nbd.export import ExportSettings

PROG = "swiftnbd-server"
LOG = logging.getLogger("swiftnbd")
DEFAULT_PIDFILE = os.path.join(tempfile.gettempdir(), "swiftnbd.pid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Network Block Device server over OpenStack Object Storage (stowkit).",
        epilog="stowkit's own command is `stowkit blockstore serve`.",
    )
    add_common_arguments(parser)
    parser.add_argument("-b", "--bind-address", dest="bind_address", default="127.0.0.1",
                        help="bind address (default: 127.0.0.1)")  # fmt: skip
    parser.add_argument("-p", "--bind-port", dest="bind_port", type=int, default=10809,
                        help="bind port (default: 10809)")  # fmt: skip
    parser.add_argument("-c", "--cache-limit", dest="cache_limit", type=int, default=64,
                        help="cache memory limit in MB, per container (default: 64)")  # fmt: skip
    parser.add_argument("-l", "--log-file", dest="log_file", default=None,
                        help="log into the provided file")  # fmt: skip
    parser.add_argument("--syslog", action="store_true", help="log to system logger (local0)")
    parser.add_argument("-f", "--foreground", action="store_true",
                        help="don't detach from terminal (foreground mode)")  # fmt: skip
    parser.add_argument("--pid-file", dest="pidfile", default=DEFAULT_PIDFILE,
                        help=f"filename to store the PID (default: {DEFAULT_PIDFILE})")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="enable verbose logging")
    one_line_errors(parser, PROG)
    return parser


def _setup_logging(args: argparse.Namespace, conf: Any) -> None:
    """swiftnbd's logging flags, as oslo.log's options (and stowkit.conf's [DEFAULT] ones)."""
    from stowkit.corelib import servicelog

    if args.syslog:  # swiftnbd logged to the local0 facility
        conf.set_override("use_syslog", True)
        conf.set_override("syslog_log_facility", "LOG_LOCAL0")
    servicelog.setup(conf, debug=args.verbose, log_file=args.log_file)
    logging.getLogger("swiftclient").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cache_limit < 1:
        parser.error("Cache limit can't be less than 1MB")
    conf = config.load_conf([])
    try:
        _setup_logging(args, conf)
    except StowkitError as err:
        return report(err, PROG)
    try:
        secrets = Secrets(args.secrets_file)
    except OSError as exc:
        parser.error(f"Failed to load secrets: {exc}")
    if os.path.isfile(args.pidfile):
        LOG.error("%s found: is the server already running?", args.pidfile)
        return 1
    ctl = Ctl(args, secrets)
    entries = []
    for container in secrets.containers():
        try:
            store = ctl.store(container)
            store.get_device(container)
        except StowkitError as err:
            LOG.warning("%s: %s, skipping", container, err)
            continue
        read_only = secrets.get(container)["read-only"].lower() in ("1", "yes", "true", "on")
        entries.append((store, container, read_only))
    if not entries:
        LOG.error("no container to serve")
        return 1
    if not args.foreground:
        if os.fork() != 0:
            os._exit(0)
        os.setsid()
        fd = os.open(os.devnull, os.O_RDWR)
        for stream in (sys.stdin, sys.stdout, sys.stderr):
            os.dup2(fd, stream.fileno())
    try:
        fd = os.open(args.pidfile, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except OSError as exc:
        LOG.error("Failed to create the pidfile: %s", exc)
        return 1
    with os.fdopen(fd, "w") as pid_handle:
        pid_handle.write(f"{os.getpid()}\n")
    from stowkit.corelib.nbd.server import serve_many

    def ready(server) -> None:
        LOG.info("Starting to serve on %s:%s", server.bind, server.port)

    # Write-back retry budget, shutdown bound, in-flight bytes: [blockstore] of stowkit.conf.
    settings = ExportSettings(cache_size=args.cache_limit << 20).apply_conf(conf)
    if conf.get_location("lock_scope", "blockstore").location is cfg.Locations.opt_default:
        # swiftnbd locks a container while a client uses it: its users' habit
        # (swiftnbd-ctl on an idle container) unless stowkit.conf says otherwise.
        settings.lock_scope = "connection"
    try:
        serve_many(entries, args.bind_address, args.bind_port, settings, ready)
    except OSError as exc:
        LOG.error("cannot serve: %s", exc)
        return 1
    except StowkitError as err:  # a container locked elsewhere (lock_scope = server)
        LOG.error("cannot serve: %s", err)
        return err.exit_code
    finally:
        os.remove(args.pidfile)
    LOG.info("Exiting...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
