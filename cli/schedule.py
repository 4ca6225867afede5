"""``stowkit schedule add|remove|list|pause|resume|import``: periodic jobs per volume.

The commands edit the schedule file the running ``stowkit plugin serve``
reads on every tick, so changes apply without a restart; with
``[scheduler] store = catalog`` they edit this host's jobs in the backup
catalog, which ``stowkit agent`` runs (``freezer job-list`` shows them).
"""

from __future__ import annotations

import argparse
from typing import Any

from stowkit.cli.common import Command, Lister, ShowOne
from stowkit.corelib import schedule, volumejobs
from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.schedule.jobs import JobStore, job_rows

COLUMNS = (
    "volume",
    "action",
    "minutes",
    "state",
    "last_run",
    "last_result",
    "last_message",
    "next_run",
    "runs",
    "failures",
)

ACTION_HELP = volumejobs.USAGE


def store(app: Any) -> JobStore:
    """The store ``[scheduler] store`` names: the schedule file, or this host's catalog jobs."""
    return schedule.open_store(app.conf)


class AddJob(ShowOne):
    """Schedule an action on a volume every MINUTES (replaces the interval if already there)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume", help="Volume name.")
        parser.add_argument("action", help=ACTION_HELP + ".")
        parser.add_argument("minutes", help="Interval in minutes (fractions allowed).")
        parser.add_argument("--paused", action="store_true", help="Add the job paused.")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        s = store(self.app)
        job = s.add(
            parsed_args.volume, parsed_args.action, parsed_args.minutes, not parsed_args.paused
        )
        row = job_rows([job], s.load().paused)[0]
        return COLUMNS, tuple(row[c] for c in COLUMNS)


class RemoveJob(Command):
    """Unschedule one job."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume", help="Volume name.")
        parser.add_argument("action", help=ACTION_HELP + ".")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        store(self.app).remove(parsed_args.volume, parsed_args.action)


class ListJobs(Lister):
    """Scheduled jobs with their last run, last result and next run (UTC)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--volume", help="Only this volume's jobs.")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        current = store(self.app).load()
        jobs = [j for j in current.jobs if parsed_args.volume in (None, j.volume)]
        rows = job_rows(jobs, current.paused)
        return COLUMNS, [tuple(r[c] for c in COLUMNS) for r in rows]


class _Switch(Command):
    active: bool

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("volume", nargs="?", help="Volume name (all its jobs without ACTION).")
        parser.add_argument("action", nargs="?", help=ACTION_HELP + ".")
        parser.add_argument(
            "--all", action="store_true", help="The whole schedule (the global switch)."
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        if parsed_args.all == bool(parsed_args.volume):
            raise InvalidArgument("name a VOLUME [ACTION], or give --all")
        s = store(self.app)
        if parsed_args.all:
            s.set_active(self.active)
        else:
            s.set_active(self.active, parsed_args.volume, parsed_args.action)


class PauseJobs(_Switch):
    """Pause one job, a volume's jobs, or everything (--all)."""

    active = False


class ResumeJobs(_Switch):
    """Resume one job, a volume's jobs, or everything (--all)."""

    active = True


class ImportJobs(Lister):
    """Import a buttervolume schedule.csv (volume,action,minutes[,active] lines)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("file", help="buttervolume schedule file (- for stdin).")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        text = _read(parsed_args.file, self.app.stdin)
        s = store(self.app)
        jobs = s.import_csv(text)
        rows = job_rows(jobs, s.load().paused)
        return COLUMNS, [tuple(r[c] for c in COLUMNS) for r in rows]


def _read(path: str, stdin: Any) -> str:
    if path == "-":
        return stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        from stowkit.corelib.errors import NotFound

        raise NotFound(f"schedule file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from None


COMMANDS = {
    "schedule add": AddJob,
    "schedule remove": RemoveJob,
    "schedule list": ListJobs,
    "schedule pause": PauseJobs,
    "schedule resume": ResumeJobs,
    "schedule import": ImportJobs,
}
