"""Volumes and their snapshots: the data classes and the VolumeDriver interface."""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from corelib.driver import Driver


class VolumeCapability:
    """Names a VolumeDriver may put in ``capabilities``."""

    SNAPSHOT = "snapshot"
    CLONE = "clone"
    RESTORE = "restore"
    SEND = "send"  # incremental replication to another host
    COMPRESSION = "compression"
    NOCOW = "nocow"


@dataclasses.dataclass(frozen=True)
class Volume:
    name: str
    path: str
    created: dt.datetime | None = None
    size: int | None = None
    snapshot_count: int = 0
    mount_count: int = 0
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A read-only point-in-time copy, named ``VOLUME@TIMESTAMP`` (UTC)."""

    name: str
    volume: str
    created: dt.datetime
    path: str
    uuid: str | None = None
    received_uuid: str | None = None
    parent_uuid: str | None = None


class VolumeDriver(Driver):
    """A place holding volumes and snapshots of them."""

    @abc.abstractmethod
    def create_volume(self, name: str, options: Mapping[str, str] | None = None) -> Volume: ...

    @abc.abstractmethod
    def get_volume(self, name: str) -> Volume: ...

    @abc.abstractmethod
    def list_volumes(self) -> Sequence[Volume]: ...

    @abc.abstractmethod
    def delete_volume(self, name: str) -> None: ...

    @abc.abstractmethod
    def create_snapshot(self, volume: str) -> Snapshot: ...

    @abc.abstractmethod
    def list_snapshots(self, volume: str | None = None) -> Sequence[Snapshot]: ...

    @abc.abstractmethod
    def delete_snapshot(self, name: str) -> None: ...
