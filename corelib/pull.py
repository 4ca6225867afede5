"""``volume pull``: bring here the newest copy of a volume the backup catalog knows of.

1. **Which copy.**  The catalog's backup documents of the volume
   (``container`` = the volume, a stowkit volume action, a ``backup_name``
   that is one of the volume's snapshots) each say a snapshot lives on
   ``hostname``, and a replication's also on its ``remote_host``.  The
   newest ``time_stamp`` on another host (or on the one ``--from`` names)
   wins; ties go to the document recorded last, then to the sender.  The
   catalog is a record, the peers are the truth: a copy its host no longer
   holds (purged since) or a host that cannot be reached is passed over,
   said in the result, and the next newest copy is tried (at most
   ``MAX_TRIES``).  A dead host's volume is pulled from wherever it was
   replicated to, without ``--from``.
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

No backend is imported: the driver and the catalog client (its ``search_backups``
and ``add_backup``) are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, NotFound
from stowkit.corelib.names import check_host, check_name
from stowkit.corelib.volume import SNAPSHOT_SEPARATOR, SendResult, VolumeDriver
from stowkit.corelib.volumejobs import FREEZER_NAMES, VolumeAction

if TYPE_CHECKING:
    from stowkit.corelib.catalogclient import CatalogClient

PULL_ACTION = VolumeAction.PULL.freezer_name
#: The agent's actions whose documents name a snapshot that lives on ``hostname``.
VOLUME_ACTIONS = FREEZER_NAMES - {VolumeAction.PURGE.freezer_name}
REPLICATE_ACTION = VolumeAction.REPLICATE.freezer_name
#: Copies tried before a pull gives up: each is one ssh listing of its host.
MAX_TRIES = 8


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
    #: newer copies the catalog records that could not be had, one line each
    passed_over: tuple[str, ...] = ()


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = doc.get("backup_metadata")
    return meta if isinstance(meta, Mapping) else doc


def _recorded(backups: Sequence[Mapping[str, Any]], volume: str) -> list[tuple[Copy, int, int]]:
    """``(copy, document's index, 1 for the document's own host / 0 for a replica)``."""
    found = []
    for index, doc in enumerate(backups):
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
        level = level if isinstance(level, int) else 0
        found.append((Copy(host, name, stamp, level), index, 1))
        peer = meta.get("remote_host")
        if meta.get("action") == REPLICATE_ACTION and isinstance(peer, str) and peer:
            found.append((Copy(peer, name, stamp, level), index, 0))
    return found


def copies(backups: Sequence[Mapping[str, Any]], volume: str) -> list[Copy]:
    """The volume's copies the documents record, in the order they were recorded.

    A replication records two: the sender's snapshot, then the receiver's.
    """
    return [copy for copy, _, _ in _recorded(backups, volume)]


def candidates(
    backups: Sequence[Mapping[str, Any]], volume: str, here: str, source: str | None = None
) -> list[Copy]:
    """Copies on another host than ``here`` (on ``source`` when given), best first.

    Newest first; among equals the document recorded last, and a
    replication's sender before its receiver.  ``NotFound`` when there is none.
    """
    found = [
        entry
        for entry in _recorded(backups, volume)
        if (entry[0].host == source if source is not None else entry[0].host != here)
    ]
    if not found:
        where = f"on {source}" if source is not None else f"on another host than {here}"
        raise NotFound(f"the catalog records no copy of volume {volume} {where}")
    found.sort(key=lambda e: (e[0].time_stamp, e[1], e[2]), reverse=True)
    # A copy several documents record is tried once, at its best place.
    best: dict[tuple[str, str], Copy] = {}
    for copy, _, _ in found:
        best.setdefault((copy.host, copy.snapshot), copy)
    return list(best.values())


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
    catalog: CatalogClient,
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
    ranked = candidates(backups, volume, here, source)
    # Refuse before moving any byte.  With force, restore replaces the volume
    # as `snapshot restore --force` does (a mounted one included).
    if not force and _exists(driver, volume):
        users = driver.mounts(volume)
        mounted = f", mounted ({len(users)} mount(s))" if users else ""
        raise AlreadyExists(
            f"volume {volume} exists here{mounted}; --force replaces it "
            "(its data is snapshotted first)"
        )
    copy, sent, passed = _receive_first(driver, volume, ranked, dry_run)
    if dry_run:
        return PullResult(
            volume, copy.host, copy.snapshot, _mode(sent), sent.parent, 0, None, True, None, passed
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
        passed,
    )


def _receive_first(
    driver: VolumeDriver, volume: str, ranked: Sequence[Copy], dry_run: bool
) -> tuple[Copy, SendResult, tuple[str, ...]]:
    """Receive the best copy that can be had; what was passed over, a line each.

    A copy its host no longer holds (``NotFound``: purged since the catalog
    recorded it) is passed over, and so is every copy on a host that cannot
    be reached (``BackendUnavailable``).  Anything else (a different snapshot
    of that name here) stops the pull: trying an older copy would not help.
    """
    passed: list[str] = []
    down: set[str] = set()
    tried = 0
    for copy in ranked:
        if copy.host in down:
            continue
        if tried == MAX_TRIES:
            break
        tried += 1
        try:
            return (
                copy,
                driver.receive_snapshot(copy.snapshot, copy.host, dry_run=dry_run),
                tuple(passed),
            )
        except NotFound as err:
            passed.append(f"{copy.host}: {err}")
        except BackendUnavailable as err:
            down.add(copy.host)
            passed.append(f"{copy.host}: {err}")
    left = f" (gave up after {MAX_TRIES} tries)" if tried == MAX_TRIES else ""
    why = f"no copy of volume {volume} could be had{left}: " + "; ".join(passed)
    # Every host unreachable is an outage (try again later), not a missing copy.
    raise BackendUnavailable(why) if len(down) == tried else NotFound(why)
