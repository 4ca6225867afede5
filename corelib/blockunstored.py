"""What a writer of a device could not store: the record, and where it is kept.

A writer that gives up with data it could not store (its lease was lost, or
the backend stayed down through the shutdown) writes an
:class:`UnstoredRecord`: into the device (control object ``stowkit.unstored``)
only while its lease is still its own, otherwise into this host's state file
(a writer that lost the device must not write into it).  ``blockstore show``
prints the newest (:func:`unstored_records`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from oslo_config import cfg

from stowkit.corelib.errors import BackendUnavailable

if TYPE_CHECKING:
    from stowkit.corelib.blockstore import BlockStore

#: The control object holding the device's record.
UNSTORED_KEY = "stowkit.unstored"


def ranges(indices: Sequence[int]) -> str:
    """'3, 7-9' for [3, 7, 8, 9] (sorted)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclasses.dataclass(frozen=True)
class UnstoredRecord:
    """What a writer of a device could not store, and why.

    Written by a Lease when its holder gives up with data it could not store
    (the lease was lost, or the backend stayed down through the shutdown):
    into the device (control object ``stowkit.unstored``) only while the lease
    is still ours, otherwise into a local state file (a writer that lost the
    device must not write into it).  ``blockstore show`` prints the newest.
    """

    device: str
    objects: tuple[int, ...]
    bytes: int
    at: float  # epoch seconds
    by: str  # the writer: owner, host, pid
    reason: str
    #: Where it was read from: "device", or the local file's path (not stored).
    where: str = ""

    def to_json(self) -> bytes:
        fields = dataclasses.asdict(self)
        fields.pop("where")
        fields["objects"] = ranges(self.objects)
        return json.dumps(fields, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> UnstoredRecord | None:
        try:
            fields = json.loads(data)
            objects: list[int] = []
            for part in str(fields["objects"]).split(","):
                if part.strip():
                    first, _, last = part.strip().partition("-")
                    objects.extend(range(int(first), int(last or first) + 1))
            return cls(
                device=str(fields["device"]),
                objects=tuple(objects),
                bytes=int(fields["bytes"]),
                at=float(fields["at"]),
                by=str(fields["by"]),
                reason=str(fields["reason"]),
                where=where,
            )
        except (ValueError, KeyError, TypeError):
            return None


def local_record_path(store: BlockStore, device: str) -> str | None:
    """The local state file of ``device``'s unstored record; None without a state_dir."""
    try:
        state_dir = store.conf.state_dir
    except (cfg.NoSuchOptError, AttributeError):  # a bare ConfigOpts (tests, embedding)
        return None
    name = f"{store.group}.{store.record_name(device)}.json".replace(os.sep, "_")
    return os.path.join(state_dir, "blockstore-unstored", name)


def unstored_records(store: BlockStore, device: str) -> list[UnstoredRecord]:
    """The records of what writers could not store: the device's, then this host's."""
    found = []
    raw = store._control_get(device, UNSTORED_KEY)
    record = None if raw is None else UnstoredRecord.from_json(raw, "device")
    if record is not None:
        found.append(record)
    path = local_record_path(store, device)
    if path is not None:
        try:
            with open(path, "rb") as f:
                record = UnstoredRecord.from_json(f.read(), path)
        except FileNotFoundError:
            record = None
        if record is not None:
            found.append(record)
    return found


def write_local_record(store: BlockStore, record: UnstoredRecord) -> str:
    """Write ``record`` into this host's state file (atomically); returns its path."""
    path = local_record_path(store, record.device)
    if path is None:
        raise BackendUnavailable(
            f"device {record.device}: nowhere to record what was not stored (no state_dir)"
        )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "wb") as f:
        f.write(record.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return path


def forget_local_record(store: BlockStore, device: str) -> None:
    path = local_record_path(store, device)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


__all__ = [
    "UNSTORED_KEY",
    "UnstoredRecord",
    "forget_local_record",
    "local_record_path",
    "ranges",
    "unstored_records",
    "write_local_record",
]
