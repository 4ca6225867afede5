"""Byte progress on a terminal line: one transfer (ByteMeter), or one image copied to
several regions at once (SyncProgress).

Both draw on stderr with ``\\r`` and redraw at most five times a second; disabled,
they cost one attribute test per chunk.  They are only ever shown on a terminal or
with ``--progress`` (cli/image.py decides).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

REDRAW = 0.2  # seconds between two draws of the line


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _rate_eta(done: int, total: int | None, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-6)
    if not total:
        return f"{mib(done)}, {mib(rate)}/s"
    left = max(total - done, 0)
    eta = f"{left / rate:.0f}s" if rate > 0 else "?"
    return f"{mib(done)} of {mib(total)} ({100 * done / total:.0f}%), {mib(rate)}/s, ETA {eta}"


class ByteMeter:
    """Per-image byte progress on one terminal line: bytes, rate, ETA.

    ``update(data)`` is fed every chunk (it is a ChunkReader observer); the
    line is redrawn at most five times a second and ends when the image is
    complete (or at :meth:`finish`).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: TextIO,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.stream = label, total, stream
        self.enabled, self.clock = enabled, clock
        self.done = 0
        self.start = self.last = clock()
        self.finished = False

    def update(self, data: bytes) -> None:
        if not self.enabled or self.finished:
            return
        self.done += len(data)
        now = self.clock()
        complete = self.total is not None and self.done >= self.total
        if now - self.last < REDRAW and not complete:
            return
        self.last = now
        text = f"{self.label}: " + _rate_eta(self.done, self.total, now - self.start)
        self.stream.write(f"\r{text}   ")
        self.stream.flush()
        if complete:
            self.finish()

    def finish(self) -> None:
        if self.enabled and not self.finished:
            self.finished = True
            self.stream.write("\n")
            self.stream.flush()


class _Slot:
    """One region's copy of the image on the board: a ChunkReader observer."""

    def __init__(self, board: SyncProgress, generation: int, region: str, total: int | None):
        self.board, self.generation = board, generation
        self.region, self.total = region, total
        self.done = 0

    @property
    def complete(self) -> bool:
        return self.total is not None and self.done >= self.total

    def update(self, data: bytes) -> None:
        self.board._advance(self, len(data))


class SyncProgress:
    """The image being synchronised, with every region's share of it, on one line.

    Image sync reads each master image once and streams it to several regions at
    once, each from its own thread; a ByteMeter per region would draw over the
    others' line.  This board owns the line: :meth:`observer` (the sync's
    ``observer(region, image)``) gives each region's copy a slot, and the line
    shows the image, each region's percentage, and bytes, rate and ETA of the
    slowest region.  The line ends when every region has the whole image, when
    the next image starts (a region dropped halfway stays at its share), or at
    :meth:`close`.  Slots of an image that is no longer on the line are ignored.
    """

    def __init__(
        self, stream: TextIO, enabled: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream, self.enabled, self.clock = stream, enabled, clock
        self._lock = threading.Lock()
        self._generation = 0
        self._key: str | None = None
        self._image = ""
        self._slots: list[_Slot] = []
        self._start = self._last = 0.0
        self._drawn = False

    def observer(self, region: str, image: Any) -> _Slot | None:
        if not self.enabled:
            return None
        key = image.id or image.name  # names may repeat; the line shows the name
        with self._lock:
            if key != self._key:
                self._end_line()
                self._generation += 1
                self._key, self._image, self._slots = key, image.name, []
                self._start = self._last = self.clock()
            slot = _Slot(self, self._generation, region, image.size)
            self._slots.append(slot)
            return slot

    def close(self) -> None:
        with self._lock:
            self._end_line()
            self._key, self._slots = None, []

    def _advance(self, slot: _Slot, n: int) -> None:
        with self._lock:
            slot.done += n
            if slot.generation != self._generation:
                return
            now = self.clock()
            complete = all(s.complete for s in self._slots)
            if not complete and now - self._last < REDRAW:
                return
            self._last = now
            self._draw(now)
            if complete:
                self._end_line()
                self._key, self._slots = None, []

    def _draw(self, now: float) -> None:
        slowest = min(self._slots, key=lambda s: s.done)
        shares = " ".join(
            f"{s.region} {100 * s.done / s.total:.0f}%" if s.total else f"{s.region} {mib(s.done)}"
            for s in self._slots
        )
        text = f"{self._image}: {shares}; " + _rate_eta(
            slowest.done, slowest.total, now - self._start
        )
        self.stream.write(f"\r{text}   ")
        self.stream.flush()
        self._drawn = True

    def _end_line(self) -> None:
        # called with the lock held
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
