"""Images of a region: the Image data class and the ImageStore interface."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO

from corelib.driver import Driver


@dataclasses.dataclass(frozen=True)
class Image:
    id: str
    name: str
    region: str
    owner: str | None = None
    size: int | None = None
    checksum: str | None = None  # md5, as Glance reports it
    os_hash_value: str | None = None  # sha512 multihash
    status: str = "active"
    visibility: str = "private"
    properties: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kernel_id: str | None = None
    ramdisk_id: str | None = None

    @property
    def is_public(self) -> bool:
        return self.visibility == "public"


class ImageStore(Driver):
    """Images in one or more regions."""

    @abc.abstractmethod
    def regions(self) -> Sequence[str]: ...

    @abc.abstractmethod
    def list_images(self, region: str) -> Sequence[Image]: ...

    @abc.abstractmethod
    def get_image(self, region: str, image_id: str) -> Image: ...

    @abc.abstractmethod
    def create_image(self, region: str, name: str, data: BinaryIO, **meta: object) -> Image: ...

    @abc.abstractmethod
    def read_image(self, region: str, image_id: str) -> Iterator[bytes]: ...

    @abc.abstractmethod
    def delete_image(self, region: str, image_id: str) -> None: ...
