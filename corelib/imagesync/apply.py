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
    owner: str | None = None,
    observer: Any = None,
) -> Image:
    """Stream ``image`` into ``dest_region`` and verify the copy; return the new image.

    ``owner`` (when set) owns the copy; ``observer.update(bytes)`` sees every byte.
    """
    local = os.path.join(images_dir, image.id) if images_dir else None
    if local and os.path.isfile(local):
        chunks: Any = _file_chunks(local)
    else:
        chunks = source.read_image(source_region, image.id)
    # When the destination reports the hashes of what it stored, those are the
    # ones to check (they cover the bytes that landed); hashing here as well
    # would only spend CPU the two Glance servers need.  Otherwise hash in transit.
    trust_store = dest.supports(ImageCapability.REPORTS_HASHES)
    hashers: tuple[Any, ...] = (
        () if trust_store else (hashlib.md5(usedforsecurity=False), hashlib.sha512())
    )
    reader = ChunkReader(chunks, (*hashers, observer) if observer is not None else hashers)
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
        owner=owner,
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
    master_store: ImageStore,
    master_region: str,
    store: ImageStore,
    *,
    dry_run: bool = False,
    images_dir: str | None = None,
    owner: str | None = None,
    progress: Callable[[str, Done], None] | None = None,
    done: list[Done] | None = None,
    observer: Callable[[Image], Any] | None = None,
) -> list[Done]:
    """Execute ``plan`` against ``store``; returns what was (or would be) done.

    Nothing is decided here: every change, kernel/ramdisk ids included, is in
    the plan.  Each change is appended to ``done`` as soon as it is made, so
    a caller that passes its own list knows what changed when a later step
    raises.  ``owner`` is given to every copy (the target's tenant, when the
    store would otherwise own it itself).  ``observer(image)`` may return an
    object with ``update(bytes)`` that sees every byte of that image's copy.
    """
    done = [] if done is None else done
    region = plan.store_region
    uploaded: dict[str, Image] = {}

    def record(item: Done) -> None:
        done.append(item)
        if progress:
            progress(plan.region, item)

    def real_id(value: Any) -> Any:
        return uploaded[value.name].id if isinstance(value, P.Uploaded) else value

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

    def update_metadata(changes: list[P.MetadataChange]) -> None:
        for change in changes:
            if not dry_run:
                kwargs = {k: real_id(v) for k, v in change.changes.items()}
                store.update_image(region, change.region_image.id, **kwargs)
            record(Done(change.kind, change.image, detail=", ".join(sorted(change.changes))))

    update_metadata(plan.metadata)

    for upload in plan.uploads:
        image = upload.image
        if not dry_run:
            created = copy_image(
                master_store,
                master_region,
                image,
                store,
                region,
                properties=dict(upload.properties),
                kernel_id=real_id(upload.kernel_id),
                ramdisk_id=real_id(upload.ramdisk_id),
                images_dir=images_dir,
                owner=owner,
                observer=observer(image) if observer else None,
            )
            uploaded[image.name] = created
            old = upload.old
            if upload.kind == "replace" and old is not None:
                store.delete_image(region, old.id)
            elif upload.kind == "rename" and old is not None:
                store.update_image(region, old.id, name=old.name + ".old", visibility="private")
        else:
            uploaded[image.name] = image  # a dry run only names the ids
        record(Done(upload.kind, image.name, image.size or 0))

    # After the uploads: the kernel and ramdisk ids they point at exist now.
    update_metadata(plan.ami)
    return done
