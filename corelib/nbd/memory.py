"""Give the NBD server's big buffers back to the system when they are freed.

The server allocates and frees object-sized buffers all the time (WRITE
payloads, cached objects, upload snapshots: MiB each).  glibc's malloc
raises its mmap threshold to the size of the first large block freed, so
from then on these buffers come from the heap, and freed ones stay there,
fragmented between live ones: the copy of 256 MiB in peaked at 330 MiB of
RSS with 64 MiB of cache and 64 MiB in flight, and stayed there.  A fixed
threshold keeps them in mmap: freeing one unmaps it (the peak fell to about
210 MiB).  The cost is fresh zero pages for each buffer, small next to the
request that fills it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt() parameters (malloc.h)
M_MMAP_THRESHOLD = -3
#: Blocks of this size and more are mmapped; objects and payloads are larger.
MMAP_THRESHOLD = 1 << 20


def return_big_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix malloc's mmap threshold (glibc only); False when it cannot be set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (musl, macOS): its malloc is left as it is
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    # Setting it turns the dynamic thresholds off; trim the heap as eagerly too.
    ok = mallopt(M_TRIM_THRESHOLD, 2 * threshold) == 1 and ok
    if not ok:
        LOG.debug("mallopt refused the mmap threshold %d", threshold)
    return ok
