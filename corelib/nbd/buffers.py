"""Object-sized buffers of the write-back cache, reused instead of freed.

Every object a client writes lives in the cache as a bytearray of the object
size (4 MiB by default).  A fresh one is an mmap (see :mod:`.memory`) that
the kernel faults in and zeroes page by page on its first write and unmaps
when it is freed: about a thousand page faults per object, a fifth of the
server's CPU while a client copies data in.  The pool keeps buffers the
cache let go of (up to ``limit`` bytes) and hands them out again.

A buffer goes back to the pool only when nothing else refers to it: an
upload still sending it, a memoryview of it, a reply being built from it
all keep it out (``sys.getrefcount``), so a reused buffer can never change
under anyone's feet.
"""

from __future__ import annotations

import sys

from stowkit.corelib.blockstore import zeros

#: References to a buffer inside give_back() when its caller holds the only
#: other one: the caller's, give_back's argument, and getrefcount's own.
_ONLY_THE_CALLERS = 3


class BufferPool:
    """Reusable bytearrays of ``size`` bytes, at most ``limit`` bytes of them kept."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self._free: list[bytearray] = []
        self._zeros = memoryview(zeros(size))
        self.reused = 0  # buffers handed out again (for tests and profiles)

    @property
    def kept(self) -> int:
        """Bytes held by free buffers."""
        return len(self._free) * self.size

    def take(self) -> bytearray | None:
        """A free buffer with whatever it held, for the caller to overwrite whole."""
        if not self._free:
            return None
        self.reused += 1
        return self._free.pop()

    def zeroed(self) -> bytearray:
        """A buffer of zeros."""
        if not self._free:
            return bytearray(self.size)
        buf = self._free.pop()
        buf[:] = self._zeros  # same length: filled in place
        self.reused += 1
        return buf

    def copy(self, data: bytes | bytearray | memoryview) -> bytearray:
        """A buffer holding ``data`` (of the pool's size; other sizes get a new one)."""
        if len(data) != self.size or not self._free:
            return bytearray(data)
        buf = self._free.pop()
        buf[:] = data
        self.reused += 1
        return buf

    def give_back(self, buf: object, room: int | None = None) -> None:
        """Keep ``buf`` for reuse if nothing but the caller holds it, it has the pool's
        size, and the pool stays within ``limit`` (and ``room``, when given)."""
        if type(buf) is not bytearray or len(buf) != self.size:
            return
        limit = self.limit if room is None else min(self.limit, room)
        if self.kept + self.size > limit:
            return
        if sys.getrefcount(buf) > _ONLY_THE_CALLERS:
            return  # still in use somewhere
        self._free.append(buf)

    def clear(self) -> None:
        self._free.clear()
