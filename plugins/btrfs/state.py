"""Small persistent records under the btrfs root, shared by every process.

* ``.locks/pipe/NAME`` - the volume's job lock (:func:`reentrant`, reached
  through ``VolumeDriver.volume_lock``): one scheduled job, send, pull or
  purge of a volume at a time, across the CLI, the plugin and the agents;
  ``.locks/volume/NAME`` - the short lock of one driver call that changes the
  volume (mount, unmount, restore, delete), so a Mount never waits for a job;
  ``.locks/send/NAME`` guards the volume's ``.sent`` record;
* ``.mounts/NAME``  - JSON ``{"boot_id": ..., "ids": [...]}``: the mount IDs
  using the volume and the kernel boot they were recorded in (the Docker
  plugin writes it through ``mount``/``unmount``; ``volume show``, ``delete``
  and ``restore`` read it).  IDs of an earlier boot are stale: no container
  survives a reboot.  A bare JSON list (older records) counts as this boot;
* ``.locks/tmp/NAME`` - held (flock) by the process that owns the hidden
  temporary subvolume ``volumes/NAME`` while it exists, so a cleanup can tell
  a crash's leftover from another process's work in progress;
* ``.sent/NAME``    - JSON ``{host: {"snapshot": ..., "uuid": ..., "at": ...}}``,
  the last snapshot sent to each peer, which purge must keep;
* ``.detached/``    - volumes a forced restore swapped out while a container
  still had them mounted (see doc/volumes.md).

Every file is replaced atomically (write to a temp file, then rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from stowkit.corelib.errors import Locked


def write_json(path: str, data: Any) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str, default: Any) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError):
        # A damaged record must not block the volume; it is rewritten on next change.
        return default


_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """The running kernel's boot ID (changes at every boot; "" if unknown)."""
    try:
        with open(_BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def read_mounts(path: str, boot: str) -> list[str]:
    """The mount IDs recorded in ``path`` during boot ``boot`` (older boots' are stale)."""
    record = read_json(path, [])
    if isinstance(record, list):  # written before boot IDs were recorded
        return [i for i in record if isinstance(i, str)]
    if not isinstance(record, dict) or record.get("boot_id") != boot:
        return []
    return [i for i in record.get("ids", []) if isinstance(i, str)]


def write_mounts(path: str, boot: str, ids: list[str]) -> None:
    write_json(path, {"boot_id": boot, "ids": ids})


def held(path: str) -> contextlib.AbstractContextManager[None]:
    """Create ``path`` and hold an exclusive flock on it; remove it when done."""
    return _flocked(path, remove=True)


def abandoned(path: str) -> bool:
    """True if no live process holds the flock on ``path`` (taken, then released, here).

    A missing file is abandoned too: its owner removes it only after its work
    is done.  flock is released by the kernel when a process dies, crash or not.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def locked(path: str) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive flock on ``path`` (created if needed)."""
    return _flocked(path, remove=False)


@contextlib.contextmanager
def _flocked(path: str, remove: bool) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if remove:  # while still held: nobody finds the file unlocked and takes it for a leftover
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(fd)


#: The reentrant locks this process holds, per thread: {(pid, st_dev, st_ino): depth}.
#: Keyed by the lock file itself, so two drivers (or two spellings of one root)
#: share the count; the pid keeps a forked child from inheriting its parent's count.
_reentrant = threading.local()


@contextlib.contextmanager
def reentrant(path: str, *, busy: str | None = None) -> Iterator[None]:
    """An exclusive flock on ``path`` (created if needed) that its holder may take again.

    A flock belongs to an open file, so a second open of the same file in
    the same thread would wait for itself: the thread that holds the lock
    only counts its re-entries.  Other threads and processes open their own
    file and wait, or, when ``busy`` is given, get :class:`Locked` (``busy``
    its message) at once.  The kernel frees the lock when its holder dies.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        st = os.fstat(fd)
        key = (os.getpid(), st.st_dev, st.st_ino)
        held = _reentrant.__dict__.setdefault("depth", {})
        if key not in held:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
            except BlockingIOError:
                raise Locked(busy) from None
        else:
            os.close(fd)  # closing another open file of it never releases the held flock
            fd = -1
        held[key] = held.get(key, 0) + 1
        try:
            yield
        finally:
            held[key] -= 1
            if not held[key]:
                del held[key]
    finally:
        if fd >= 0:
            os.close(fd)
