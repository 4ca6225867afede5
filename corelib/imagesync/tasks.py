"""Synchronisation tasks of the GlanceSync REST service: the store interface and the runner.

A task is one asynchronous sync of one region.  It is ``syncing`` from the
moment it is recorded until its worker ends it as ``synced`` or ``failed``
(with a message).  The :class:`TaskStore` (namespace ``stowkit.imagetask``,
backend ``sql``) persists tasks, so every server process, and a restarted
service, sees the same ones; it also keeps the rule "one running task per
region" atomically (a second start returns the running task).

:class:`TaskRunner` runs the syncs on a bounded pool of threads, so the API
answers at once.  A service that starts calls :meth:`TaskStore.interrupt`
first: a task still ``syncing`` then was running in a process that no longer
exists, and is ended as ``failed`` rather than left ``syncing`` for ever.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import logging
import os
import queue
import threading
from collections.abc import Callable

from stowkit.corelib.driver import Driver

LOG = logging.getLogger("stowkit.imagesync.tasks")

SYNCING = "syncing"
SYNCED = "synced"
FAILED = "failed"
STATUSES = (SYNCING, SYNCED, FAILED)

#: The message of a task found ``syncing`` when its service (re)started.
INTERRUPTED = "the service stopped while this task was running; start a new sync"


class TaskStoreCapability(enum.StrEnum):
    """Optional features a TaskStore may declare: none yet."""


@dataclasses.dataclass(frozen=True)
class Task:
    task_id: str
    region: str
    status: str
    message: str | None = None
    user: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status != SYNCING


class TaskStore(Driver):
    """Persisted sync tasks.  Every method is safe to call from several threads."""

    @abc.abstractmethod
    def sync(self) -> str:
        """Create (or upgrade) the task table; returns a one-line report."""

    @abc.abstractmethod
    def start(self, region: str, user: str) -> tuple[Task, bool]:
        """Record a new ``syncing`` task for ``region``, unless one is running.

        Returns ``(task, created)``: the new task and True, or the region's
        running task and False.  Atomic across processes.
        """

    @abc.abstractmethod
    def get(self, task_id: str) -> Task:
        """The task, or :class:`~stowkit.corelib.errors.NotFound`."""

    @abc.abstractmethod
    def finish(self, task_id: str, status: str, message: str | None) -> None:
        """End a ``syncing`` task as ``synced`` or ``failed`` (a finished one is left alone)."""

    @abc.abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove a finished task; NotFound when missing, Conflict while it is ``syncing``."""

    @abc.abstractmethod
    def interrupt(self, message: str = INTERRUPTED) -> int:
        """End every ``syncing`` task as ``failed`` with ``message``; returns how many."""

    def close(self) -> None:
        """Release connections (before a server forks its workers)."""


class TaskRunner:
    """Runs each task's sync on ``workers`` daemon threads and records its end.

    ``run(region)`` does the sync and returns ``(ok, message)``; an exception
    it raises ends the task as ``failed`` with the exception's text.  The
    threads are daemons: a service that stops does not wait for a copy of
    many GiB; :meth:`shutdown` ends the tasks it was running as ``failed``.
    """

    def __init__(
        self,
        store: TaskStore,
        run: Callable[[str], tuple[bool, str]],
        workers: int = 2,
    ) -> None:
        self.store = store
        self.run = run
        self.workers = max(1, workers)
        self._queue: queue.Queue[Task] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pid = 0
        self._lock = threading.Lock()
        #: ids of the tasks this process has queued or is running
        self.active: set[str] = set()

    def _ensure_threads(self) -> None:
        # Started on first use, and again in a forked child: a server forks
        # its workers after building the app, and threads do not survive a fork.
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._threads = os.getpid(), []
                self._queue = queue.Queue()
                self.active = set()
            while len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._loop, name=f"glancesync-task-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def submit(self, region: str, user: str) -> Task:
        """The region's running task, or a new one queued for a worker."""
        task, created = self.store.start(region, user)
        if created:
            self._ensure_threads()
            self.active.add(task.task_id)
            self._queue.put(task)
        return task

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            try:
                self._work(task)
            finally:
                self.active.discard(task.task_id)

    def _work(self, task: Task) -> None:
        try:
            ok, message = self.run(task.region)
        except Exception as exc:  # the task must end, whatever went wrong
            LOG.error("task %s (%s) failed", task.task_id, task.region, exc_info=exc)
            ok, message = False, f"{type(exc).__name__}: {exc}"
        status = SYNCED if ok else FAILED
        try:
            self.store.finish(task.task_id, status, message)
        except Exception:
            LOG.exception("task %s: cannot record its end", task.task_id)
        LOG.info("task %s (%s): %s: %s", task.task_id, task.region, status, message)

    def shutdown(self, message: str = INTERRUPTED) -> int:
        """End this process's unfinished tasks as ``failed``; returns how many."""
        ended = 0
        for task_id in list(self.active):
            try:
                self.store.finish(task_id, FAILED, message)
                ended += 1
            except Exception:
                LOG.exception("task %s: cannot record its end", task_id)
        return ended
