"""The NBD server's backend threads: an executor whose threads never hold up exit.

Backend calls (python-swiftclient, file I/O) block, so the server runs them
in threads.  ``concurrent.futures.ThreadPoolExecutor`` joins its threads when
the interpreter exits, so one call hung on an unreachable Swift (a request
waiting out its timeout and retries: minutes) would keep a server that was
told to stop, and had already given up on that call after
``[blockstore] shutdown_timeout``, alive until the call returns.  These
threads are daemons: once the server has reported what it could not store,
nothing it still waits for is worth more than exiting on time.  A daemon
thread killed at exit was only waiting on a socket; stowkit never relies on
such a call finishing (an object not answered is reported as not stored).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any


class DaemonExecutor(concurrent.futures.Executor):
    """Run calls in up to ``max_workers`` daemon threads, started as needed."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "worker") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be positive")
        self.max_workers = max_workers
        self.prefix = thread_name_prefix
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._threads: list[threading.Thread] = []
        # Released by a thread each time it finishes a call (as CPython's pool does).
        self._idle = threading.Semaphore(0)
        self._shutdown = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._guard:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(timeout=0) and len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._work,
                    name=f"{self.prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as err:
                    future.set_exception(err)
                else:
                    future.set_result(result)
            del item, future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._guard:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()
