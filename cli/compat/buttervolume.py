"""``stowkit-buttervolume``: buttervolume's command line on the stowkit library.

Same verbs and arguments as buttervolume 3.13, so existing scripts and cron
lines carry over: ``run``, ``snapshot``, ``snapshots``, ``schedule``,
``scheduled``, ``restore``, ``clone``, ``send``, ``sync``, ``rm``, ``purge``.
The verbs call the library directly (no round trip through the plugin
socket); ``schedule``/``scheduled`` edit the schedule file that ``run`` (or
``stowkit plugin serve``) reads on every tick.

Differences a user may notice: errors are one line on stderr with a distinct
exit code (see ``stowkit.corelib.errors``), names are checked before anything is
touched, ``--config-file`` selects a stowkit configuration, and the socket
``run`` listens on is ``--socket``, else ``$BUTTERVOLUME_SOCKET``, else
buttervolume's own ``/run/docker/plugins/btrfs.sock`` (so Docker keeps
finding the driver under the name ``btrfs``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any, TextIO

from stowkit.cli.app import split_config_files
from stowkit.cli.common import one_line_errors, report
from stowkit.corelib import config, registry, scheduler
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument, StowkitError

PROG = "stowkit-buttervolume"
DEFAULT_SOCKET = "/run/docker/plugins/btrfs.sock"


class Context:
    """What a verb needs: configuration, the volume driver, the schedule, output."""

    def __init__(self, config_files: Sequence[str], out: TextIO) -> None:
        self.conf = config.load_conf(config_files)
        self.out = out
        self._driver: Any = None

    @property
    def driver(self) -> Any:
        if self._driver is None:
            self._driver = registry.load("volume", self.conf)
        return self._driver

    @property
    def schedule(self) -> scheduler.ScheduleStore:
        scheduler.register_opts(self.conf)
        return scheduler.ScheduleStore(self.conf[scheduler.GROUP].schedule_file)

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(f"{line}\n")

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()


# -- verbs -------------------------------------------------------------------------------


def do_run(ctx: Context, args: argparse.Namespace) -> int:
    from stowkit.cli.plugin import serve  # late: only ``run`` needs the server

    path = args.socket or os.environ.get("BUTTERVOLUME_SOCKET") or DEFAULT_SOCKET
    return serve(ctx.conf, ctx.driver, path, ctx.out)


def do_snapshot(ctx: Context, args: argparse.Namespace) -> int:
    ctx.print(ctx.driver.create_snapshot(args.name[0]).name)
    return 0


def do_snapshots(ctx: Context, args: argparse.Namespace) -> int:
    ctx.print(*(s.name for s in ctx.driver.list_snapshots(args.name)))
    return 0


def _minutes_text(minutes: float) -> str:
    return str(int(minutes)) if minutes == int(minutes) else str(minutes)


def do_schedule(ctx: Context, args: argparse.Namespace) -> int:
    action, timer, name = args.action[0], args.timer[0], args.name[0]
    store = ctx.schedule
    if timer in ("0", "delete"):
        store.remove(name, action)
    elif timer == "pause":
        store.set_active(False, name, action)
    elif timer == "resume":
        store.set_active(True, name, action)
    else:
        store.add(name, action, timer)
    return 0


def do_scheduled(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.schedule
    if args.action == "pause":
        store.set_active(False)
    elif args.action == "resume":
        store.set_active(True)
    else:
        schedule = store.load()
        for job in schedule.jobs:
            paused = " (paused)" if not job.active or schedule.paused else ""
            ctx.print(f"{job.action} {_minutes_text(job.minutes)} {job.volume}{paused}")
    return 0


def do_restore(ctx: Context, args: argparse.Namespace) -> int:
    result = ctx.driver.restore(args.name[0], args.target, force=args.force)
    if result.backup:
        ctx.print(result.backup)
    return 0


def do_clone(ctx: Context, args: argparse.Namespace) -> int:
    if not args.target:
        raise InvalidArgument("clone needs the name of the new volume (TARGET)")
    ctx.print(ctx.driver.clone_volume(args.name[0], args.target).name)
    return 0


def do_send(ctx: Context, args: argparse.Namespace) -> int:
    ctx.driver.send_snapshot(args.snapshot[0], args.host[0])
    return 0


def do_sync(ctx: Context, args: argparse.Namespace) -> int:
    if not args.hosts:
        raise InvalidArgument("sync needs at least one host to pull from")
    result = ctx.driver.sync_volume(args.volumes[0], args.hosts)
    if not result.ok:
        # one line, like every other error; what the other peers gave stays
        raise BackendUnavailable(scheduler.sync_failures(result))
    return 0


def do_rm(ctx: Context, args: argparse.Namespace) -> int:
    ctx.driver.delete_snapshot(args.name[0])
    return 0


def do_purge(ctx: Context, args: argparse.Namespace) -> int:
    result = ctx.driver.purge(args.name[0], args.pattern[0], dry_run=args.dryrun)
    verb = "Would delete" if args.dryrun else "Deleted"
    ctx.print(*(f"{verb} snapshot {name}" for name in result.deleted))
    for name, why in sorted(result.protected.items()):
        ctx.print(f"Kept snapshot {name} ({why})")
    return 0


# -- parser ------------------------------------------------------------------------------


def _version() -> str:
    try:
        return metadata.version("stowkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="buttervolume's command line, served by stowkit's BTRFS volume library",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--config-file",
        metavar="PATH",
        action="append",
        help=f"stowkit configuration file (repeatable; default {config.DEFAULT_CONFIG_FILE}).",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        one_line_errors(p, PROG)
        p.set_defaults(func=func)
        return p

    p = verb("run", do_run, "Run the plugin and the scheduler in the foreground")
    p.add_argument("--socket", metavar="PATH", help=f"Socket to serve (default {DEFAULT_SOCKET}).")

    p = verb("snapshot", do_snapshot, "Snapshot a volume")
    p.add_argument("name", nargs=1, help="Name of the volume to snapshot")

    p = verb("snapshots", do_snapshots, "List snapshots")
    p.add_argument("name", nargs="?", help="Name of the volume whose snapshots are to list")

    p = verb(
        "schedule",
        do_schedule,
        "Schedule, unschedule, pause or resume a periodic snapshot, replication, "
        "synchronization or purge",
    )
    p.add_argument(
        "action",
        nargs=1,
        help="snapshot, replicate:<host>, purge:<pattern> or synchronize:<host[,host2]>",
    )
    p.add_argument(
        "timer",
        nargs=1,
        help="Minutes between two runs, or 0/delete to remove, pause, resume",
    )
    p.add_argument("name", nargs=1, help="Name of the volume")

    p = verb("scheduled", do_scheduled, "List, pause or resume all the scheduled actions")
    p.add_argument("action", nargs="?", choices=("list", "pause", "resume"), default="list")

    p = verb("restore", do_restore, "Restore a snapshot")
    p.add_argument("name", nargs=1, help="Snapshot to restore (a volume name: its latest snapshot)")
    p.add_argument("target", nargs="?", default=None, help="Name of the restored volume")
    p.add_argument(
        "--force", action="store_true", help="Restore even while a container has it mounted"
    )

    p = verb("clone", do_clone, "Clone a volume")
    p.add_argument("name", nargs=1, help="Name of the volume to be cloned")
    p.add_argument("target", nargs="?", default=None, help="Name of the new volume")

    p = verb("send", do_send, "Send a snapshot to another host")
    p.add_argument("host", nargs=1, help="Host to send the snapshot to")
    p.add_argument("snapshot", nargs=1, help="Snapshot to send")

    p = verb("sync", do_sync, "Sync a volume from other host(s)")
    p.add_argument("volumes", nargs=1, help="Volume to sync")
    p.add_argument("hosts", nargs="*", help="Hosts to pull from")

    p = verb("rm", do_rm, "Delete a snapshot")
    p.add_argument("name", nargs=1, help="Name of the snapshot to delete")

    p = verb("purge", do_purge, "Purge old snapshots using a purge pattern")
    p.add_argument(
        "pattern",
        nargs=1,
        help="Retention pattern such as 4h:1d:2w:2y (units m h d w y): keep everything "
        "younger than the first part, then one per first part until the second, and so on; "
        "delete what is older than the last",
    )
    p.add_argument("name", nargs=1, help="Name of the volume whose snapshots are to purge")
    p.add_argument("--dryrun", action="store_true", help="Only tell what would be deleted")

    one_line_errors(parser, PROG)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    files, rest = split_config_files(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(rest)
    if args.verb is None:
        parser.print_help()
        return 0
    ctx = None
    try:
        ctx = Context(files + (args.config_file or []), out or sys.stdout)
        return args.func(ctx, args)
    except StowkitError as err:
        return report(err, PROG)
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
