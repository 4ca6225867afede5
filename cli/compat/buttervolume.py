"""``stowkit-buttervolume``: buttervolume's command line on the stowkit library.

Same verbs and arguments as buttervolume 3.13, so existing scripts and cron
lines carry over: ``run``, ``snapshot``, ``snapshots``, ``schedule``,
``scheduled``, ``restore``, ``clone``, ``send``, ``sync``, ``rm``, ``purge``.
Each verb prints what buttervolume 3.13's CLI prints for the same state,
line for line (doc/compat/stowkit-buttervolume.md lists the few places where
buttervolume is broken and stowkit is not); what buttervolume's verbs mean
(``schedule`` timers, the globally paused schedule, ``scheduled`` lines) is
owned by :mod:`stowkit.corelib.dockerplugin.buttervolume`, which also serves
them on the plugin socket for buttervolume's own CLI.  The verbs call the
library directly (no round trip through the socket); ``schedule``/``scheduled``
edit the schedule file that ``run`` (or ``stowkit plugin serve``) reads on
every tick.

Differences a user may notice: errors are one line on stderr with a distinct
exit code (see ``stowkit.corelib.errors``; 1, as buttervolume, for a globally
paused schedule), names are checked before anything is touched,
``--config-file`` selects a stowkit configuration, and the socket ``run``
listens on is ``--socket``, else buttervolume's ``SOCKET`` setting, by
default ``/run/docker/plugins/btrfs.sock`` (so Docker keeps finding the
driver under the name ``btrfs``).

buttervolume's own configuration is read as buttervolume reads it
(:class:`ButtervolumeConfig`: ``BUTTERVOLUME_*`` variables, then config.ini,
then its defaults, ``SSH_PORT`` included) and gives the driver its paths,
snapshot-name format and ssh port as defaults; ``run`` takes over its
schedule.csv (see doc/docker-plugin.md).
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, TextIO

from stowkit.cli.app import split_config_files
from stowkit.cli.common import one_line_errors, report
from stowkit.corelib import config, registry, schedule, volumejobs
from stowkit.corelib.dockerplugin import buttervolume as bvroutes
from stowkit.corelib.errors import ConfigError, InvalidArgument, StowkitError
from stowkit.corelib.schedule.jobs import JobStore
from stowkit.corelib.volumejobs import VolumeAction, VolumeJob

PROG = "stowkit-buttervolume"
DEFAULT_SOCKET = "/run/docker/plugins/btrfs.sock"

#: buttervolume's config.ini, read as configparser reads a list: a later file
#: wins.  buttervolume reads /etc/buttervolume/config.ini (inside its managed
#: plugin that is the host's /var/lib/buttervolume/config, bound there).
CONFIG_FILES = ("/var/lib/buttervolume/config/config.ini", "/etc/buttervolume/config.ini")
#: buttervolume 3.13's defaults
DEFAULTS = {
    "VOLUMES_PATH": "/var/lib/buttervolume/volumes/",
    "SNAPSHOTS_PATH": "/var/lib/buttervolume/snapshots/",
    "TEST_REMOTE_PATH": "/var/lib/buttervolume/received/",
    "SCHEDULE": "/etc/buttervolume/schedule.csv",
    "DRIVERNAME": "ccomb/buttervolume:latest",
    "RUNPATH": "/run/docker",
    "TIMER": "60",
    "DTFORMAT": "%Y-%m-%dT%H:%M:%S.%f",
    "LOGLEVEL": "INFO",
}
BUTTERVOLUME_DTFORMAT = DEFAULTS["DTFORMAT"]
DEFAULT_SSH_PORT = "1122"


@dataclasses.dataclass(frozen=True)
class ButtervolumeConfig:
    """buttervolume's settings, found as buttervolume finds them.

    Each ``BUTTERVOLUME_VAR`` from the environment (an empty one does not
    count), else ``VAR`` in ``[DEFAULT]`` of config.ini, else buttervolume's
    default; the ssh port is ``$SSH_PORT``, else 1122, as buttervolume's sends
    and syncs use.  ``given`` names the variables set by the environment or
    a file rather than defaulted.
    """

    values: Mapping[str, str]
    given: frozenset[str]
    ssh_port: int

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, files: Sequence[str] = CONFIG_FILES
    ) -> ButtervolumeConfig:
        environ = os.environ if environ is None else environ
        # configparser as buttervolume uses it (its interpolation included: a
        # '%' in config.ini is written '%%' for buttervolume, so for us too).
        parser = configparser.ConfigParser()
        try:
            parser.read(list(files))
        except configparser.Error as exc:
            raise ConfigError(f"cannot parse buttervolume's config.ini: {exc}") from None
        values: dict[str, str] = {}
        given = set()
        names = [*DEFAULTS, "SOCKET"]
        for var in names:
            value = environ.get("BUTTERVOLUME_" + var)
            if not value:
                try:
                    value = parser["DEFAULT"].get(var)
                except configparser.Error as exc:
                    raise ConfigError(f"buttervolume's config.ini, {var}: {exc}") from None
            if value:
                given.add(var)
            else:
                value = DEFAULTS.get(var)
            if value is not None:
                values[var] = value
        if "SOCKET" not in values:
            values["SOCKET"] = os.path.join(values["RUNPATH"], "plugins", "btrfs.sock")
        port_text = environ.get("SSH_PORT", DEFAULT_SSH_PORT)
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"SSH_PORT must be a port number, not {port_text!r}") from None
        for var in ("TIMER",):
            try:
                int(values[var])
            except ValueError:
                raise ConfigError(f"buttervolume's {var} must be a whole number") from None
        return cls(values, frozenset(given), port)

    @property
    def schedule_csv(self) -> str:
        return self.values["SCHEDULE"]

    def btrfs_defaults(self, root_is_set: bool) -> dict[str, Any]:
        """Defaults of ``[volume_btrfs]`` for the tree buttervolume left.

        When the stowkit configuration sets ``root`` its layout stays, and only
        the paths buttervolume was told about apply.
        """
        paths = {
            "volumes_path": "VOLUMES_PATH",
            "snapshots_path": "SNAPSHOTS_PATH",
            "received_path": "TEST_REMOTE_PATH",
        }
        out: dict[str, Any] = {}
        for option, var in paths.items():
            if var in self.given or not root_is_set:
                out[option] = os.path.abspath(self.values[var])
        if not root_is_set:
            # Bookkeeping (.mounts, .sent, .locks, .detached) beside volumes/,
            # on its filesystem: a forced restore moves a tree into .detached/.
            out["root"] = os.path.dirname(os.path.abspath(self.values["VOLUMES_PATH"]))
        formats = [self.values["DTFORMAT"]]
        if BUTTERVOLUME_DTFORMAT not in formats:
            formats.append(BUTTERVOLUME_DTFORMAT)
        out["foreign_time_formats"] = formats
        out["ssh_port"] = self.ssh_port
        return out


class Context:
    """What a verb needs: configuration, the volume driver, the schedule, output."""

    def __init__(
        self,
        config_files: Sequence[str],
        out: TextIO,
        buttervolume: ButtervolumeConfig | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.conf = config.load_conf(config_files)
        self.out = out
        self.err = err or sys.stderr
        self.bv = buttervolume or ButtervolumeConfig.load()
        self._driver: Any = None
        self._schedule: JobStore | None = None
        schedule.register_opts(self.conf)
        # buttervolume's TIMER: how often its scheduler looks at the schedule.
        self.conf.set_default("tick", float(self.bv.values["TIMER"]), schedule.GROUP)

    @property
    def driver(self) -> Any:
        if self._driver is None:
            backend = self.conf["volume"].backend
            if backend == "btrfs":
                # buttervolume's settings are defaults: a stowkit config file wins.
                group = registry.group_name("volume", backend)
                self.conf.register_opts(registry.driver_class("volume", backend).options, group)
                stowkit_default = os.path.join(self.conf.state_dir, "btrfs")
                root_is_set = os.path.abspath(self.conf[group].root) != os.path.abspath(
                    stowkit_default
                )
                for key, value in self.bv.btrfs_defaults(root_is_set).items():
                    self.conf.set_default(key, value, group)
            self._driver = registry.load("volume", self.conf)
        return self._driver

    @property
    def schedule(self) -> JobStore:
        """The store ``[scheduler] store`` names: the one the plugin's scheduler runs."""
        if self._schedule is None:
            self._schedule = schedule.open_store(self.conf)
        return self._schedule

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(f"{line}\n")

    def log(self, line: str) -> None:
        """A line buttervolume writes to its log, not to the output: stderr, at INFO."""
        if getattr(logging, self.bv.values["LOGLEVEL"].upper(), logging.INFO) <= logging.INFO:
            self.err.write(f"{line}\n")

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()


# -- verbs -------------------------------------------------------------------------------


def take_over_schedule(ctx: Context) -> str | None:
    """Import buttervolume's schedule.csv (or its globally paused ``.disabled``).

    Done at ``run``, ``schedule`` and ``scheduled`` when the file is newer
    than stowkit's schedule (or that does not exist yet; with ``[scheduler]
    store = catalog``, while this host has no catalog jobs), so buttervolume's
    jobs run on and show at once, and later changes made with
    ``schedule``/``scheduled`` (which edit stowkit's file) are not undone by
    a restart.  Returns what was done, or None.
    """
    csv_path = ctx.bv.schedule_csv
    disabled = f"{csv_path}.disabled"
    source = csv_path if os.path.exists(csv_path) else disabled
    if not os.path.exists(source):
        return None
    store = ctx.schedule
    if store.changed_since(os.stat(source).st_mtime):
        return None
    with open(source, encoding="utf-8") as f:
        jobs = store.import_csv(f.read())
    paused = source == disabled
    store.set_active(not paused)
    return f"imported {len(jobs)} job(s) from {source}" + (" (globally paused)" if paused else "")


def do_run(ctx: Context, args: argparse.Namespace) -> int:
    from stowkit.cli.plugin import serve  # late: only ``run`` needs the server
    from stowkit.corelib import servicelog

    # A service logs through oslo.log ([DEFAULT] log_file, syslog, ... of stowkit.conf);
    # buttervolume's LOGLEVEL sets the level, DEBUG as oslo.log's debug.
    level = getattr(logging, ctx.bv.values["LOGLEVEL"].upper(), logging.INFO)
    servicelog.setup(ctx.conf, debug=level <= logging.DEBUG)
    logging.getLogger().setLevel(level)
    done = take_over_schedule(ctx)
    if done:
        ctx.print(done)
    path = args.socket or ctx.bv.values["SOCKET"]
    # buttervolume's two lines, the second once the socket answers.
    ctx.print(f"Starting scheduler job every {ctx.bv.values['TIMER']}s")
    return serve(
        ctx.conf, ctx.driver, path, ctx.out, ready_line="Listening to requests on {socket}..."
    )


def do_snapshot(ctx: Context, args: argparse.Namespace) -> int:
    job = VolumeJob(args.name[0], VolumeAction.SNAPSHOT)
    ctx.print(volumejobs.run(ctx.driver, job).message)
    return 0


def do_snapshots(ctx: Context, args: argparse.Namespace) -> int:
    # The snapshot directory as buttervolume lists it: in the order its
    # entries were made, sent markers VOLUME@STAMP@HOST included.
    ctx.print(*ctx.driver.snapshot_entries(args.name))
    return 0


def do_schedule(ctx: Context, args: argparse.Namespace) -> int:
    take_over_schedule(ctx)  # buttervolume's jobs first, as they were when it stopped
    bvroutes.change_schedule(ctx.schedule, args.name[0], args.action[0], args.timer[0])
    return 0


def do_scheduled(ctx: Context, args: argparse.Namespace) -> int:
    take_over_schedule(ctx)  # so buttervolume's jobs show before the first ``run``
    store = ctx.schedule
    if args.action == "pause":
        store.set_active(False)
    elif args.action == "resume":
        store.set_active(True)
    else:
        ctx.print(*(bvroutes.scheduled_line(row) for row in bvroutes.schedule_rows(store)))
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
    result = ctx.driver.send_snapshot(args.snapshot[0], args.host[0])
    # buttervolume's CLI prints nothing; what was sent goes to stderr, as its log would.
    how = volumejobs.send_mode(result)
    if result.parent:
        how += f" from {result.parent}"
    ctx.log(f"Sent {result.snapshot} to {result.host} ({how})")
    return 0


def do_sync(ctx: Context, args: argparse.Namespace) -> int:
    if not args.hosts:
        raise InvalidArgument("sync needs at least one host to pull from")
    # A peer's failure is one line, like every other error; what the others gave stays.
    job = VolumeJob(args.volumes[0], VolumeAction.SYNCHRONIZE, hosts=tuple(args.hosts))
    volumejobs.run(ctx.driver, job)
    return 0


def do_rm(ctx: Context, args: argparse.Namespace) -> int:
    ctx.driver.delete_snapshot(args.name[0])
    return 0


def do_purge(ctx: Context, args: argparse.Namespace) -> int:
    job = VolumeJob(args.name[0], VolumeAction.PURGE, pattern=args.pattern[0])
    result = volumejobs.run(ctx.driver, job, dry_run=args.dryrun).purged
    # buttervolume's CLI prints nothing: its plugin logs each snapshot.  These
    # are its log lines, on stderr, so a --dryrun still tells what it would do.
    verb = "(Dry run) Would delete" if args.dryrun else "Deleted"
    for name in result.deleted if result else ():
        ctx.log(f"{verb} snapshot {name}")
    for name, why in sorted(result.protected.items() if result else ()):
        ctx.log(f"Kept snapshot {name} ({why})")
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


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    files, rest = split_config_files(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(rest)
    if args.verb is None:
        parser.print_help()
        return 0
    ctx = None
    try:
        ctx = Context(files + (args.config_file or []), out or sys.stdout, err=err)
        return args.func(ctx, args)
    except StowkitError as exc:
        return report(exc, PROG, err)
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
