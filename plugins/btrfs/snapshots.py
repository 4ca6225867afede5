"""Snapshots of a btrfs root: the one scanner of snapshots/ and received/, and retention.

Every listing, count and lookup of snapshots goes through :meth:`Snapshots.scan`,
which owns what an entry of those directories is: a snapshot ``VOLUME@STAMP``
(STAMP stowkit's or a configured foreign format), buttervolume's sent marker
``VOLUME@STAMP@HOST`` in snapshots/ (a record, not a snapshot), a receive in
progress in received/ (writable until ``btrfs receive`` finishes; skipped), or
anything else (skipped).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from stowkit.corelib import retention
from stowkit.corelib.errors import BackendUnavailable, InvalidName, NotFound
from stowkit.corelib.names import check_name
from stowkit.corelib.volume import (
    SNAPSHOT_SEPARATOR,
    PurgeResult,
    Snapshot,
    split_snapshot_name,
)
from stowkit.plugins.btrfs import subvol
from stowkit.plugins.btrfs.layout import Layout, is_name

#: stowkit's own stamps (SNAPSHOT_TIME_FORMAT), read without strptime: scans are hot.
_OWN_STAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2})-([0-9]{2})-([0-9]{2})\.([0-9]{6})"
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of the snapshot directories that is a snapshot or a sent marker."""

    name: str
    path: str
    volume: str
    #: the snapshot's time (a marker's: the time of the snapshot it records)
    created: dt.datetime
    #: buttervolume's sent marker: the host it records a send to; None for a snapshot
    host: str | None = None
    #: buttervolume's sent marker: the snapshot it records as sent
    marked: str | None = None


class Snapshots:
    """The snapshots in ``layout``'s snapshot directories; ``formats``: foreign stamps read."""

    def __init__(self, layout: Layout, formats: Sequence[str] = ()) -> None:
        self.layout = layout
        self.formats = tuple(formats)

    # -- names -------------------------------------------------------------------------

    def split_name(self, name: object) -> tuple[str, dt.datetime]:
        """``VOLUME@STAMP`` in stowkit's form or a configured foreign one; InvalidName."""
        return split_snapshot_name(name, self.formats)

    def _parse(self, name: str) -> tuple[str, dt.datetime] | None:
        """:meth:`split_name`, or None for a name that is not a snapshot's."""
        volume, _, stamp = name.partition(SNAPSHOT_SEPARATOR)
        own = _OWN_STAMP.fullmatch(stamp)
        if own and is_name(volume):
            with contextlib.suppress(ValueError):  # e.g. month 13: not stowkit's
                return volume, dt.datetime(*map(int, own.groups()), tzinfo=dt.UTC)
        try:
            return self.split_name(name)
        except InvalidName:
            return None

    def marker(self, name: str) -> tuple[str, str, str] | None:
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

    # -- the one scanner ---------------------------------------------------------------

    def scan(
        self, volume: str | None = None, *, markers: bool = False, complete: bool = True
    ) -> Iterator[Entry]:
        """The entries of snapshots/ then received/, in directory order; ``volume``'s only.

        Directory order is the order entries were made (btrfs lists a
        directory by its index).  ``markers`` adds buttervolume's sent
        markers; ``complete`` leaves out receives in progress, at one ioctl
        per entry of received/ (a count of every volume's snapshots skips it).
        """
        self.layout.setup()
        prefix = None if volume is None else volume + SNAPSHOT_SEPARATOR
        for where in self.layout.snapshot_dirs():
            with os.scandir(where) as it:
                for entry in it:
                    if prefix is not None and not entry.name.startswith(prefix):
                        continue
                    found = self._entry(entry.name, entry.path, where, markers, complete)
                    if found is not None and (volume is None or found.volume == volume):
                        yield found

    def _entry(
        self, name: str, path: str, where: str, markers: bool, complete: bool
    ) -> Entry | None:
        parsed = self._parse(name)
        if parsed is None:
            marker = self.marker(name) if markers and where == self.layout.snapshots_dir else None
            if marker is None:
                return None  # a stray file, not a snapshot nor a record
            volume, snapshot, host = marker
            return Entry(name, path, volume, self.split_name(snapshot)[1], host, snapshot)
        if complete and where == self.layout.received_dir and not self.complete(path):
            return None  # a receive in progress
        return Entry(name, path, *parsed)

    def found(self, volume: str) -> list[Entry]:
        """``volume``'s snapshots, local and received, oldest first."""
        return sorted(self.scan(volume), key=lambda e: (e.created, e.path))

    def counts(self) -> collections.Counter[str]:
        """How many snapshots each volume has (receives in progress included: no ioctl)."""
        return collections.Counter(e.volume for e in self.scan(complete=False))

    def markers(self, volume: str) -> list[tuple[str, str, str]]:
        """(host, snapshot, marker path) of ``volume``'s buttervolume sent markers, oldest first."""
        found = [e for e in self.scan(volume, markers=True, complete=False) if e.host]
        found.sort(key=lambda e: (e.created, e.host, e.marked, e.path))
        return [(e.host, e.marked, e.path) for e in found]

    def entries(self, volume: str | None = None) -> list[str]:
        """Names in the snapshot directories as they hold them, markers included."""
        if volume is not None:
            check_name(volume, "volume name")
        return [e.name for e in self.scan(volume, markers=True)]

    # -- one snapshot ------------------------------------------------------------------

    @staticmethod
    def complete(path: str) -> bool:
        """A received subvolume is complete once btrfs receive made it read-only."""
        try:
            return subvol.info(path)["read_only"]
        except (NotFound, BackendUnavailable):
            return False

    def snapshot(self, path: str) -> Snapshot:
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
            received=os.path.dirname(path) == self.layout.received_dir,
        )

    def path(self, name: str) -> str:
        """Where snapshot ``name`` is (snapshots/ first); NotFound."""
        self.split_name(name)
        self.layout.setup()
        for where in self.layout.snapshot_dirs():
            path = os.path.join(where, name)
            if subvol.is_subvolume(path) and (
                where == self.layout.snapshots_dir or self.complete(path)
            ):
                return path
        raise NotFound(f"no such snapshot: {name}")

    def newest_path(self, volume: str) -> str:
        """The path of ``volume``'s newest snapshot (what restore of a volume name means)."""
        check_name(volume, "volume name")
        found = self.found(volume)
        if not found:
            raise NotFound(f"volume {volume} has no snapshot to restore")
        return found[-1].path

    def create(self, volume: str, source: str) -> Snapshot:
        """Read-only snapshot ``VOLUME@now`` of the subvolume at ``source``."""
        path = self.layout.free_snapshot_path(volume)
        subvol.snapshot(source, path, read_only=True)
        return self.snapshot(path)

    def list(self, volume: str | None = None) -> list[Snapshot]:
        if volume is not None:
            check_name(volume, "volume name")
        result = []
        for entry in sorted(self.scan(volume), key=lambda e: (e.created, e.path)):
            try:
                result.append(self.snapshot(entry.path))
            except (NotFound, BackendUnavailable):
                continue  # not a subvolume, or deleted while we looked
        return result

    def delete(self, name: str) -> None:
        if isinstance(name, str) and self.marker(name) is not None:
            # buttervolume's sent marker VOLUME@STAMP@HOST: its ``rm`` deletes those too.
            self.layout.setup()
            path = os.path.join(self.layout.snapshots_dir, name)
            if not subvol.is_subvolume(path):
                raise NotFound(f"no such snapshot: {name}")
        else:
            path = self.path(name)
        subvol.delete(path)

    # -- retention -----------------------------------------------------------------------

    def purge(
        self,
        volume: str,
        pattern: str,
        dry_run: bool,
        now: dt.datetime | None,
        sent: Callable[[str], Mapping[str, Mapping[str, str]]],
    ) -> PurgeResult:
        """VolumeDriver.purge, with ``sent(volume)``: the replication records to protect."""
        check_name(volume, "volume name")
        parsed = retention.parse_pattern(pattern)
        now = now or dt.datetime.now(dt.UTC)
        with self.layout.volume_lock(volume), self.layout.state_lock(volume):
            found = list(self.scan(volume))
            items = [(e.name, e.created) for e in found]
            paths = {e.name: e.path for e in found}
            protect: dict[str, str] = {}
            received = [
                (e.name, e.created)
                for e in found
                if os.path.dirname(e.path) == self.layout.received_dir
            ]
            if received:
                protect[max(received, key=lambda i: (i[1], i[0]))[0]] = "newest received snapshot"
            records = sent(volume)
            for peer, record in sorted(records.items()):
                if record.get("snapshot") in paths:
                    protect[record["snapshot"]] = f"last sent to {peer}"
            # buttervolume's markers are records: all but the newest per host
            # are stale and go, whatever the pattern (buttervolume deletes them
            # at its next send).
            current = {r.get("marker") for r in records.values()}
            stale = [p for _, _, p in self.markers(volume) if os.path.basename(p) not in current]
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
