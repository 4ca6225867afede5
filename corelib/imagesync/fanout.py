"""One read of a source, teed into several writers with bounded memory.

:func:`fan_out` reads an iterator of chunks once and hands every chunk to
each destination's writer thread through that destination's own bounded
queue.  A destination that fails is dropped; so is one whose queue stays
full for longer than ``stall_timeout`` seconds (a stalled region): the
others keep going, and at most ``queue_chunks`` chunks wait for any one
destination.  A dropped writer's reader raises at its next read, and what
its writer returns afterwards is handed to ``discard`` (a copy that landed
after it was given up must not count).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from stowkit.corelib.errors import BackendUnavailable

QUEUE_CHUNKS = 8
STALL_TIMEOUT = 300.0
_POLL = 0.05
_END = object()


class StalledError(BackendUnavailable):
    """A destination took no data for longer than the fan-out's bound."""


class _Abort(Exception):
    pass


@dataclasses.dataclass
class Outcome:
    """What one destination's writer returned, or the error that dropped it."""

    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Destination:
    def __init__(
        self,
        key: Any,
        write: Callable[[Iterator[bytes]], Any],
        discard: Callable[[Any], None] | None,
        queue_chunks: int,
    ) -> None:
        self.key = key
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_chunks))
        self.outcome = Outcome()
        self.finished = threading.Event()
        self.dropped = threading.Event()
        self._write = write
        self._discard = discard
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"fanout-{key}", daemon=True)

    def chunks(self) -> Iterator[bytes]:
        while True:
            if self.dropped.is_set():
                raise _Abort("dropped from the fan-out")
            try:
                item = self.queue.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def _run(self) -> None:
        try:
            result = self._write(self.chunks())
        except BaseException as exc:
            if self.outcome.error is None:
                self.outcome.error = exc
        else:
            with self._lock:
                dropped = self.dropped.is_set()
                if not dropped:
                    self.outcome.result = result
            if dropped and self._discard is not None:
                try:
                    self._discard(result)
                except Exception:
                    pass
        finally:
            self.finished.set()

    def drop(self, error: BaseException) -> None:
        with self._lock:
            if self.outcome.error is None:
                self.outcome.error = error
            self.dropped.set()
            result, self.outcome.result = self.outcome.result, None
        if result is not None and self._discard is not None:
            try:
                self._discard(result)
            except Exception:
                pass

    def offer(self, item: Any, stall_timeout: float) -> bool:
        """Queue ``item``; False (and the destination dropped) when it cannot take it."""
        deadline = time.monotonic() + stall_timeout
        while True:
            if self.finished.is_set() or self.dropped.is_set():
                if self.outcome.error is None and item is not _END:
                    # The writer returned before the end of the data.
                    self.drop(StalledError("stopped reading before the end of the data"))
                return self.outcome.error is None
            try:
                self.queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                if time.monotonic() >= deadline:
                    self.drop(
                        StalledError(
                            f"took no data for {stall_timeout:g}s: dropped from the fan-out"
                        )
                    )
                    return False


def fan_out(
    chunks: Iterable[bytes],
    writers: Sequence[tuple[Any, Callable[[Iterator[bytes]], Any]]],
    *,
    queue_chunks: int = QUEUE_CHUNKS,
    stall_timeout: float = STALL_TIMEOUT,
    discard: Callable[[Any, Any], None] | None = None,
) -> dict[Any, Outcome]:
    """Read ``chunks`` once; ``write(iterator)`` of each ``(key, write)`` runs in a thread.

    Returns ``key -> Outcome``.  An error of the source fails every
    destination still in.  ``discard(key, result)`` gets what a dropped
    writer returned after all.  Dropped writers that are still blocked are
    not waited for.
    """
    dests = [
        _Destination(
            key,
            write,
            (lambda result, k=key: discard(k, result)) if discard else None,
            queue_chunks,
        )
        for key, write in writers
    ]
    for dest in dests:
        dest.thread.start()
    live = list(dests)
    try:
        for chunk in chunks:
            if not chunk:
                continue
            live = [d for d in live if d.offer(chunk, stall_timeout)]
            if not live:
                break
    except BaseException as exc:
        for dest in live:
            dest.drop(exc)
        live = []
        if not isinstance(exc, Exception):
            raise
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    live = [d for d in live if d.offer(_END, stall_timeout)]
    for dest in live:
        # A writer that has its data and still does not finish is stalled too.
        if not dest.finished.wait(stall_timeout):
            dest.drop(
                StalledError(
                    f"did not finish {stall_timeout:g}s after its last data: "
                    "dropped from the fan-out"
                )
            )
    return {d.key: d.outcome for d in dests}
