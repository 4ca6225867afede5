"""A VolumeDriver in memory, for the front ends (Docker plugin, scheduler, buttervolume)."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading

from stowkit.corelib.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    InvalidArgument,
    Locked,
    NotFound,
)
from stowkit.corelib.names import check_name
from stowkit.corelib.volume import (
    PurgeResult,
    RestoreResult,
    SendResult,
    Snapshot,
    SyncResult,
    Volume,
    VolumeCapability,
    VolumeDriver,
    snapshot_name,
    split_snapshot_name,
)


class FakeDriver(VolumeDriver):
    """A VolumeDriver in memory: enough behaviour for front-end tests.

    Subclassing the real ABC keeps it honest: a method added to the interface
    and not here makes every test that builds one fail.
    """

    capabilities = frozenset({VolumeCapability.COMPRESSION, VolumeCapability.NOCOW})

    def __init__(self, root: str = "/fake") -> None:  # no oslo conf needed
        self.root = root
        self.volumes: dict[str, dict] = {}
        self.snaps: dict[str, Snapshot] = {}
        self.ids: dict[str, set[str]] = {}
        self.calls: list[tuple] = []
        self.unreachable: set[str] = set()
        self.lock = threading.Lock()
        self._tick = 0

    def _now(self) -> dt.datetime:
        # strictly increasing fake time so snapshot names never clash
        self._tick += 1
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self._tick)

    def _need(self, name: str) -> None:
        check_name(name, "volume name")
        if name not in self.volumes:
            raise NotFound(f"volume {name!r} not found")

    def _vol(self, name: str) -> Volume:
        return Volume(
            name=name,
            path=f"{self.root}/volumes/{name}",
            created=self.volumes[name].get("created"),
            snapshot_count=sum(s.volume == name for s in self.snaps.values()),
            mount_count=len(self.ids.get(name, ())),
            options=self.volumes[name]["options"],
        )

    def create_volume(self, name, options=None):
        check_name(name, "volume name")
        with self.lock:
            self.calls.append(("create", name, dict(options or {})))
            for key in options or {}:
                if key not in ("copyonwrite", "compression"):
                    raise InvalidArgument(f"unknown volume option {key!r}")
            if name in self.volumes:
                raise AlreadyExists(f"volume {name!r} already exists")
            self.volumes[name] = {
                "options": dict(options or {}),
                "files": {},
                "created": dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
            }
            return self._vol(name)

    def get_volume(self, name):
        self._need(name)
        return self._vol(name)

    def list_volumes(self):
        return [self._vol(n) for n in sorted(self.volumes)]

    def volume_created(self, name):
        self._need(name)
        return self.volumes[name].get("created")

    def volume_path(self, name):
        self._need(name)
        return f"{self.root}/volumes/{name}"

    def delete_volume(self, name, force=False):
        self._need(name)
        if self.ids.get(name) and not force:
            raise Conflict(f"volume {name!r} is mounted by {len(self.ids[name])} container(s)")
        del self.volumes[name]

    def clone_volume(self, source, target):
        self._need(source)
        check_name(target, "volume name")
        if target in self.volumes:
            raise AlreadyExists(f"volume {target!r} already exists")
        self.volumes[target] = {"options": {}, "files": dict(self.volumes[source]["files"])}
        return self._vol(target)

    def mount(self, name, mount_id):
        self._need(name)
        if not mount_id:
            raise InvalidArgument("empty mount ID")
        self.ids.setdefault(name, set()).add(mount_id)
        return self.volume_path(name)

    def unmount(self, name, mount_id):
        self._need(name)
        self.ids.get(name, set()).discard(mount_id)

    def mounts(self, name):
        self._need(name)
        return sorted(self.ids.get(name, ()))

    def create_snapshot(self, volume):
        with self.lock:
            self._need(volume)
            self.calls.append(("snapshot", volume))
            name = snapshot_name(volume, self._now())
            _, when = split_snapshot_name(name)
            snap = Snapshot(name=name, volume=volume, created=when, path=f"{self.root}/s/{name}")
            self.snaps[name] = snap
            return snap

    def get_snapshot(self, name):
        split_snapshot_name(name)
        if name not in self.snaps:
            raise NotFound(f"snapshot {name!r} not found")
        return self.snaps[name]

    def list_snapshots(self, volume=None):
        if volume is not None:
            check_name(volume, "volume name")
        return sorted(
            (s for s in self.snaps.values() if volume in (None, s.volume)), key=lambda s: s.name
        )

    def delete_snapshot(self, name):
        self.get_snapshot(name)
        del self.snaps[name]

    def restore(self, name, target=None, force=False):
        if "@" in name:
            snap = self.get_snapshot(name)
        else:
            snaps = self.list_snapshots(name)
            if not snaps:
                raise NotFound(f"volume {name!r} has no snapshot")
            snap = snaps[-1]
        target = target or snap.volume
        check_name(target, "volume name")
        backup = None
        if target in self.volumes:
            if self.ids.get(target) and not force:
                raise Conflict(f"volume {target!r} is mounted")
            backup = self.create_snapshot(target).name
        self.volumes[target] = {"options": {}, "files": {}}
        return RestoreResult(volume=target, snapshot=snap.name, backup=backup)

    def send_snapshot(self, name, host, *, compress=None, bwlimit=None):
        self.get_snapshot(name)
        with self.lock:
            self.calls.append(("send", name, host))
        if host in self.unreachable:
            raise BackendUnavailable(f"ssh to {host} failed: connection refused")
        return SendResult(snapshot=name, host=host, parent=None)

    def sync_volume(self, volume, hosts):
        self._need(volume)
        backup = self.create_snapshot(volume).name
        with self.lock:
            self.calls.append(("sync", volume, tuple(hosts)))
        peers = {h: ("unreachable" if h in self.unreachable else "ok") for h in hosts}
        return SyncResult(volume=volume, backup=backup, peers=peers)

    def purge(self, volume, pattern, dry_run=False, now=None):
        self._need(volume)
        with self.lock:
            self.calls.append(("purge", volume, pattern, dry_run))
        snaps = [s.name for s in self.list_snapshots(volume)]
        doomed = snaps[:-1]
        if not dry_run:
            for name in doomed:
                del self.snaps[name]
        return PurgeResult(
            volume=volume, pattern=pattern, dry_run=dry_run, deleted=doomed, kept=snaps[-1:]
        )

    @contextlib.contextmanager
    def volume_lock(self, name, *, wait=True):
        # As the interface says: one holder per volume, reentrant in its thread.
        with self.lock:
            lock = self.__dict__.setdefault("volume_locks", {}).setdefault(name, threading.RLock())
        if not lock.acquire(blocking=wait):
            raise Locked(f"volume {name} is busy with another job")
        try:
            yield
        finally:
            lock.release()
