"""Block devices made of fixed-size objects: BlockDevice and BlockStore."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence

from corelib.driver import Driver


@dataclasses.dataclass(frozen=True)
class BlockDevice:
    name: str
    size: int
    object_size: int
    locked_by: str | None = None

    @property
    def object_count(self) -> int:
        return -(-self.size // self.object_size)


class BlockStore(Driver):
    """A store of devices; each device is a set of objects numbered from 0.

    An object never written (or deleted) reads as zeros.
    """

    @abc.abstractmethod
    def create_device(self, name: str, size: int, object_size: int) -> BlockDevice: ...

    @abc.abstractmethod
    def get_device(self, name: str) -> BlockDevice: ...

    @abc.abstractmethod
    def list_devices(self) -> Sequence[BlockDevice]: ...

    @abc.abstractmethod
    def delete_device(self, name: str) -> None: ...

    @abc.abstractmethod
    def read_object(self, device: str, index: int) -> bytes | None:
        """The object's bytes, or None when it does not exist (all zeros)."""

    @abc.abstractmethod
    def write_object(self, device: str, index: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def delete_object(self, device: str, index: int) -> None: ...

    @abc.abstractmethod
    def list_objects(self, device: str) -> Iterable[int]: ...
