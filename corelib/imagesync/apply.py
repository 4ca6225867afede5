"""Carry out a region's plan: obsolete renames, metadata, uploads, AMI fix-ups.

GlanceSync's order is kept: obsolete images first, then metadata of images
whose content is right, then uploads/replacements/renames smallest first (a
kernel and ramdisk are always smaller than the image that needs them), and
last the kernel_id/ramdisk_id of images that waited for those uploads.

Bytes stream from the master region's store straight into the target
region's (``images_dir`` is read instead when it holds the file), hashed on
the way; a copy counts only when its size, md5 and sha512 match the master.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from stowkit.corelib.errors import BackendUnavailable, StowkitError
from stowkit.corelib.image import ChunkReader, Image, ImageCapability, ImageStore
from stowkit.corelib.imagesync import plan as P
from stowkit.corelib.imagesync.config import Target
from stowkit.corelib.imagesync.select import MasterImages

LOG = logging.getLogger("stowkit.imagesync")
CHUNK = 1 << 20


@dataclasses.dataclass
class Done:
    """One change carried out (or, in a dry run, that would be)."""

    action: str  # obsolete | metadata | upload | replace | rename | ami
    image: str
    size: int = 0
    detail: str = ""


class VerificationError(BackendUnavailable):
    """A copy's size or checksums differ from the master's."""


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def copy_image(
    source: ImageStore,
    source_region: str,
    image: Image,
    dest: ImageStore,
    dest_region: str,
    *,
    properties: dict[str, str],
    kernel_id: str | None,
    ramdisk_id: str | None,
    images_dir: str | None = None,
) -> Image:
    """Stream ``image`` into ``dest_region`` and verify the copy; return the new image."""
    local = os.path.join(images_dir, image.id) if images_dir else None
    if local and os.path.isfile(local):
        chunks: Any = _file_chunks(local)
    else:
        chunks = source.read_image(source_region, image.id)
    # When the destination reports the hashes of what it stored, those are the
    # ones to check (they cover the bytes that landed); hashing here as well
    # would only spend CPU the two Glance servers need.  Otherwise hash in transit.
    trust_store = dest.supports(ImageCapability.REPORTS_HASHES)
    hashers = () if trust_store else (hashlib.md5(usedforsecurity=False), hashlib.sha512())
    reader = ChunkReader(chunks, hashers)
    created = dest.create_image(
        dest_region,
        image.name,
        reader,
        visibility=image.visibility,
        properties=properties,
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
        disk_format=image.disk_format,
        container_format=image.container_format,
        size=image.size,
    )
    if trust_store:
        size, md5, sha512 = created.size, created.checksum, created.os_hash_value
    else:
        size, md5, sha512 = reader.bytes_read, hashers[0].hexdigest(), hashers[1].hexdigest()
    problems = []
    if reader.bytes_read != size:
        problems.append(f"sent {reader.bytes_read} bytes, the region stored {size}")
    if image.size is not None and size != image.size:
        problems.append(f"size {size} differs from the master's {image.size}")
    if image.checksum and md5 != image.checksum:
        problems.append(f"md5 {md5} differs from the master's")
    if image.os_hash_value and sha512 != image.os_hash_value:
        problems.append("sha512 differs from the master's")
    if trust_store and not (md5 and sha512):
        problems.append("the region reported no checksum for the copy")
    if problems:
        try:
            dest.delete_image(dest_region, created.id)
        except StowkitError:
            LOG.warning("%s: could not delete bad copy %s", dest_region, created.id)
        raise VerificationError(
            f"copy of {image.name} to {dest_region} failed verification: " + "; ".join(problems)
        )
    return created


def apply_plan(
    plan: P.RegionPlan,
    master: MasterImages,
    target: Target,
    master_store: ImageStore,
    master_region: str,
    store: ImageStore,
    *,
    dry_run: bool = False,
    images_dir: str | None = None,
    progress: Callable[[str, Done], None] | None = None,
) -> list[Done]:
    """Execute ``plan`` against ``store``; returns what was (or would be) done."""
    done: list[Done] = []
    region = plan.store_region
    by_name = dict(plan.region_by_name)

    def record(item: Done) -> None:
        done.append(item)
        if progress:
            progress(plan.region, item)

    for change in plan.obsolete:
        if not dry_run:
            store.update_image(
                region,
                change.image.id,
                name=change.new_name if change.new_name != change.image.name else None,
                visibility=change.visibility,
                set_properties=change.set_properties or None,
            )
        record(Done("obsolete", change.new_name, detail=f"from {change.image.name}"))

    def update_metadata(status: str, kind: str) -> None:
        for entry in plan.entries:
            if entry.status != status:
                continue
            assert entry.region_image is not None
            changes = P.metadata_update(master, entry.master, entry.region_image, by_name, target)
            if changes and not dry_run:
                by_name[entry.master.name] = store.update_image(
                    region, entry.region_image.id, **changes
                )
            record(Done(kind, entry.master.name, detail=", ".join(sorted(changes))))

    update_metadata(P.PENDING_METADATA, "metadata")

    for entry in plan.entries:
        if entry.status not in P.UPLOADING:
            continue
        image = entry.master
        kind = {P.PENDING_UPLOAD: "upload", P.PENDING_REPLACE: "replace"}.get(
            entry.status, "rename"
        )
        if dry_run:
            record(Done(kind, image.name, image.size or 0))
            continue
        props = master.props[image.name]
        kernel = P.ami_target_id(props, "kernel_id", by_name)
        ramdisk = P.ami_target_id(props, "ramdisk_id", by_name)
        for prop, value in (("kernel_id", kernel), ("ramdisk_id", ramdisk)):
            if prop in props and not value:
                LOG.warning("%s: %s %s of %s not found", plan.region, prop, props[prop], image.name)
        created = copy_image(
            master_store,
            master_region,
            image,
            store,
            region,
            properties=P.upload_properties(master, image, target),
            kernel_id=kernel,
            ramdisk_id=ramdisk,
            images_dir=images_dir,
        )
        by_name[image.name] = created
        old = entry.region_image
        if entry.status == P.PENDING_REPLACE and old is not None:
            store.delete_image(region, old.id)
        elif entry.status == P.PENDING_RENAME and old is not None:
            store.update_image(region, old.id, name=old.name + ".old", visibility="private")
        record(Done(kind, image.name, image.size or 0))

    # After the uploads: the kernel and ramdisk ids they point at exist now.
    update_metadata(P.PENDING_AMI, "ami")
    return done
