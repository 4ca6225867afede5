"""The embedded image store: a directory per region under ``[image_local] path``.

Layout::

    PATH/REGION/images.json      {image id: metadata}, rewritten atomically
    PATH/REGION/data/IMAGE_ID    the image's bytes
    PATH/REGION/.lock            flock taken around every index change

A region exists when its directory does; ``create_image`` makes it.  Writes
go to a temporary file renamed into place, so a crash leaves either the old
or the new state, never half an image.  ``load_backups`` turns a directory
of GlanceSync metadata backups (``backup_REGION.csv``) into regions holding
metadata only, as GlanceSync's mock did: good for ``status`` and
``--dry-run`` against a copy of production metadata.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from oslo_config import cfg

from stowkit.corelib.errors import BackendUnavailable, Conflict, InvalidArgument, NotFound
from stowkit.corelib.image import (
    Credentials,
    Image,
    ImageCapability,
    ImageStore,
    Readable,
    check_visibility,
)
from stowkit.corelib.imagesync import report
from stowkit.corelib.names import check_name

LOG = logging.getLogger("stowkit.imagesync")
CHUNK = 1 << 20
INDEX = "images.json"
_IMAGE_FIELDS = frozenset(f.name for f in dataclasses.fields(Image))


class LocalImageStore(ImageStore):
    options = [
        cfg.StrOpt(
            "path",
            default="$state_dir/images",
            help="Directory holding one sub-directory per region.",
        ),
        cfg.StrOpt(
            "tenant_id",
            default="local",
            help="Owner given to images created here; GlanceSync's only_tenant_images "
            "compares against it.",
        ),
    ]
    capabilities = frozenset(
        {
            ImageCapability.SET_OWNER,
            ImageCapability.LOAD_BACKUP,
            ImageCapability.REPORTS_HASHES,
        }
    )

    def __init__(self, conf: cfg.ConfigOpts, group: str) -> None:
        super().__init__(conf, group)
        self.root = os.path.abspath(self.opts.path)

    # -- paths and index -----------------------------------------------------

    def _region_dir(self, region: str, *, create: bool = False) -> str:
        check_name(region, "region name")
        path = os.path.join(self.root, region)
        if create:
            os.makedirs(os.path.join(path, "data"), exist_ok=True)
        elif not os.path.isdir(path):
            raise NotFound(f"unknown region {region!r} (no directory {path})")
        return path

    @staticmethod
    def _data_path(region_dir: str, image_id: str) -> str:
        # Ids come from users and from backup files: the name rule keeps every
        # one of them a single file name inside data/ (no '/', no leading dot).
        return os.path.join(region_dir, "data", check_name(image_id, "image id"))

    @contextlib.contextmanager
    def _locked(self, region_dir: str) -> Iterator[None]:
        with open(os.path.join(region_dir, ".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _read_index(region_dir: str) -> dict[str, dict[str, Any]]:
        try:
            with open(os.path.join(region_dir, INDEX), encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"cannot read {region_dir}/{INDEX}: {exc}") from None

    @staticmethod
    def _write_index(region_dir: str, index: Mapping[str, Any]) -> None:
        path = os.path.join(region_dir, INDEX)
        tmp = f"{path}.tmp{os.getpid()}"
        text = json.dumps(index, separators=(",", ":"))
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @staticmethod
    def _to_image(region: str, record: Mapping[str, Any]) -> Image:
        values = {k: v for k, v in record.items() if k in _IMAGE_FIELDS}
        values["region"] = region
        values["properties"] = dict(values.get("properties") or {})
        return Image(**values)

    @staticmethod
    def _to_record(image: Image, has_data: bool) -> dict[str, Any]:
        # dataclasses.asdict deep-copies; a flat dict of the fields is enough here
        record = {f: getattr(image, f) for f in _IMAGE_FIELDS if f != "region"}
        record["properties"] = dict(image.properties)
        record["has_data"] = has_data
        return record

    # -- ImageStore ------------------------------------------------------------

    def regions(self) -> Sequence[str]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]

    def tenant_id(self) -> str | None:
        return self.opts.tenant_id or None

    def list_images(self, region: str, timeout: float | None = None) -> Sequence[Image]:
        index = self._read_index(self._region_dir(region))
        return [self._to_image(region, rec) for rec in index.values()]

    def get_image(self, region: str, image_id: str) -> Image:
        index = self._read_index(self._region_dir(region))
        if image_id not in index:
            raise NotFound(f"image {image_id} not found in region {region}")
        return self._to_image(region, index[image_id])

    def create_image(
        self,
        region: str,
        name: str,
        data: BinaryIO | Readable | None,
        *,
        visibility: str = "private",
        properties: Mapping[str, str] | None = None,
        kernel_id: str | None = None,
        ramdisk_id: str | None = None,
        disk_format: str | None = None,
        container_format: str | None = None,
        owner: str | None = None,
        size: int | None = None,
    ) -> Image:
        _check_meta(name, visibility, properties)
        region_dir = self._region_dir(region, create=True)
        image_id = str(uuid.uuid4())
        status, written, md5sum, sha = "queued", None, None, None
        if data is not None:
            path = self._data_path(region_dir, image_id)
            tmp = f"{path}.part"
            md5, sha512 = hashlib.md5(usedforsecurity=False), hashlib.sha512()
            written = 0
            try:
                with open(tmp, "wb") as fh:
                    while chunk := data.read(CHUNK):
                        fh.write(chunk)
                        md5.update(chunk)
                        sha512.update(chunk)
                        written += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            status, md5sum, sha = "active", md5.hexdigest(), sha512.hexdigest()
        image = Image(
            id=image_id,
            name=name,
            region=region,
            owner=owner or self.tenant_id(),
            size=written,
            checksum=md5sum,
            os_hash_value=sha,
            status=status,
            visibility=visibility,
            properties=dict(properties or {}),
            kernel_id=kernel_id,
            ramdisk_id=ramdisk_id,
            disk_format=disk_format or "raw",
            container_format=container_format or "bare",
        )
        with self._locked(region_dir):
            index = self._read_index(region_dir)
            index[image_id] = self._to_record(image, data is not None)
            self._write_index(region_dir, index)
        return image

    def update_image(
        self,
        region: str,
        image_id: str,
        *,
        name: str | None = None,
        visibility: str | None = None,
        set_properties: Mapping[str, str] | None = None,
        remove_properties: Iterable[str] = (),
        kernel_id: str | None = None,
        ramdisk_id: str | None = None,
        remove_kernel_id: bool = False,
        remove_ramdisk_id: bool = False,
    ) -> Image:
        _check_meta(name, visibility, set_properties)
        region_dir = self._region_dir(region)
        with self._locked(region_dir):
            index = self._read_index(region_dir)
            record = index.get(image_id)
            if record is None:
                raise NotFound(f"image {image_id} not found in region {region}")
            props = dict(record.get("properties") or {})
            props.update(set_properties or {})
            for key in remove_properties:
                props.pop(key, None)
            record["properties"] = props
            if name is not None:
                record["name"] = name
            if visibility is not None:
                record["visibility"] = visibility
            if kernel_id is not None or remove_kernel_id:
                record["kernel_id"] = kernel_id
            if ramdisk_id is not None or remove_ramdisk_id:
                record["ramdisk_id"] = ramdisk_id
            self._write_index(region_dir, index)
        return self._to_image(region, record)

    def read_image(self, region: str, image_id: str) -> Iterator[bytes]:
        record = self.get_image(region, image_id)  # NotFound before the first chunk
        path = self._data_path(self._region_dir(region), image_id)
        if not os.path.isfile(path):
            raise NotFound(
                f"image {record.name} ({image_id}) in region {region} has no data "
                "(metadata only, e.g. loaded from a backup)"
            )
        return _chunks(path)

    def delete_image(self, region: str, image_id: str) -> None:
        region_dir = self._region_dir(region)
        path = self._data_path(region_dir, image_id)
        with self._locked(region_dir):
            index = self._read_index(region_dir)
            if index.pop(image_id, None) is None:
                raise NotFound(f"image {image_id} not found in region {region}")
            self._write_index(region_dir, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def for_credentials(self, credentials: Credentials | None) -> ImageStore:
        return self

    # -- scenarios -------------------------------------------------------------

    def load_backups(self, directory: str, *, replace: bool = False) -> dict[str, int]:
        """Load every ``backup_REGION.csv`` of ``directory``; region -> image count."""
        files = sorted(glob.glob(os.path.join(directory, "backup_*.csv")))
        if not files:
            raise NotFound(f"no backup_REGION.csv files in {directory}")
        # Every file is read and checked before anything is written: a bad
        # line in the last file must not leave the first ones loaded.
        parsed = []
        sources: dict[str, str] = {}
        for path in files:
            name = os.path.basename(path)[len("backup_") : -len(".csv")]
            target, _, region = name.rpartition(":")
            check_name(region, "region name")
            if region in sources:
                raise Conflict(
                    f"{os.path.basename(path)} and backup_{sources[region]}.csv are both "
                    f"region {region} here: load them from separate directories"
                )
            sources[region] = name
            parsed.append((region, target, report.read_backup(path)))
        if not replace:
            for region, _target, _images in parsed:
                path = os.path.join(self.root, region)
                held = len(self._read_index(path)) if os.path.isdir(path) else 0
                if held:
                    raise Conflict(
                        f"region {region} already holds {held} image(s); "
                        "use --replace to replace its metadata with the backup's"
                    )
        loaded: dict[str, int] = {}
        for region, target, images in parsed:
            if target:
                # The local store has one set of regions: say where it went.
                LOG.warning(
                    "backup_%s:%s.csv loaded as region %s; list it in [%s] regions = "
                    "to synchronise it as %s:%s",
                    target,
                    region,
                    region,
                    target,
                    target,
                    region,
                )
            region_dir = self._region_dir(region, create=True)
            with self._locked(region_dir):
                index: dict[str, Any] = {}
                for image in images:
                    index[image.id] = self._to_record(image.replace(region=region), False)
                self._write_index(region_dir, index)
            loaded[region] = len(images)
        return loaded


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def _check_meta(
    name: str | None, visibility: str | None, properties: Mapping[str, str] | None
) -> None:
    if name is not None and (not name or "\n" in name):
        raise InvalidArgument("image name must be a non-empty single line")
    check_visibility(visibility)
    for key, value in (properties or {}).items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise InvalidArgument(f"invalid property {key!r}: keys and values are strings")
