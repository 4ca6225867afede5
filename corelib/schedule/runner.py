"""The embedded scheduler: runs the due jobs of a schedule against one VolumeDriver.

* Whatever a job raises is recorded as its result: a replication to an
  unreachable host is ``failed`` with the message, never logged as success.
* One job per volume at a time: the driver's
  :meth:`~stowkit.corelib.volume.VolumeDriver.volume_lock`, held across
  processes, taken without waiting; a volume busy elsewhere is tried again
  next tick.  Jobs of different volumes run concurrently on a bounded pool.
* The runner calls :func:`stowkit.corelib.volumejobs.run`, as the agent and
  the plugin's buttervolume routes do, and imports no backend.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from stowkit.corelib import schedule as options
from stowkit.corelib import volumejobs
from stowkit.corelib.errors import Locked, NotFound, StowkitError
from stowkit.corelib.schedule.filestore import ScheduleStore
from stowkit.corelib.schedule.jobs import FAILED, OK, Job, Schedule
from stowkit.corelib.volume import VolumeDriver

LOG = logging.getLogger(__name__)

#: ``(driver, volume, action) -> message``: how a job is done (tests give their own).
Runner = Callable[[Any, str, str], str]


def run_job(driver: VolumeDriver, volume: str, action: str) -> str:
    """Do the job ``action`` on ``volume``; its one message (a failure raises)."""
    return volumejobs.run(driver, volumejobs.VolumeJob.parse(volume, action)).message


class Scheduler:
    """Runs due jobs of a :class:`ScheduleStore` against one VolumeDriver.

    ``run_due()`` does one pass (tests call it directly); ``start()`` runs
    passes in a thread until ``stop()``.
    """

    def __init__(
        self,
        driver: VolumeDriver,
        store: ScheduleStore,
        max_workers: int = 4,
        tick: float = 1.0,
        runner: Runner = run_job,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.driver = driver
        self.store = store
        self.tick = tick
        self.runner = runner
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="stowkit-job"
        )
        self._running: set[str] = set()  # volumes with a job in flight in this process
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, driver: VolumeDriver, **kwargs: Any) -> Scheduler:
        options.register_opts(conf)
        group = conf[options.GROUP]
        return cls(
            driver,
            ScheduleStore(group.schedule_file),
            max_workers=group.max_workers,
            tick=group.tick,
            **kwargs,
        )

    def due_jobs(self, now: float | None = None) -> list[Job]:
        now = self.clock() if now is None else now
        schedule = self.store.load()
        if schedule.paused:
            return []
        with self._mutex:
            busy = set(self._running)
        due, seen = [], set()
        for job in sorted(schedule.jobs, key=lambda j: j.next_run):
            if not job.active or job.next_run > now:
                continue
            # one job per volume: the most overdue goes first, the rest wait a tick
            if job.volume in busy or job.volume in seen:
                continue
            seen.add(job.volume)
            due.append(job)
        return due

    def run_due(self, wait: bool = True) -> list[concurrent.futures.Future]:
        """Start every job that is due now; with ``wait`` return once they are done."""
        futures = []
        for job in self.due_jobs():
            with self._mutex:
                if job.volume in self._running:
                    continue
                self._running.add(job.volume)
            futures.append(self._pool.submit(self._run_one, job.volume, job.action))
        if wait:
            concurrent.futures.wait(futures)
        return futures

    def _run_one(self, volume: str, action: str) -> None:
        try:
            started = self.clock()
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(self.driver.volume_lock(volume, wait=False))
                except Locked as exc:
                    # Another job or command holds the volume: not a run, try again
                    # next tick.  Only the lock's own refusal: a Locked the job
                    # itself raises (a peer's busy receive) is a failed run.
                    LOG.info("skipping %s on %s: %s", action, volume, exc)
                    return
                try:
                    message = self.runner(self.driver, volume, action)
                    result = OK
                except StowkitError as exc:
                    result, message = FAILED, str(exc)
                except Exception as exc:  # a bug or an OS error: still an honest failure
                    LOG.exception("job %s on %s crashed", action, volume)
                    result, message = FAILED, f"{type(exc).__name__}: {exc}"
            finished = self.clock()
            log = LOG.info if result == OK else LOG.error
            log("job %s on %s %s: %s", action, volume, result, message)
            self._record(volume, action, started, finished, result, message)
        finally:
            with self._mutex:
                self._running.discard(volume)

    def _record(
        self, volume: str, action: str, started: float, finished: float, result: str, message: str
    ) -> None:
        def change(schedule: Schedule) -> None:
            try:
                job = schedule.find(volume, action)
            except NotFound:
                return  # removed while it ran
            # The next run counts from the start, so the rate is the interval
            # whatever the job's duration.
            job.last_run = started
            job.last_result = result
            job.last_message = " ".join(message.split())[:500]
            job.last_duration = round(finished - started, 3)
            job.runs += 1
            job.failures += result == FAILED

        self.store.update(change)

    # -- background loop ----------------------------------------------------------

    def _sleep_time(self) -> float:
        try:
            schedule = self.store.load()
        except StowkitError:
            return self.tick
        upcoming = [j.next_run for j in schedule.jobs if j.active and not schedule.paused]
        if not upcoming:
            return self.tick
        return max(0.01, min(self.tick, min(upcoming) - self.clock()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due(wait=False)
            except Exception:  # keep the loop alive; the next tick tries again
                LOG.exception("scheduler pass failed")
            self._stop.wait(self._sleep_time())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name="stowkit-scheduler", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop looking for due jobs and wait for the running ones to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)
