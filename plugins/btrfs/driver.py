"""BtrfsVolumeDriver: volumes as btrfs subvolumes under one root.

Layout of ``[volume_btrfs] root`` (see doc/volumes.md)::

    volumes/NAME            writable subvolumes, what containers mount
    snapshots/NAME@STAMP    read-only snapshots taken here
    received/NAME@STAMP     read-only snapshots other hosts sent here
    (each of the three may live elsewhere: volumes_path, snapshots_path, received_path;
    STAMP may be another tool's, e.g. buttervolume's, see foreign_time_formats, and
    buttervolume's sent markers snapshots/NAME@STAMP@HOST are records, not snapshots)
    volumes/.new-* .restore-*   hidden temporaries (see cleanup)
    .mounts/ .sent/ .locks/ .detached/   bookkeeping (stowkit.plugins.btrfs.state)

Subvolumes are made, snapshotted and deleted with libbtrfsutil ioctls; only
send/receive and rsync run processes, with argument lists.  Every name goes
through stowkit.corelib.names before it becomes part of a path.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import fcntl
import os
import posixpath
import re
import stat
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from typing import TypeVar

from stowkit.corelib import retention
from stowkit.corelib.errors import (
    AlreadyExists,
    BackendUnavailable,
    ConfigError,
    Conflict,
    InvalidArgument,
    InvalidName,
    Locked,
    NotFound,
)
from stowkit.corelib.names import MAX_NAME_LENGTH, check_name
from stowkit.corelib.volume import (
    SNAPSHOT_SEPARATOR,
    PurgeResult,
    RestoreResult,
    SendResult,
    Snapshot,
    SyncResult,
    Volume,
    VolumeCapability,
    VolumeDriver,
    VolumeStatus,
    parse_rate,
    snapshot_name,
    split_snapshot_name,
)
from stowkit.plugins.btrfs import state, subvol, transport
from stowkit.plugins.btrfs.options import OPTIONS

COMPRESSIONS = ("none", "zstd", "lzo", "zlib")
_T = TypeVar("_T")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool_option(key: str, value: object) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"invalid volume option {key}={value!r}: use true or false")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _is_name(name: str) -> bool:
    """check_name as a predicate, for directory scans (same rule, no exception cost)."""
    return len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name) is not None


#: The shape of stowkit's own stamps (SNAPSHOT_TIME_FORMAT), for cheap counts.
_OWN_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}-[0-9]{2}-[0-9]{2}\.[0-9]{6}")

# Hidden temporary subvolumes in volumes/ are named ``.KIND-NAME-RANDOM``.
#: A temporary without a lock file (made by a stowkit that kept none) is only
#: deleted once it is this old, so a create still running in such a process is spared.
UNLOCKED_TEMP_AGE = 600.0
_TEMP = re.compile(r"\.(new|restore)-(.+)-[0-9a-f]{12}")


@dataclasses.dataclass(frozen=True)
class _PeerSnapshot:
    name: str
    created: dt.datetime
    path: str  #: on the peer
    key: str  #: its stream UUID (received UUID, else UUID)


def shared_parent(
    candidates: Sequence[_T],
    name: str,
    created: dt.datetime,
    shared: Container[str | None],
    key: Callable[[_T], str | None],
) -> _T | None:
    """The incremental parent of a stream of snapshot ``name`` (taken at ``created``).

    The newest of ``candidates`` (the sending side's snapshots, oldest
    first, each with ``.name`` and ``.created``) not newer than the snapshot
    whose stream UUID (``key``) the receiving side holds too (``shared``).
    One rule for sends and pulls: a stream's parent must exist on both ends.
    """
    found = [
        c
        for c in candidates
        if c.name != name and c.created <= created and key(c) in shared  # type: ignore[attr-defined]
    ]
    return found[-1] if found else None


def _check_mount_id(mount_id: object) -> str:
    if not isinstance(mount_id, str) or not mount_id or len(mount_id) > 256:
        raise InvalidArgument("invalid mount ID: a non-empty string of at most 256 characters")
    return mount_id


class BtrfsVolumeDriver(VolumeDriver):
    """Docker-style volumes on btrfs, with snapshots, replication and retention."""

    options = OPTIONS
    capabilities = frozenset({VolumeCapability.COMPRESSION, VolumeCapability.NOCOW})

    @classmethod
    def unavailable(cls, opts=None) -> str | None:
        # libbtrfsutil's bindings, as subvol imported them (they are an extra).
        return subvol.missing_bindings()

    def __init__(self, conf, group: str) -> None:
        super().__init__(conf, group)
        self.root = os.path.abspath(self.opts.root)
        # buttervolume keeps these three anywhere; stowkit's default is below root.
        self.volumes_dir = os.path.abspath(self.opts.volumes_path or self._dir("volumes"))
        self.snapshots_dir = os.path.abspath(self.opts.snapshots_path or self._dir("snapshots"))
        self.received_dir = os.path.abspath(self.opts.received_path or self._dir("received"))
        #: other tools' snapshot-name formats read besides stowkit's own
        self.formats = tuple(f for f in (self.opts.foreign_time_formats or ()) if f)
        self._ready = False
        #: what the last scan of volumes/ found, per (name, d_ino); see _scan_volumes
        self._scan: dict[tuple[str, int], tuple[str, str, dt.datetime | None]] = {}
        # Mount IDs are recorded per boot (plugins/btrfs/state.py); a driver never outlives one.
        self._boot = state.boot_id()

    # -- layout --------------------------------------------------------------------

    def _dir(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _setup(self) -> None:
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
        for sub in (
            ".mounts",
            ".sent",
            ".detached",
            ".locks/volume",
            ".locks/send",
            ".locks/pipe",
            ".locks/tmp",
        ):
            os.makedirs(self._dir(sub), exist_ok=True)
        self._ready = True

    def _volume_path(self, name: str) -> str:
        return os.path.join(self.volumes_dir, check_name(name, "volume name"))

    def _existing_volume(self, name: str) -> str:
        path = self._volume_path(name)
        self._setup()
        if not subvol.is_subvolume(path):
            raise NotFound(f"no such volume: {name}")
        return path

    def _lock(self, volume: str) -> contextlib.AbstractContextManager[None]:
        return self.volume_lock(volume)

    @contextlib.contextmanager
    def volume_lock(self, name: str, *, wait: bool = True) -> Iterator[None]:
        """The one per-volume lock (flock on ``.locks/volume/NAME``), reentrant per thread.

        Interim version until the btrfs split's; ``wait=False`` raises Locked at once.
        """
        held = self.__dict__.setdefault("_held_volumes", threading.local())
        mine = held.__dict__.setdefault("names", set())
        if name in mine:  # a driver call inside a job that holds it
            yield
            return
        self._setup()
        fd = os.open(self._dir(".locks", "volume", check_name(name)), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Locked(f"volume {name} is busy with another job") from None
            mine.add(name)
            try:
                yield
            finally:
                mine.discard(name)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _temporary(self, kind: str, name: str) -> Iterator[str]:
        """A path for a hidden temporary subvolume, with its lock held throughout.

        Hidden (leading '.') so list never shows it; unique so two callers never
        meet.  The caller must have moved or deleted the subvolume by the end:
        the lock says "in progress" to :meth:`cleanup` in any process, and the
        kernel drops it if this process dies, which makes a leftover collectable.
        """
        tmp = f".{kind}-{name}-{uuidlib.uuid4().hex[:12]}"
        with state.held(self._dir(".locks", "tmp", tmp)):
            yield os.path.join(self.volumes_dir, tmp)

    # -- volumes -------------------------------------------------------------------

    def _parse_options(self, options: Mapping[str, str] | None) -> tuple[bool, str]:
        options = dict(options or {})
        unknown = set(options) - {"copyonwrite", "compression"}
        if unknown:
            raise InvalidArgument(
                f"unknown volume option {sorted(unknown)[0]!r} (known: copyonwrite, compression)"
            )
        compression = str(options.get("compression", self.opts.compression)).strip().lower()
        if compression in _TRUE:
            # buttervolume's compression=true: compressed, with the configured
            # algorithm, or zstd (btrfs' best) when the configuration says none.
            default = str(self.opts.compression).strip().lower()
            compression = default if default in COMPRESSIONS and default != "none" else "zstd"
        elif compression in _FALSE:
            compression = "none"
        if compression not in COMPRESSIONS:
            raise InvalidArgument(
                f"invalid compression {compression!r}: use one of {', '.join(COMPRESSIONS)}, "
                "true or false"
            )
        if "copyonwrite" in options:
            cow = _bool_option("copyonwrite", options["copyonwrite"])
            if not cow and compression != "none":
                raise InvalidArgument(
                    "compression needs copy-on-write: btrfs never compresses "
                    "copyonwrite=false files"
                )
        else:
            # Asking for compression implies copy-on-write, the only way it works.
            cow = bool(self.opts.copyonwrite) or compression != "none"
        return cow, compression

    def create_volume(self, name: str, options: Mapping[str, str] | None = None) -> Volume:
        path = self._volume_path(name)
        cow, compression = self._parse_options(options)
        self._setup()
        if os.path.lexists(path):
            raise AlreadyExists(f"volume {name} already exists")
        now = dt.datetime.now(dt.UTC)
        with self._temporary("new", name) as tmp:
            subvol.create(tmp)
            try:
                if not cow:
                    subvol.set_nocow(tmp)
                if compression != "none":
                    subvol.set_compression(tmp, compression)
                subvol.mark_created(tmp, now)
                with self._lock(name):
                    # Under the lock Mount and Remove take: a mount record left
                    # for a volume of this name that is gone (an older stowkit's
                    # race, a crash) must not make the new volume "mounted".
                    if os.path.lexists(path):
                        raise AlreadyExists(f"volume {name} already exists")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._dir(".mounts", name))
                    subvol.rename(tmp, path, subvol.RENAME_NOREPLACE)
            except BaseException:
                subvol.delete(tmp)
                raise
        return Volume(
            name=name,
            path=path,
            created=now,
            options={"copyonwrite": str(cow).lower(), "compression": compression},
        )

    def _snapshot_counts(self) -> collections.Counter[str]:
        counts: collections.Counter[str] = collections.Counter()
        # The names as snapshots are counted everywhere else (show, lists):
        # valid names only, buttervolume's sent markers (NAME@STAMP@HOST) not.
        for where in self._snapshot_dirs():
            with os.scandir(where) as it:
                for entry in it:
                    volume, sep, stamp = entry.name.partition(SNAPSHOT_SEPARATOR)
                    if not sep:
                        continue
                    if _OWN_STAMP.fullmatch(stamp) and _is_name(volume):
                        counts[volume] += 1  # stowkit's own form: no strptime per entry
                        continue
                    with contextlib.suppress(InvalidName):
                        counts[self.split_name(entry.name)[0]] += 1
        return counts

    def _snapshot_dirs(self) -> tuple[str, ...]:
        """snapshots/ then received/ (one, if they are the same directory)."""
        if self.received_dir == self.snapshots_dir:
            return (self.snapshots_dir,)
        return (self.snapshots_dir, self.received_dir)

    def split_name(self, name: object) -> tuple[str, dt.datetime]:
        """``VOLUME@STAMP`` in stowkit's form or a configured foreign one; InvalidName."""
        return split_snapshot_name(name, self.formats)

    def _marker(self, name: str) -> tuple[str, str, str] | None:
        """buttervolume's sent marker ``VOLUME@STAMP@HOST`` -> (volume, snapshot, host)."""
        head, sep, host = name.partition(SNAPSHOT_SEPARATOR)
        stamp, sep2, host = host.partition(SNAPSHOT_SEPARATOR)
        if not (sep and sep2 and host) or any(c in host for c in "/\0"):
            return None
        snapshot = f"{head}{SNAPSHOT_SEPARATOR}{stamp}"
        try:
            volume, _ = self.split_name(snapshot)
        except InvalidName:
            return None
        return volume, snapshot, host

    def _markers(self, volume: str) -> list[tuple[str, str, str]]:
        """(host, snapshot, marker path) of ``volume``'s buttervolume sent markers, oldest first."""
        found = []
        with os.scandir(self.snapshots_dir) as it:
            for entry in it:
                if not entry.name.startswith(volume + SNAPSHOT_SEPARATOR):
                    continue
                marker = self._marker(entry.name)
                if marker is not None and marker[0] == volume:
                    when = self.split_name(marker[1])[1]
                    found.append((when, marker[2], marker[1], entry.path))
        return [(h, s, p) for _, h, s, p in sorted(found)]

    def _mount_table(self) -> dict[str, list[str]]:
        table = {}
        with os.scandir(self._dir(".mounts")) as it:
            for entry in it:
                if _is_name(entry.name):
                    ids = state.read_mounts(entry.path, self._boot)
                    if ids:
                        table[entry.name] = ids
        return table

    def _created(self, path: str) -> dt.datetime | None:
        """When the volume at ``path`` was made: the time stowkit recorded, one getxattr.

        A volume made by another tool has none: then the subvolume's own
        creation time (one ioctl), or None if even that fails.
        """
        when = subvol.created(path)
        if when is None:
            with contextlib.suppress(NotFound, BackendUnavailable):
                when = subvol.info(path)["otime"]
        return when

    def volume_created(self, name: str) -> dt.datetime | None:
        return self._created(self._existing_volume(name))

    def get_volume(self, name: str, with_size: bool = False) -> Volume:
        path = self._existing_volume(name)
        count = sum(1 for s in self._snapshot_names(name) if s[0] == name)
        return Volume(
            name=name,
            path=path,
            created=self._created(path),
            size=subvol.used_bytes(path) if with_size else None,
            snapshot_count=count,
            mount_count=len(self.mounts(name)),
            options={
                "copyonwrite": str(not subvol.is_nocow(path)).lower(),
                "compression": subvol.compression(path),
            },
        )

    def list_volumes(self) -> Sequence[Volume]:
        self._setup()
        counts = self._snapshot_counts()
        mounts = self._mount_table()
        return [
            Volume(
                name=name,
                path=path,
                # None for a volume another tool made (show reads the subvolume's time)
                created=created,
                snapshot_count=counts.get(name, 0),
                mount_count=len(mounts.get(name, ())),
            )
            for name, path, created in self._scan_volumes()
        ]

    def volume_entries(self) -> Sequence[tuple[str, str, dt.datetime | None]]:
        self._setup()
        return self._scan_volumes()

    def _scan_volumes(self) -> list[tuple[str, str, dt.datetime | None]]:
        """``(name, path, created)`` of each subvolume in volumes/, sorted by name.

        No ioctl and no process: one scan of the directory, then, for a volume
        not seen before, one lstat and one getxattr.  Tree-search ioctls (what
        subvolume_info does as root) wait for the btrfs cleaner while it drops
        deleted subvolumes, which made List take 70-210 ms at 1,000 volumes.
        A subvolume's root directory is inode 256 (BTRFS_FIRST_FREE_OBJECTID);
        a plain directory in volumes/ never is.

        What the lstat and getxattr found is kept per ``(name, d_ino)``: the
        inode number readdir gives for a subvolume's entry is its tree's id,
        which a deleted and re-made volume of the same name never shares, and
        a volume's recorded creation time never changes once set.  So every
        call sees exactly the entries the directory has now; only a volume
        whose time was not recorded yet (caught between its creation and its
        xattr) is read again each time.
        """
        known = self._scan
        fresh: dict[tuple[str, int], tuple[str, str, dt.datetime | None]] = {}
        with os.scandir(self.volumes_dir) as it:
            for entry in it:
                if not _is_name(entry.name):
                    continue
                key = (entry.name, entry.inode())
                found = known.get(key)
                if found is None or found[2] is None:
                    try:
                        est = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # gone meanwhile
                    if not stat.S_ISDIR(est.st_mode) or est.st_ino != subvol.SUBVOLUME_INODE:
                        continue
                    found = (entry.name, entry.path, subvol.created(entry.path))
                fresh[key] = found
        self._scan = fresh  # one assignment: other threads see the old map or the new
        return sorted(fresh.values())

    def volume_path(self, name: str) -> str:
        return self._existing_volume(name)

    def delete_volume(self, name: str, force: bool = False) -> None:
        self._volume_path(name)  # the name first: nothing is touched for a bad one
        self._setup()
        # The lock before the existence check: a Mount waiting on it then sees
        # the volume gone instead of recording an ID for a deleted volume.
        with self._lock(name):
            path = self._existing_volume(name)
            users = self.mounts(name)
            if users and not force:
                raise Conflict(
                    f"volume {name} is mounted ({len(users)} mount(s)); "
                    "unmount it first or use --force"
                )
            subvol.delete(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir(".mounts", name))

    def clone_volume(self, source: str, target: str) -> Volume:
        dst = self._volume_path(target)  # both names are checked before anything is touched
        src = self._existing_volume(source)
        if os.path.lexists(dst):
            raise AlreadyExists(f"volume {target} already exists")
        # create_snapshot fails with EEXIST on a taken name: it never nests.
        subvol.snapshot(src, dst, read_only=False)
        # The clone carries its source's record until dated afresh; a reader in
        # between sees the source's time, never a wrong format.
        subvol.mark_created(dst, dt.datetime.now(dt.UTC))
        return self.get_volume(target)

    # -- mounts ----------------------------------------------------------------------

    def mount(self, name: str, mount_id: str) -> str:
        check_name(name, "volume name")
        _check_mount_id(mount_id)
        self._setup()
        # Checked under the lock Remove holds while it deletes: a volume removed
        # meanwhile is NotFound here, never a mountpoint with a stale record.
        with self._lock(name):
            path = self._existing_volume(name)
            record = self._dir(".mounts", name)
            ids = state.read_mounts(record, self._boot)
            if mount_id not in ids:
                ids.append(mount_id)
            # Rewritten even when the ID was there: a record of an earlier
            # boot (or an older format) becomes this boot's.
            state.write_mounts(record, self._boot, ids)
        return path

    def unmount(self, name: str, mount_id: str) -> None:
        check_name(name, "volume name")
        _check_mount_id(mount_id)
        self._setup()
        with self._lock(name):
            record = self._dir(".mounts", name)
            ids = [i for i in state.read_mounts(record, self._boot) if i != mount_id]
            if ids:
                state.write_mounts(record, self._boot, ids)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(record)
                self._settle_detached(name)

    def mounts(self, name: str) -> Sequence[str]:
        check_name(name, "volume name")
        self._setup()
        return state.read_mounts(self._dir(".mounts", name), self._boot)

    def clear_mounts(self, name: str) -> list[str]:
        self._volume_path(name)  # checks the name first
        self._setup()
        with self._lock(name):  # as Mount and Remove: the lock, then the existence check
            self._existing_volume(name)
            ids = state.read_mounts(self._dir(".mounts", name), self._boot)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._dir(".mounts", name))
            self._settle_detached(name)
        return ids

    def cleanup(self, min_age: float = UNLOCKED_TEMP_AGE) -> list[tuple[str, str]]:
        """Collect the hidden temporary subvolumes a crashed create or restore left.

        Only leftovers no live process holds: each temporary's maker flocks
        ``.locks/tmp/NAME`` from before the subvolume exists until after it is
        renamed or deleted, and the kernel drops the lock when the maker dies.
        One without a lock file (an older stowkit's) must be ``min_age``
        seconds old.  Safe while other processes create and restore volumes.

        A ``.new-`` leftover is an unpublished empty volume: deleted.  A
        ``.restore-`` leftover may be the volume's previous tree, swapped out
        just before the crash (possibly with writes newer than the restore's
        backup), so it is never deleted blind: it is kept as a read-only
        snapshot ``VOLUME@now``, as a forced restore's detached tree is (and
        waits in ``.detached/`` while the volume has mounts).
        Returns (temporary name, what was done) pairs.
        """
        self._setup()
        done = []
        with os.scandir(self.volumes_dir) as it:
            temps = sorted((e for e in it if _TEMP.fullmatch(e.name)), key=lambda e: e.name)
        for entry in temps:
            kind, volume = _TEMP.fullmatch(entry.name).group(1, 2)
            lock = self._dir(".locks", "tmp", entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # its maker finished meanwhile
            if not stat.S_ISDIR(st.st_mode) or st.st_ino != subvol.SUBVOLUME_INODE:
                continue
            if os.path.lexists(lock):
                if not state.abandoned(lock):
                    continue  # in progress in a live process
            elif time.time() - st.st_ctime < min_age:
                continue
            try:
                if kind == "new" or not _is_name(volume):
                    subvol.delete(entry.path)
                    outcome = "deleted"
                else:
                    outcome = self._keep_leftover(volume, entry.path)
            except NotFound:
                continue  # moved into place or deleted by its maker meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            done.append((entry.name, outcome))
        return done

    def _keep_leftover(self, volume: str, path: str) -> str:
        with self._lock(volume):
            keep = self._dir(".detached", os.path.basename(self._free_snapshot_path(volume)))
            subvol.rename(path, keep, subvol.RENAME_NOREPLACE)
            if self.mounts(volume):
                return f"kept in .detached/ until {volume} is unmounted"
            before = set(os.listdir(self.snapshots_dir))
            self._settle_detached(volume)
            made = sorted(set(os.listdir(self.snapshots_dir)) - before)
            return f"kept as snapshot {', '.join(made)}"

    def _settle_detached(self, name: str) -> None:
        """Turn trees a forced restore swapped out into snapshots once nobody uses them."""
        with os.scandir(self._dir(".detached")) as it:
            mine = sorted(e.path for e in it if e.name.partition(SNAPSHOT_SEPARATOR)[0] == name)
        for path in mine:
            # A read-only subvolume cannot change directory, so snapshot it instead.
            subvol.snapshot(path, self._free_snapshot_path(name), read_only=True)
            subvol.delete(path)

    # -- snapshots -------------------------------------------------------------------

    def _free_snapshot_path(self, volume: str) -> str:
        when = dt.datetime.now(dt.UTC)
        while True:
            path = os.path.join(self.snapshots_dir, snapshot_name(volume, when))
            if not os.path.lexists(path):
                return path
            when += dt.timedelta(microseconds=1)

    def _snapshot_names(self, volume: str | None = None) -> list[tuple[str, dt.datetime, str]]:
        """(volume, created, path) of every valid snapshot name, local and received."""
        self._setup()
        found = []
        for where in self._snapshot_dirs():
            with os.scandir(where) as it:
                for entry in it:
                    if volume is not None and not entry.name.startswith(volume + "@"):
                        continue
                    try:
                        vol, created = self.split_name(entry.name)
                    except InvalidName:
                        continue  # not a snapshot name (a sent marker, a stray file)
                    if where == self.received_dir and not self._complete(entry.path):
                        continue  # a receive in progress
                    found.append((vol, created, entry.path))
        return found

    def _snapshot(self, path: str) -> Snapshot:
        name = os.path.basename(path)
        volume, created = self.split_name(name)
        info = subvol.info(path)
        return Snapshot(
            name=name,
            volume=volume,
            created=created,
            path=path,
            uuid=info["uuid"],
            received_uuid=info["received_uuid"],
            parent_uuid=info["parent_uuid"],
            received=os.path.dirname(path) == self.received_dir,
        )

    @staticmethod
    def _complete(path: str) -> bool:
        """A received subvolume is complete once btrfs receive made it read-only."""
        try:
            return subvol.info(path)["read_only"]
        except (NotFound, BackendUnavailable):
            return False

    def _snapshot_path(self, name: str) -> str:
        self.split_name(name)
        self._setup()
        for where in self._snapshot_dirs():
            path = os.path.join(where, name)
            if subvol.is_subvolume(path) and (where == self.snapshots_dir or self._complete(path)):
                return path
        raise NotFound(f"no such snapshot: {name}")

    def create_snapshot(self, volume: str) -> Snapshot:
        src = self._existing_volume(volume)
        path = self._free_snapshot_path(volume)
        subvol.snapshot(src, path, read_only=True)
        return self._snapshot(path)

    def get_snapshot(self, name: str) -> Snapshot:
        return self._snapshot(self._snapshot_path(name))

    def list_snapshots(self, volume: str | None = None) -> Sequence[Snapshot]:
        if volume is not None:
            check_name(volume, "volume name")
        found = sorted(self._snapshot_names(volume), key=lambda s: (s[1], s[2]))
        result = []
        for vol, _, path in found:
            if volume is not None and vol != volume:
                continue
            try:
                result.append(self._snapshot(path))
            except (NotFound, BackendUnavailable):
                continue  # not a subvolume, or deleted while we looked
        return result

    def delete_snapshot(self, name: str) -> None:
        if isinstance(name, str) and self._marker(name) is not None:
            # buttervolume's sent marker VOLUME@STAMP@HOST: its ``rm`` deletes those too.
            self._setup()
            path = os.path.join(self.snapshots_dir, name)
            if not subvol.is_subvolume(path):
                raise NotFound(f"no such snapshot: {name}")
        else:
            path = self._snapshot_path(name)
        subvol.delete(path)

    def snapshot_entries(self, volume: str | None = None) -> Sequence[str]:
        # Directory order is the order entries were made (btrfs lists a
        # directory by its index), which is what buttervolume prints.
        if volume is not None:
            check_name(volume, "volume name")
        self._setup()
        names = []
        for where in self._snapshot_dirs():
            with os.scandir(where) as it:
                for entry in it:
                    if volume is not None and not entry.name.startswith(volume + "@"):
                        continue
                    try:
                        vol = self.split_name(entry.name)[0]
                    except InvalidName:
                        marker = self._marker(entry.name) if where == self.snapshots_dir else None
                        if marker is None:
                            continue  # a stray file, not a snapshot nor a record
                        vol = marker[0]
                    else:
                        if where == self.received_dir and not self._complete(entry.path):
                            continue  # a receive in progress
                    if volume is None or vol == volume:
                        names.append(entry.name)
        return names

    def volume_status(self, name: str) -> VolumeStatus:
        self._existing_volume(name)
        found = [s for s in self._snapshot_names(name) if s[0] == name]
        newest = max(found, key=lambda s: (s[1], s[2]))[2] if found else None
        replication = {}
        for peer, record in sorted(self.sent(name).items()):
            entry = {"snapshot": record.get("snapshot", "")}
            if record.get("at"):
                entry["at"] = record["at"]
            replication[peer] = entry
        return VolumeStatus(
            snapshot_count=len(found),
            newest_snapshot=os.path.basename(newest) if newest else None,
            replication=replication,
            mount_count=len(self.mounts(name)),
        )

    def _newest_snapshot(self, volume: str) -> str:
        check_name(volume, "volume name")
        found = [s for s in self._snapshot_names(volume) if s[0] == volume]
        if not found:
            raise NotFound(f"volume {volume} has no snapshot to restore")
        return max(found, key=lambda s: (s[1], s[2]))[2]

    def restore(self, name: str, target: str | None = None, force: bool = False) -> RestoreResult:
        if target is not None:
            check_name(target, "target volume name")
        if isinstance(name, str) and SNAPSHOT_SEPARATOR in name:
            source = self._snapshot_path(name)
        else:
            source = self._newest_snapshot(name)
        snap = os.path.basename(source)
        volume = self.split_name(snap)[0]
        target = check_name(target if target is not None else volume, "target volume name")
        dst = self._volume_path(target)
        with self._lock(target), self._temporary("restore", target) as fresh:
            if not subvol.is_subvolume(dst):
                if os.path.lexists(dst):
                    raise Conflict(f"{dst} exists and is not a volume; refusing to touch it")
                subvol.snapshot(source, fresh, read_only=False)
                try:
                    # A snapshot carries its source's record: date the new volume.
                    subvol.mark_created(fresh, dt.datetime.now(dt.UTC))
                    subvol.rename(fresh, dst, subvol.RENAME_NOREPLACE)
                except BaseException:
                    subvol.delete(fresh)
                    raise
                return RestoreResult(volume=target, snapshot=snap, backup=None)
            users = self.mounts(target)
            if users and not force:
                raise Conflict(
                    f"volume {target} is mounted ({len(users)} mount(s)); stop its "
                    "containers or use --force"
                )
            backup = self.create_snapshot(target).name
            subvol.snapshot(source, fresh, read_only=False)
            # One atomic swap: the volume's path now holds the restored tree and
            # ``fresh`` the old one; nothing is ever missing at ``dst``.
            try:
                subvol.mark_created(fresh, dt.datetime.now(dt.UTC))
                subvol.rename(fresh, dst, subvol.RENAME_EXCHANGE)
            except BaseException:
                subvol.delete(fresh)
                raise
            if users:
                # A container still has the old tree bind-mounted: keep it alive
                # and writable; the last unmount turns it into a snapshot.
                keep = self._dir(".detached", os.path.basename(self._free_snapshot_path(target)))
                subvol.rename(fresh, keep, subvol.RENAME_NOREPLACE)
            else:
                subvol.delete(fresh)
            return RestoreResult(volume=target, snapshot=snap, backup=backup)

    # -- replication -----------------------------------------------------------------

    def _ssh(self) -> transport.SshConfig:
        return transport.SshConfig(
            command=self.opts.ssh_command,
            key=self.opts.ssh_key,
            options=tuple(self.opts.ssh_options or ()),
        )

    def _peer(self, host: str) -> transport.Peer:
        address = self._addresses().get(host, host) if isinstance(host, str) else host
        return transport.parse_peer(address, self.opts.ssh_user, self.opts.ssh_port)

    def _addresses(self) -> dict[str, str]:
        """``[volume_btrfs] peer_addresses`` as {name: address}."""
        found: dict[str, str] = {}
        for item in self.opts.peer_addresses or ():
            name, sep, address = item.partition("=")
            if not sep or not name.strip() or not address.strip():
                raise ConfigError(
                    f"[volume_btrfs] peer_addresses: {item!r} is not NAME=[user@]host[:port]"
                )
            found[name.strip()] = address.strip()
        return found

    def _remote_dirs(self) -> tuple[str, str]:
        """(received dir, snapshots dir) on peers: where sends land, and where else to look."""
        remote_root = self.opts.remote_root
        if remote_root:
            received = posixpath.join(os.path.abspath(remote_root), "received")
            snapshots = posixpath.join(os.path.abspath(remote_root), "snapshots")
        else:
            received, snapshots = self.received_dir, self.snapshots_dir
        received = os.path.abspath(self.opts.remote_received_path or received)
        snapshots = os.path.abspath(self.opts.remote_snapshots_path or snapshots)
        return received, snapshots

    def _listing_dirs(self) -> list[str]:
        """The peer directories a send lists: its received/ (first), its snapshots/."""
        received, snapshots = self._remote_dirs()
        return [received] if snapshots == received else [received, snapshots]

    def _remote_held(self, peer: transport.Peer, volume: str) -> tuple[dict[str, str], set[str]]:
        """{received_uuid: name} of ``volume``'s complete snapshots the peer holds,
        and the names of those in the directory sends land in (one ssh call;
        a send gets the same from its own session, see :meth:`_send`)."""
        dirs = self._listing_dirs()
        argv = self._ssh().argv(peer) + [transport.remote_command(transport.LIST_SCRIPT, *dirs)]
        out = transport.run(argv, what=f"listing snapshots on {peer.spec}")
        return self._held(out, dirs, volume)

    def _held(self, out: str, dirs: Sequence[str], volume: str) -> tuple[dict[str, str], set[str]]:
        """:meth:`_remote_held` from a listing's text.

        Only subvolumes directly in the peer's configured received/ directory
        (where sends land) or its snapshots/ directory (where buttervolume
        receives) count: ``btrfs subvolume list`` covers the whole filesystem,
        so every listed path is compared with the exact place of those two
        directories on it, never with a directory name.
        """
        received = dirs[0]
        held: dict[str, str] = {}
        landed: set[str] = set()
        for sub in transport.parse_listing(out, dirs):
            if not sub.received_uuid:
                continue  # a receive in progress, or the peer's own snapshot
            name = posixpath.basename(sub.path)
            try:
                vol, _ = self.split_name(name)
            except InvalidName:
                continue
            if vol == volume:
                held.setdefault(sub.received_uuid, name)
                if sub.where == received:
                    landed.add(name)
        return held, landed

    @staticmethod
    def _stream_uuid(snap: Snapshot) -> str | None:
        # btrfs send names a subvolume by its received UUID when it has one.
        return snap.received_uuid or snap.uuid

    def _record_sent(self, peer: transport.Peer, snap: Snapshot) -> None:
        record = self._dir(".sent", snap.volume)
        key = f"{peer.user}@{peer.host}:{peer.port}"
        with state.locked(self._dir(".locks", "send", snap.volume)):
            sent = state.read_json(record, {})
            sent[key] = {
                "snapshot": snap.name,
                "uuid": self._stream_uuid(snap),
                "at": dt.datetime.now(dt.UTC).isoformat(),
            }
            state.write_json(record, sent)
        # buttervolume's markers of sends to this peer are superseded by the record.
        names = {peer.spec, peer.host, peer.destination, f"{peer.destination}:{peer.port}"}
        for host, _, marker in self._markers(snap.volume):
            if host in names:
                with contextlib.suppress(NotFound):
                    subvol.delete(marker)

    def sent(self, volume: str) -> dict[str, dict[str, str]]:
        """{peer: {"snapshot", "uuid", "at"}}: the last snapshot sent to each peer.

        buttervolume's sent markers (read-only ``VOLUME@STAMP@HOST`` snapshots
        in snapshots/) count as records too: the newest per host, for a host
        stowkit has no record of.
        """
        check_name(volume, "volume name")
        self._setup()
        records = state.read_json(self._dir(".sent", volume), {})
        for host, snapshot, marker in self._markers(volume):
            if host not in records or records[host].get("marker"):
                records[host] = {"snapshot": snapshot, "marker": os.path.basename(marker)}
        return records

    def send_snapshot(
        self,
        name: str,
        host: str,
        *,
        compress: bool | None = None,
        bwlimit: int | None = None,
    ) -> SendResult:
        peer = self._peer(host)
        path = self._snapshot_path(name)
        compress = self.opts.send_compression if compress is None else bool(compress)
        rate = parse_rate(self.opts.bwlimit) if bwlimit is None else int(bwlimit)
        if rate < 0:
            raise InvalidArgument("bandwidth limit must not be negative")
        # One send of a volume at a time (and no purge meanwhile): the parent
        # chosen below must still be there, on both sides, when the stream runs.
        with self._pipe_lock(os.path.basename(path).partition(SNAPSHOT_SEPARATOR)[0]):
            return self._send(path, peer, host, compress, rate)

    def _pipe_lock(self, volume: str) -> contextlib.AbstractContextManager[None]:
        return state.locked(self._dir(".locks", "pipe", check_name(volume)))

    def _send(
        self, path: str, peer: transport.Peer, host: str, compress: bool, rate: int
    ) -> SendResult:
        # One ssh connection for the whole send: the peer lists what it holds,
        # then receives on the same session (or is told there is nothing).
        # It is opened first, so the local work below overlaps its handshake.
        dirs = self._listing_dirs()
        with transport.SendSession(self._ssh().argv(peer), dirs) as session:
            snap = self._snapshot(path)
            subvol.sync(path)
            local = self.list_snapshots(snap.volume)
            held, landed = self._held(
                session.listing(f"listing snapshots on {peer.spec}"), dirs, snap.volume
            )
            key = self._stream_uuid(snap)
            if key in held:
                session.nothing()
                self._record_sent(peer, snap)
                return SendResult(snap.name, host, None, 0, already_there=True)
            if snap.name in landed:
                raise Conflict(f"{peer.spec} holds a different snapshot named {snap.name}")
            parent = shared_parent(local, snap.name, snap.created, held, self._stream_uuid)
            send_argv = [self.opts.btrfs_command, "send", "-q"]
            if parent is not None:
                send_argv += ["-p", parent.path]
            send_argv += ["--", path]
            sent_bytes = session.stream(send_argv, snap.name, compress, rate)
        self._record_sent(peer, snap)
        return SendResult(snap.name, host, parent.name if parent else None, sent_bytes)

    def receive_snapshot(
        self,
        name: str,
        host: str,
        *,
        compress: bool | None = None,
        bwlimit: int | None = None,
        dry_run: bool = False,
    ) -> SendResult:
        """Pull snapshot ``name`` from ``host`` into received/: a send run from this side.

        The peer's snapshots/ and received/ are listed over ssh (the directories
        a send lists); the parent is the newest snapshot both hold by stream
        UUID (:func:`shared_parent`, the rule of sends); the peer runs
        ``btrfs send [-p PARENT]`` and the stream is received here by the
        receive script sends use on peers, which deletes a partial subvolume.
        ``already_there`` when a snapshot with the same stream UUID is here.
        """
        volume = self.split_name(name)[0]
        peer = self._peer(host)
        compress = self.opts.send_compression if compress is None else bool(compress)
        rate = parse_rate(self.opts.bwlimit) if bwlimit is None else int(bwlimit)
        if rate < 0:
            raise InvalidArgument("bandwidth limit must not be negative")
        self._setup()
        with self._pipe_lock(volume):
            dirs = self._listing_dirs()
            ssh = self._ssh().argv(peer)
            out = transport.run(
                [*ssh, transport.remote_command(transport.LIST_SCRIPT, *dirs)],
                what=f"listing snapshots on {peer.spec}",
            )
            remote = self._peer_snapshots(out, dirs, volume)
            target = next((r for r in remote if r.name == name), None)
            if target is None:
                raise NotFound(f"{peer.spec} holds no snapshot {name}")
            local = self.list_snapshots(volume)
            for snap in local:
                if self._stream_uuid(snap) == target.key:
                    return SendResult(snap.name, host, None, 0, already_there=True)
                if snap.name == name:
                    raise Conflict(f"a different snapshot named {name} is here already")
            here = {self._stream_uuid(s) for s in local}
            parent = shared_parent(remote, name, target.created, here, lambda r: r.key)
            if dry_run:
                return SendResult(name, host, parent.name if parent else None, 0)
            send = transport.remote_command(
                transport.PULL_SEND_SCRIPT,
                target.path,
                parent.path if parent else "",
                "zstd" if compress else "none",
            )
            receive = [
                "sh",
                "-c",
                transport.RECEIVE_SCRIPT,
                "stowkit",
                self.received_dir,
                name,
                "zstd" if compress else "none",
            ]
            got = transport.pull_stream([*ssh, send], receive, rate)
        return SendResult(name, host, parent.name if parent else None, got)

    def _peer_snapshots(self, out: str, dirs: Sequence[str], volume: str) -> list[_PeerSnapshot]:
        """``volume``'s complete snapshots on a peer, oldest first, from its listing."""
        found = []
        for sub in transport.parse_listing(out, dirs):
            name = posixpath.basename(sub.path)
            try:
                vol, created = self.split_name(name)
            except InvalidName:
                continue
            if vol != volume or (sub.where == dirs[0] and not sub.received_uuid):
                continue  # another volume's, or a receive in progress on the peer
            key = sub.received_uuid or sub.uuid
            if key:
                found.append(_PeerSnapshot(name, created, posixpath.join(sub.where, name), key))
        return sorted(found, key=lambda r: (r.created, r.name))

    def sync_volume(self, volume: str, hosts: Sequence[str]) -> SyncResult:
        check_name(volume, "volume name")
        if isinstance(hosts, str):
            hosts = [hosts]
        peers = [self._peer(h) for h in hosts]
        if not peers:
            raise InvalidArgument("sync needs at least one host")
        path = self._existing_volume(volume)
        backup = self.create_snapshot(volume).name
        remote_root = self.opts.remote_root
        remote_volumes = (
            posixpath.join(os.path.abspath(remote_root), "volumes")
            if remote_root
            else self.volumes_dir
        )
        remote = posixpath.join(remote_volumes, volume) + "/"
        results: dict[str, str] = {}
        for peer in peers:
            argv = [
                self.opts.rsync_command,
                "-a",
                "--update",  # a file newer here is not overwritten by an older one
                "--protect-args",  # the remote path is not split by the remote shell
                "-e",
                self._ssh().rsync_rsh(peer),
                f"{peer.destination}:{remote}",
                path + "/",
            ]
            try:
                transport.run(argv, timeout=None, what=f"sync of {volume} from {peer.spec}")
                results[peer.spec] = "ok"
            except BackendUnavailable as exc:
                results[peer.spec] = str(exc)
        return SyncResult(volume=volume, backup=backup, peers=results)

    # -- retention -------------------------------------------------------------------

    def purge(
        self,
        volume: str,
        pattern: str,
        dry_run: bool = False,
        now: dt.datetime | None = None,
    ) -> PurgeResult:
        check_name(volume, "volume name")
        parsed = retention.parse_pattern(pattern)
        now = now or dt.datetime.now(dt.UTC)
        with self._lock(volume), self._pipe_lock(volume):
            found = [s for s in self._snapshot_names(volume) if s[0] == volume]
            items = [(os.path.basename(p), created) for _, created, p in found]
            paths = {os.path.basename(p): p for _, _, p in found}
            protect: dict[str, str] = {}
            received = [i for i in items if os.path.dirname(paths[i[0]]) == self.received_dir]
            if received:
                protect[max(received, key=lambda i: (i[1], i[0]))[0]] = "newest received snapshot"
            records = self.sent(volume)
            for peer, record in sorted(records.items()):
                if record.get("snapshot") in paths:
                    protect[record["snapshot"]] = f"last sent to {peer}"
            # buttervolume's markers are records: all but the newest per host
            # are stale and go, whatever the pattern (buttervolume deletes them
            # at its next send).
            current = {r.get("marker") for r in records.values()}
            stale = [p for _, _, p in self._markers(volume) if os.path.basename(p) not in current]
            plan = retention.plan_purge(items, parsed, now, protect)
            if not dry_run:
                for name in plan.delete:
                    with contextlib.suppress(NotFound):
                        subvol.delete(paths[name])
                for marker in stale:
                    with contextlib.suppress(NotFound):
                        subvol.delete(marker)
        return PurgeResult(
            volume=volume,
            pattern=parsed.text,
            dry_run=dry_run,
            deleted=list(plan.delete) + [os.path.basename(p) for p in stale],
            kept=list(plan.keep),
            protected=dict(plan.protected),
        )
