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

This module holds the VolumeDriver itself: volumes, mounts, restore, the
collection of leftovers, and the per-volume lock.  It composes:

* layout.py      - the directories above, made on first use, and the locks;
* snapshots.py   - the one scanner of snapshots/ and received/, snapshots, retention;
* replication.py - send, pull, sync and the records of what was sent;
* subvol.py, state.py, transport.py - ioctls, bookkeeping files, ssh.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import stat
import time
from collections.abc import Mapping, Sequence

from stowkit.corelib.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    InvalidArgument,
    NotFound,
)
from stowkit.corelib.names import check_name
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
)
from stowkit.plugins.btrfs import state, subvol
from stowkit.plugins.btrfs.layout import Layout, is_name
from stowkit.plugins.btrfs.options import OPTIONS
from stowkit.plugins.btrfs.replication import Replication
from stowkit.plugins.btrfs.snapshots import Snapshots

__all__ = ["BtrfsVolumeDriver"]

COMPRESSIONS = ("none", "zstd", "lzo", "zlib")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool_option(key: str, value: object) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidArgument(f"invalid volume option {key}={value!r}: use true or false")


# Hidden temporary subvolumes in volumes/ are named ``.KIND-NAME-RANDOM``.
#: A temporary without a lock file (made by a stowkit that kept none) is only
#: deleted once it is this old, so a create still running in such a process is spared.
UNLOCKED_TEMP_AGE = 600.0
_TEMP = re.compile(r"\.(new|restore)-(.+)-[0-9a-f]{12}")


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
        self.layout = Layout(self.opts)
        self.root = self.layout.root
        self.volumes_dir = self.layout.volumes_dir
        self.snapshots_dir = self.layout.snapshots_dir
        self.received_dir = self.layout.received_dir
        #: other tools' snapshot-name formats read besides stowkit's own
        formats = tuple(f for f in (self.opts.foreign_time_formats or ()) if f)
        self.snapshots = Snapshots(self.layout, formats)
        self.replication = Replication(self.layout, self.snapshots, self.opts)
        #: what the last scan of volumes/ found, per (name, d_ino); see _scan_volumes
        self._scan: dict[tuple[str, int], tuple[str, str, dt.datetime | None]] = {}
        # Mount IDs are recorded per boot (plugins/btrfs/state.py); a driver never outlives one.
        self._boot = state.boot_id()

    def _dir(self, *parts: str) -> str:
        return self.layout.dir(*parts)

    def _volume_path(self, name: str) -> str:
        return self.layout.volume_path(name)

    def _existing_volume(self, name: str) -> str:
        path = self._volume_path(name)
        self.layout.setup()
        if not subvol.is_subvolume(path):
            raise NotFound(f"no such volume: {name}")
        return path

    def volume_lock(
        self, name: str, *, wait: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        return self.layout.volume_lock(name, wait=wait)

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
        self.layout.setup()
        if os.path.lexists(path):
            raise AlreadyExists(f"volume {name} already exists")
        now = dt.datetime.now(dt.UTC)
        with self.layout.temporary("new", name) as tmp:
            subvol.create(tmp)
            try:
                if not cow:
                    subvol.set_nocow(tmp)
                if compression != "none":
                    subvol.set_compression(tmp, compression)
                subvol.mark_created(tmp, now)
                with self.layout.state_lock(name):
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

    def _mount_table(self) -> dict[str, list[str]]:
        table = {}
        with os.scandir(self._dir(".mounts")) as it:
            for entry in it:
                if is_name(entry.name):
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
        count = len(self.snapshots.found(name))
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
        self.layout.setup()
        counts = self.snapshots.counts()
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
        self.layout.setup()
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
                if not is_name(entry.name):
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
        self.layout.setup()
        # The lock before the existence check: a Mount waiting on it then sees
        # the volume gone instead of recording an ID for a deleted volume.
        with self.layout.state_lock(name):
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
        self.layout.setup()
        # Checked under the lock Remove holds while it deletes: a volume removed
        # meanwhile is NotFound here, never a mountpoint with a stale record.
        with self.layout.state_lock(name):
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
        self.layout.setup()
        with self.layout.state_lock(name):
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
        self.layout.setup()
        return state.read_mounts(self._dir(".mounts", name), self._boot)

    def clear_mounts(self, name: str) -> list[str]:
        self._volume_path(name)  # checks the name first
        self.layout.setup()
        # As Mount and Remove: the lock, then the existence check.
        with self.layout.state_lock(name):
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
        self.layout.setup()
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
                if kind == "new" or not is_name(volume):
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
        with self.layout.state_lock(volume):
            subvol.rename(path, self._detached_path(volume), subvol.RENAME_NOREPLACE)
            if self.mounts(volume):
                return f"kept in .detached/ until {volume} is unmounted"
            made = self._settle_detached(volume)
            return f"kept as snapshot {', '.join(sorted(made))}"

    def _settle_detached(self, name: str) -> list[str]:
        """Turn trees a forced restore swapped out into snapshots once nobody uses them.

        Returns the names of the snapshots made.
        """
        with os.scandir(self._dir(".detached")) as it:
            mine = sorted(e.path for e in it if e.name.partition(SNAPSHOT_SEPARATOR)[0] == name)
        made = []
        for path in mine:
            # A read-only subvolume cannot change directory, so snapshot it instead.
            keep = self.layout.free_snapshot_path(name)
            subvol.snapshot(path, keep, read_only=True)
            subvol.delete(path)
            made.append(os.path.basename(keep))
        return made

    # -- snapshots (plugins/btrfs/snapshots.py) ------------------------------------------

    def create_snapshot(self, volume: str) -> Snapshot:
        return self.snapshots.create(volume, self._existing_volume(volume))

    def get_snapshot(self, name: str) -> Snapshot:
        return self.snapshots.snapshot(self.snapshots.path(name))

    def list_snapshots(self, volume: str | None = None) -> Sequence[Snapshot]:
        return self.snapshots.list(volume)

    def delete_snapshot(self, name: str) -> None:
        self.snapshots.delete(name)

    def snapshot_entries(self, volume: str | None = None) -> Sequence[str]:
        return self.snapshots.entries(volume)

    def volume_status(self, name: str) -> VolumeStatus:
        self._existing_volume(name)
        found = self.snapshots.found(name)
        replication = {}
        for peer, record in sorted(self.sent(name).items()):
            entry = {"snapshot": record.get("snapshot", "")}
            if record.get("at"):
                entry["at"] = record["at"]
            replication[peer] = entry
        return VolumeStatus(
            snapshot_count=len(found),
            newest_snapshot=found[-1].name if found else None,
            replication=replication,
            mount_count=len(self.mounts(name)),
        )

    def restore(self, name: str, target: str | None = None, force: bool = False) -> RestoreResult:
        if target is not None:
            check_name(target, "target volume name")
        if isinstance(name, str) and SNAPSHOT_SEPARATOR in name:
            source = self.snapshots.path(name)
        else:
            source = self.snapshots.newest_path(name)
        snap = os.path.basename(source)
        volume = self.snapshots.split_name(snap)[0]
        target = check_name(target if target is not None else volume, "target volume name")
        dst = self._volume_path(target)
        with self.layout.state_lock(target), self.layout.temporary("restore", target) as fresh:
            if not subvol.is_subvolume(dst):
                if os.path.lexists(dst):
                    raise Conflict(f"{dst} exists and is not a volume; refusing to touch it")
                self._put_in_place(source, fresh, dst, subvol.RENAME_NOREPLACE)
                return RestoreResult(volume=target, snapshot=snap, backup=None)
            users = self.mounts(target)
            if users and not force:
                raise Conflict(
                    f"volume {target} is mounted ({len(users)} mount(s)); stop its "
                    "containers or use --force"
                )
            backup = self.create_snapshot(target).name
            # One atomic swap: the volume's path now holds the restored tree and
            # ``fresh`` the old one; nothing is ever missing at ``dst``.
            self._put_in_place(source, fresh, dst, subvol.RENAME_EXCHANGE)
            if users:
                # A container still has the old tree bind-mounted: keep it alive
                # and writable; the last unmount turns it into a snapshot.
                subvol.rename(fresh, self._detached_path(target), subvol.RENAME_NOREPLACE)
            else:
                subvol.delete(fresh)
            return RestoreResult(volume=target, snapshot=snap, backup=backup)

    @staticmethod
    def _put_in_place(source: str, fresh: str, dst: str, flags: int) -> None:
        """A writable snapshot of ``source`` made at ``fresh`` and renamed onto ``dst``.

        ``flags``: RENAME_NOREPLACE, or RENAME_EXCHANGE (then ``fresh`` holds
        what ``dst`` held).  Nothing is left at ``fresh`` if the rename fails.
        """
        subvol.snapshot(source, fresh, read_only=False)
        try:
            # A snapshot carries its source's record: date the new volume.
            subvol.mark_created(fresh, dt.datetime.now(dt.UTC))
            subvol.rename(fresh, dst, flags)
        except BaseException:
            subvol.delete(fresh)
            raise

    def _detached_path(self, volume: str) -> str:
        """Where a tree swapped out of ``volume`` waits in .detached/ (named as its snapshot)."""
        return self._dir(".detached", os.path.basename(self.layout.free_snapshot_path(volume)))

    # -- replication (plugins/btrfs/replication.py) ---------------------------------------

    def sent(self, volume: str) -> dict[str, dict[str, str]]:
        """{peer: {"snapshot", "uuid", "at"}}: the last snapshot sent to each peer
        (buttervolume's sent markers count too, see Replication.sent)."""
        return self.replication.sent(volume)

    def send_snapshot(
        self, name: str, host: str, *, compress: bool | None = None, bwlimit: int | None = None
    ) -> SendResult:
        return self.replication.send(name, host, compress, bwlimit)

    def receive_snapshot(
        self,
        name: str,
        host: str,
        *,
        compress: bool | None = None,
        bwlimit: int | None = None,
        dry_run: bool = False,
    ) -> SendResult:
        return self.replication.receive(name, host, compress, bwlimit, dry_run)

    def sync_volume(self, volume: str, hosts: Sequence[str]) -> SyncResult:
        check_name(volume, "volume name")
        peers = self.replication.peers(hosts)
        path = self._existing_volume(volume)
        backup = self.create_snapshot(volume).name
        return self.replication.sync(volume, path, peers, backup)

    # -- retention (plugins/btrfs/snapshots.py) -------------------------------------------

    def purge(
        self, volume: str, pattern: str, dry_run: bool = False, now: dt.datetime | None = None
    ) -> PurgeResult:
        return self.snapshots.purge(volume, pattern, dry_run, now, self.replication.sent)
