"""A scheduled job, the schedule, the interface of the stores that keep them, listing rows.

* A job is due when ``now >= last_run + interval`` (a new job is due at once),
  so a 60-minute job runs once an hour whatever the tick is.
* A run's result is :data:`OK` or :data:`FAILED`, with its message; a job its
  volume's lock kept from running is not run (no result).
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from stowkit.corelib.errors import InvalidArgument, NotFound
from stowkit.corelib.volumejobs import VolumeJob

#: A run's results, as the schedule records them (``last_result``).
OK = "ok"
FAILED = "failed"


def parse_minutes(value: object) -> float:
    try:
        minutes = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid interval {value!r}: a number of minutes") from None
    if not minutes > 0 or minutes != minutes or minutes == float("inf"):
        raise InvalidArgument(f"invalid interval {value!r}: must be more than 0 minutes")
    return minutes


@dataclasses.dataclass
class Job:
    volume: str
    action: str
    minutes: float
    active: bool = True
    added: float = 0.0
    last_run: float | None = None
    last_result: str | None = None
    last_message: str = ""
    last_duration: float | None = None
    runs: int = 0
    failures: int = 0

    @property
    def key(self) -> str:
        return f"{self.volume} {self.action}"

    @property
    def interval(self) -> float:
        """Seconds between two runs."""
        return self.minutes * 60.0

    @property
    def next_run(self) -> float:
        """When the job is due: at once when new, else last run + interval."""
        return self.added if self.last_run is None else self.last_run + self.interval

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclasses.dataclass
class Schedule:
    jobs: list[Job] = dataclasses.field(default_factory=list)
    paused: bool = False

    def find(self, volume: str, action: str) -> Job:
        for job in self.jobs:
            if job.volume == volume and job.action == action:
                return job
        raise NotFound(f"no scheduled job {action!r} for volume {volume!r}")


class JobStore(abc.ABC):
    """Where the scheduled jobs live: what ``stowkit schedule`` and the plugin edit."""

    #: Whether the embedded :class:`~stowkit.corelib.schedule.runner.Scheduler`
    #: runs these jobs (else another process does: ``stowkit agent`` for the catalog).
    runs_here: bool = True

    @abc.abstractmethod
    def load(self) -> Schedule:
        """Every job, and the global switch."""

    def add(
        self,
        volume: str,
        action: str,
        minutes: object,
        active: bool = True,
        now: float | None = None,
    ) -> Job:
        """Schedule ``action`` on ``volume``; an existing job gets the new interval.

        Everything is checked before the store is touched: a job its run
        would refuse never gets into a schedule.
        """
        job = VolumeJob.parse(volume, action)
        return self._add(job, parse_minutes(minutes), active, time.time() if now is None else now)

    @abc.abstractmethod
    def _add(self, job: VolumeJob, minutes: float, active: bool, now: float) -> Job:
        """Store ``job`` (checked), every ``minutes``; ``now``: when it is added."""

    @abc.abstractmethod
    def remove(self, volume: str, action: str) -> None:
        """Unschedule one job; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        """Pause or resume one job, a volume's jobs, or all; how many it touched."""

    @abc.abstractmethod
    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        """Merge a buttervolume schedule; one bad line refuses the whole file."""

    def changed_since(self, mtime: float) -> bool:
        """Whether the jobs here were set after ``mtime`` (a file's modification time).

        Decides whether buttervolume's schedule.csv is taken over again.  A store
        that keeps no time (the catalog) counts as changed once it holds a job:
        a schedule in use is never replaced by an older tool's file.
        """
        return bool(self.load().jobs)

    def export_csv(self) -> str:
        from stowkit.corelib.schedule import csvfile  # late: csvfile imports this module

        return csvfile.export_csv(self.load().jobs)


def job_rows(jobs: Sequence[Job], paused: bool = False) -> list[dict[str, Any]]:
    """Jobs as plain dicts for listings (times as ISO 8601 UTC)."""

    def iso(stamp: float | None) -> str | None:
        if stamp is None:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))

    rows = []
    for job in jobs:
        state = "paused" if not job.active else "paused (all)" if paused else "active"
        rows.append(
            {
                "volume": job.volume,
                "action": job.action,
                "minutes": job.minutes,
                "state": state,
                "last_run": iso(job.last_run),
                "last_result": job.last_result,
                "last_message": job.last_message,
                "next_run": iso(job.next_run) if state == "active" else None,
                "runs": job.runs,
                "failures": job.failures,
            }
        )
    return rows
