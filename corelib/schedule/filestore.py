"""The schedule file: one JSON file, shared by the running plugin and ``stowkit schedule``.

Every change is a read-modify-write under an exclusive lock on ``FILE.lock``
followed by an atomic rename, so a crash never leaves a half-written schedule.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from stowkit.corelib.errors import NotFound, StowkitError
from stowkit.corelib.names import check_name
from stowkit.corelib.schedule.csvfile import parse_buttervolume_csv
from stowkit.corelib.schedule.jobs import Job, JobStore, Schedule
from stowkit.corelib.volumejobs import VolumeJob


class ScheduleStore(JobStore):
    """The schedule file: read, and change under a lock with an atomic rename."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with self._thread_lock, open(self.path + ".lock", "a") as lockfile:
            fcntl.flock(lockfile, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lockfile, fcntl.LOCK_UN)

    def changed_since(self, mtime: float) -> bool:
        try:
            return os.stat(self.path).st_mtime >= mtime
        except FileNotFoundError:
            return False

    def _read(self) -> Schedule:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return Schedule()
        except (OSError, ValueError) as exc:
            raise StowkitError(f"cannot read schedule file {self.path}: {exc}") from None
        return Schedule(
            jobs=[Job.from_dict(j) for j in data.get("jobs", [])],
            paused=bool(data.get("paused", False)),
        )

    def _write(self, schedule: Schedule) -> None:
        data = {
            "version": 1,
            "paused": schedule.paused,
            "jobs": [j.to_dict() for j in schedule.jobs],
        }
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".schedule-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self) -> Schedule:
        with self._locked():
            return self._read()

    def update(self, change: Callable[[Schedule], Any]) -> Any:
        """Apply ``change`` to the schedule and save it; nothing is saved if it raises."""
        with self._locked():
            schedule = self._read()
            result = change(schedule)
            self._write(schedule)
            return result

    # -- the operations the CLI and the compat front end offer -------------------

    def _add(self, job: VolumeJob, minutes: float, active: bool, now: float) -> Job:
        volume, action = job.volume, job.text

        def change(schedule: Schedule) -> Job:
            try:
                found = schedule.find(volume, action)
            except NotFound:
                found = Job(volume=volume, action=action, minutes=minutes, added=now)
                schedule.jobs.append(found)
            found.minutes = minutes
            found.active = active
            return found

        return self.update(change)

    def remove(self, volume: str, action: str) -> None:
        check_name(volume, "volume name")

        def change(schedule: Schedule) -> None:
            schedule.jobs.remove(schedule.find(volume, action))

        self.update(change)

    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        """Pause or resume one job (volume and action), a volume's jobs, or the whole schedule.

        With neither volume nor action the global switch flips, so jobs
        paused one by one stay paused after a global resume.  Returns how many
        jobs the call touched.
        """
        if volume is not None:
            check_name(volume, "volume name")

        def change(schedule: Schedule) -> int:
            if volume is None and action is None:
                schedule.paused = not active
                return len(schedule.jobs)
            if action is not None:
                jobs = (
                    [schedule.find(volume, action)]
                    if volume
                    else [j for j in schedule.jobs if j.action == action]
                )
            else:
                jobs = [j for j in schedule.jobs if j.volume == volume]
            if not jobs:
                raise NotFound(f"no scheduled job matches volume {volume!r} action {action!r}")
            for job in jobs:
                job.active = active
            return len(jobs)

        return self.update(change)

    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        """Merge a buttervolume schedule (``volume,action,minutes[,active]`` lines).

        The whole file is checked first: one bad line refuses the import and
        leaves the schedule as it was.
        """
        parsed = parse_buttervolume_csv(text)
        stamp = time.time() if now is None else now

        def change(schedule: Schedule) -> list[Job]:
            out = []
            for volume, action, minutes, active in parsed:
                try:
                    job = schedule.find(volume, action)
                except NotFound:
                    job = Job(volume=volume, action=action, minutes=minutes, added=stamp)
                    schedule.jobs.append(job)
                job.minutes, job.active = minutes, active
                out.append(job)
            return out

        return self.update(change)
