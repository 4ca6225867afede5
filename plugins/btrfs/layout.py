"""Where one btrfs root keeps everything, made on first use, and its locks.

See plugins/btrfs/driver.py for the layout; the bookkeeping below it is
described in plugins/btrfs/state.py.  Snapshots, replication and the driver
all reach paths and locks through one :class:`Layout`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import uuid as uuidlib
from collections.abc import Iterator

from stowkit.corelib.errors import BackendUnavailable
from stowkit.corelib.names import MAX_NAME_LENGTH, check_name
from stowkit.corelib.volume import snapshot_name
from stowkit.plugins.btrfs import state, subvol

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

#: The bookkeeping directories below the root (plugins/btrfs/state.py).
BOOKKEEPING = (
    ".mounts",
    ".sent",
    ".detached",
    ".locks/volume",
    ".locks/send",
    ".locks/pipe",
    ".locks/tmp",
)


def is_name(name: str) -> bool:
    """check_name as a predicate, for directory scans (same rule, no exception cost)."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


class Layout:
    """The directories of ``[volume_btrfs]`` (``opts``), checked to be on btrfs."""

    def __init__(self, opts) -> None:
        self.opts = opts
        self.root = os.path.abspath(opts.root)
        # buttervolume keeps these three anywhere; stowkit's default is below root.
        self.volumes_dir = os.path.abspath(opts.volumes_path or self.dir("volumes"))
        self.snapshots_dir = os.path.abspath(opts.snapshots_path or self.dir("snapshots"))
        self.received_dir = os.path.abspath(opts.received_path or self.dir("received"))
        self._ready = False

    def dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def setup(self) -> None:
        """Make the layout on first use, after checking the root is on btrfs."""
        if self._ready:
            return
        subvol.require_bindings()
        # Check the nearest existing ancestor first: nothing is created off btrfs.
        for where, option in (
            (self.root, "root"),
            (self.volumes_dir, "volumes_path"),
            (self.snapshots_dir, "snapshots_path"),
            (self.received_dir, "received_path"),
        ):
            if option != "root" and not getattr(self.opts, option):
                continue  # below root, checked with it
            existing = where
            while not os.path.exists(existing):
                existing = os.path.dirname(existing)
            try:
                subvol.btrfsutil.subvolume_id(existing)
            except (subvol.btrfsutil.BtrfsUtilError, OSError):
                raise BackendUnavailable(
                    f"btrfs {option.replace('_path', ' path')} {where} is not on a btrfs "
                    f"filesystem (set [volume_btrfs] {option})"
                ) from None
        try:
            os.makedirs(self.root, exist_ok=True)
            for where in (self.volumes_dir, self.snapshots_dir, self.received_dir):
                os.makedirs(where, exist_ok=True)
        except OSError as exc:
            raise BackendUnavailable(f"cannot create btrfs root {self.root}: {exc}") from exc
        for sub in BOOKKEEPING:
            os.makedirs(self.dir(sub), exist_ok=True)
        self._ready = True

    def snapshot_dirs(self) -> tuple[str, ...]:
        """snapshots/ then received/ (one, if they are the same directory)."""
        if self.received_dir == self.snapshots_dir:
            return (self.snapshots_dir,)
        return (self.snapshots_dir, self.received_dir)

    def volume_path(self, name: str) -> str:
        return os.path.join(self.volumes_dir, check_name(name, "volume name"))

    def free_snapshot_path(self, volume: str) -> str:
        """snapshots/VOLUME@now, a microsecond later while that name is taken."""
        when = dt.datetime.now(dt.UTC)
        while True:
            path = os.path.join(self.snapshots_dir, snapshot_name(volume, when))
            if not os.path.lexists(path):
                return path
            when += dt.timedelta(microseconds=1)

    # -- locks -----------------------------------------------------------------------

    def volume_lock(
        self, name: str, *, wait: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        """VolumeDriver.volume_lock: one job, send, pull or purge of a volume at a time.

        A reentrant flock on ``.locks/pipe/NAME`` (the path sends have always
        used, so a send of an older stowkit still excludes a purge).  Take it
        before :meth:`state_lock`, never after: that one order rules out a
        deadlock between a job and a purge or restore in another process.
        """
        check_name(name, "volume name")
        self.setup()
        busy = None if wait else f"volume {name!r} is busy with another job"
        return state.reentrant(self.dir(".locks", "pipe", name), busy=busy)

    def state_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Short changes of a volume (create, mount, unmount, snapshot, restore, delete).

        Apart from :meth:`volume_lock` so that a Docker Mount never waits for
        a long replication: a job holds the volume lock for its whole run,
        while this one is held for one driver call.  Reentrant, flock on
        ``.locks/volume/NAME``.
        """
        check_name(name, "volume name")
        self.setup()
        return state.reentrant(self.dir(".locks", "volume", name))

    def record_lock(self, volume: str) -> contextlib.AbstractContextManager[None]:
        """Around a read-modify-write of ``volume``'s ``.sent`` record."""
        return state.locked(self.dir(".locks", "send", check_name(volume)))

    @contextlib.contextmanager
    def temporary(self, kind: str, name: str) -> Iterator[str]:
        """A path for a hidden temporary subvolume, with its lock held throughout.

        Hidden (leading '.') so list never shows it; unique so two callers never
        meet.  The caller must have moved or deleted the subvolume by the end:
        the lock says "in progress" to the driver's cleanup in any process, and
        the kernel drops it if this process dies, which makes a leftover collectable.
        """
        tmp = f".{kind}-{name}-{uuidlib.uuid4().hex[:12]}"
        with state.held(self.dir(".locks", "tmp", tmp)):
            yield os.path.join(self.volumes_dir, tmp)
