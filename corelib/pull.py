"""``volume pull``: bring here the newest copy of a volume the backup catalog knows of.

1. **Which copy.**  The catalog's backup documents of the volume
   (``container`` = the volume, a stowkit volume action, a ``backup_name``
   that is one of the volume's snapshots) each say a snapshot lives on
   ``hostname``.  The newest ``time_stamp`` on another host (or on the one
   ``--from`` names) wins; ties go to the document recorded last.
2. **The transfer.**  :meth:`VolumeDriver.receive_snapshot`: the peer's
   snapshots are listed over ssh, the parent is the newest snapshot both
   hosts hold (the send rule), the stream is full or incremental.
3. **The volume.**  :meth:`VolumeDriver.restore` of the received snapshot as
   ``VOLUME``, as ``snapshot restore`` does it; a volume already here,
   mounted or not, is refused unless ``force`` (its data is then
   snapshotted first, and a mounted one is replaced as ``restore --force``
   replaces it).
4. **The record.**  A backup document for this host
   (``action`` = ``stowkit-volume-pull``), so the next pull, here or
   elsewhere, sees the copy here too.

No backend is imported: the driver and the catalog are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from stowkit.corelib.errors import AlreadyExists, NotFound
from stowkit.corelib.names import check_host, check_name
from stowkit.corelib.volume import SNAPSHOT_SEPARATOR, SendResult, VolumeDriver

PULL_ACTION = "stowkit-volume-pull"
#: The agent's actions whose documents name a snapshot that lives on ``hostname``.
VOLUME_ACTIONS = frozenset(
    {"stowkit-volume-snapshot", "stowkit-volume-replicate", "stowkit-volume-sync", PULL_ACTION}
)


class BackupSearch(Protocol):
    def search_backups(self, match: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...

    def add_backup(self, meta: Mapping[str, Any]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Copy:
    """One snapshot of the volume on one host, as a backup document records it."""

    host: str
    snapshot: str
    time_stamp: int
    level: int = 0


@dataclasses.dataclass(frozen=True)
class PullResult:
    volume: str
    host: str
    snapshot: str
    mode: str  #: full, incremental, already here (nothing moved)
    parent: str | None
    bytes_received: int
    #: the snapshot taken of the volume's data before it was replaced (None if none was here)
    backup: str | None
    dry_run: bool
    #: the id of the backup document recorded (None on a dry run)
    recorded: str | None


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("backup_metadata")
    return meta if isinstance(meta, Mapping) else doc


def copies(backups: Sequence[Mapping[str, Any]], volume: str) -> list[Copy]:
    """The volume's copies the documents record, in the order they were recorded."""
    found = []
    for doc in backups:
        meta = _meta(doc)
        name, host, stamp = meta.get("backup_name"), meta.get("hostname"), meta.get("time_stamp")
        if meta.get("container") != volume or meta.get("action") not in VOLUME_ACTIONS:
            continue
        if not isinstance(name, str):
            continue
        owner, sep, when = name.partition(SNAPSHOT_SEPARATOR)
        if owner != volume or not sep or not when:
            continue  # not one of the volume's snapshots
        if not isinstance(host, str) or not host or not isinstance(stamp, int):
            continue
        level = meta.get("curr_backup_level")
        found.append(Copy(host, name, stamp, level if isinstance(level, int) else 0))
    return found


def newest_copy(
    backups: Sequence[Mapping[str, Any]], volume: str, here: str, source: str | None = None
) -> Copy:
    """The newest copy on another host than ``here`` (on ``source`` when given).

    ``NotFound`` when the catalog records none.
    """
    found = [
        c
        for c in copies(backups, volume)
        if (c.host == source if source is not None else c.host != here)
    ]
    if not found:
        where = f"on {source}" if source is not None else f"on another host than {here}"
        raise NotFound(f"the catalog records no copy of volume {volume} {where}")
    # max() keeps the first of equals: reversed, so the last recorded wins a tie.
    return max(reversed(found), key=lambda c: c.time_stamp)


def _exists(driver: VolumeDriver, volume: str) -> bool:
    try:
        driver.volume_path(volume)
    except NotFound:
        return False
    return True


def _mode(sent: SendResult) -> str:
    if sent.already_there:
        return "already here"
    return "incremental" if sent.parent else "full"


def pull(
    driver: VolumeDriver,
    catalog: BackupSearch,
    volume: str,
    here: str,
    source: str | None = None,
    dry_run: bool = False,
    force: bool = False,
) -> PullResult:
    """Find, receive, restore as ``volume``, record.  See the module's text."""
    check_name(volume, "volume name")
    if source is not None:
        check_host(source)
    backups = catalog.search_backups([{"container": volume}])
    copy = newest_copy(backups, volume, here, source)
    # Refuse before moving any byte.  With force, restore replaces the volume
    # as `snapshot restore --force` does (a mounted one included).
    if not force and _exists(driver, volume):
        users = driver.mounts(volume)
        mounted = f", mounted ({len(users)} mount(s))" if users else ""
        raise AlreadyExists(
            f"volume {volume} exists here{mounted}; --force replaces it "
            "(its data is snapshotted first)"
        )
    sent = driver.receive_snapshot(copy.snapshot, copy.host, dry_run=dry_run)
    if dry_run:
        return PullResult(
            volume, copy.host, copy.snapshot, _mode(sent), sent.parent, 0, None, True, None
        )
    restored = driver.restore(sent.snapshot, target=volume, force=force)
    snap = driver.get_snapshot(sent.snapshot)
    level = 0
    if sent.parent:
        known = [c.level for c in copies(backups, volume) if c.snapshot == sent.parent]
        level = 1 + max(known, default=0)
    meta = {
        "action": PULL_ACTION,
        "container": volume,
        "hostname": here,
        "backup_name": snap.name,
        "time_stamp": int(snap.created.timestamp()),
        "curr_backup_level": level,
        "level": level,
        "mode": "fs",
        "backup_media": "fs",
        "storage": "ssh",
        "client_os": "linux",
        "engine_name": "btrfs-send",
        "remote_host": copy.host,
        "parent": sent.parent or "",
        "snapshot": snap.name,
        "snapshot_path": snap.path,
        "backup_size_compressed": sent.bytes_sent,
        "path_to_backup": driver.volume_path(volume),
    }
    recorded = catalog.add_backup(meta)
    return PullResult(
        volume,
        copy.host,
        snap.name,
        _mode(sent),
        sent.parent,
        sent.bytes_sent,
        restored.backup,
        False,
        recorded,
    )
