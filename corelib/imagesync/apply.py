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
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from stowkit.corelib.errors import BackendUnavailable, StowkitError
from stowkit.corelib.image import ChunkReader, Image, ImageCapability, ImageStore
from stowkit.corelib.imagesync import fanout
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


def source_chunks(
    source: ImageStore, source_region: str, image: Image, images_dir: str | None = None
) -> Iterator[bytes]:
    """The master's bytes: the ``images_dir`` file when it is there, else the store's."""
    local = os.path.join(images_dir, image.id) if images_dir else None
    if local and os.path.isfile(local):
        return _file_chunks(local)
    return iter(source.read_image(source_region, image.id))


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
    return upload_verified(
        source_chunks(source, source_region, image, images_dir),
        image,
        dest,
        dest_region,
        properties=properties,
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
        owner=owner,
        observer=observer,
    )


def upload_verified(
    chunks: Iterable[bytes],
    image: Image,
    dest: ImageStore,
    dest_region: str,
    *,
    properties: dict[str, str],
    kernel_id: str | None,
    ramdisk_id: str | None,
    owner: str | None = None,
    observer: Any = None,
) -> Image:
    """Upload ``chunks`` (the master ``image``'s bytes) to ``dest_region``; verify the copy."""
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


class RegionApply:
    """One region's plan carried out in steps, so uploads can be shared across regions.

    :meth:`start` makes the obsolete and metadata changes; each upload's copy
    is made by the caller (:func:`copy_image`, or a fan-out of one master
    read) with :meth:`upload_arguments`, then :meth:`uploaded` does the
    replace/rename that follows it; :meth:`finish` fixes the AMI ids.
    Every change is appended to ``done`` as soon as it is made.
    """

    def __init__(
        self,
        plan: P.RegionPlan,
        store: ImageStore,
        *,
        dry_run: bool = False,
        owner: str | None = None,
        progress: Callable[[str, Done], None] | None = None,
        done: list[Done] | None = None,
        observer: Callable[[Image], Any] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.region = plan.store_region
        self.dry_run = dry_run
        self.owner = owner
        self.progress = progress
        self.done = [] if done is None else done
        self.observer = observer
        self._uploaded: dict[str, Image] = {}

    def _record(self, item: Done) -> None:
        self.done.append(item)
        if self.progress:
            self.progress(self.plan.region, item)

    def _real_id(self, value: Any) -> Any:
        return self._uploaded[value.name].id if isinstance(value, P.Uploaded) else value

    def _update_metadata(self, changes: list[P.MetadataChange]) -> None:
        for change in changes:
            if not self.dry_run:
                kwargs = {k: self._real_id(v) for k, v in change.changes.items()}
                self.store.update_image(self.region, change.region_image.id, **kwargs)
            self._record(Done(change.kind, change.image, detail=", ".join(sorted(change.changes))))

    def start(self) -> None:
        """Obsolete renames, then metadata updates."""
        for change in self.plan.obsolete:
            if not self.dry_run:
                self.store.update_image(
                    self.region,
                    change.image.id,
                    name=change.new_name if change.new_name != change.image.name else None,
                    visibility=change.visibility,
                    set_properties=change.set_properties or None,
                )
            self._record(Done("obsolete", change.new_name, detail=f"from {change.image.name}"))
        self._update_metadata(self.plan.metadata)

    def upload_arguments(self, upload: P.UploadChange) -> dict[str, Any]:
        """:func:`upload_verified`'s keyword arguments for ``upload`` in this region."""
        image = upload.image
        return {
            "properties": dict(upload.properties),
            "kernel_id": self._real_id(upload.kernel_id),
            "ramdisk_id": self._real_id(upload.ramdisk_id),
            "owner": self.owner,
            "observer": self.observer(image) if self.observer else None,
        }

    def uploaded(self, upload: P.UploadChange, created: Image | None) -> None:
        """``upload``'s copy exists (``created``; None in a dry run): replace or rename."""
        image = upload.image
        if not self.dry_run and created is not None:
            self._uploaded[image.name] = created
            old = upload.old
            if upload.kind == "replace" and old is not None:
                self.store.delete_image(self.region, old.id)
            elif upload.kind == "rename" and old is not None:
                self.store.update_image(
                    self.region, old.id, name=old.name + ".old", visibility="private"
                )
        else:
            self._uploaded[image.name] = image  # a dry run only names the ids
        self._record(Done(upload.kind, image.name, image.size or 0))

    def finish(self) -> None:
        """After the uploads: the kernel and ramdisk ids they point at exist now."""
        self._update_metadata(self.plan.ami)


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
    run = RegionApply(
        plan,
        store,
        dry_run=dry_run,
        owner=owner,
        progress=progress,
        done=done,
        observer=observer,
    )
    run.start()
    for upload in plan.uploads:
        created = None
        if not dry_run:
            created = copy_image(
                master_store,
                master_region,
                upload.image,
                store,
                run.region,
                images_dir=images_dir,
                **run.upload_arguments(upload),
            )
        run.uploaded(upload, created)
    run.finish()
    return run.done


def apply_uploads(
    runs: Mapping[str, RegionApply],
    master_store: ImageStore,
    master_region: str,
    *,
    images_dir: str | None = None,
    queue_chunks: int = fanout.QUEUE_CHUNKS,
    stall_timeout: float = fanout.STALL_TIMEOUT,
) -> dict[str, Exception]:
    """Every run's uploads, each master image read once and fanned out to its regions.

    Images go smallest first (the order of every plan's uploads, so a kernel
    or ramdisk is copied before the image that names it).  A region whose
    copy fails, or stalls past the fan-out's bound, gets no further uploads:
    its error is returned (``key -> error``); the other regions go on.
    """
    failed: dict[str, Exception] = {}
    groups: dict[tuple[int, str, str], list[tuple[str, P.UploadChange]]] = {}
    for key, run in runs.items():
        if run.dry_run:
            raise ValueError("apply_uploads copies bytes: not for a dry run")
        for upload in run.plan.uploads:
            image = upload.image
            groups.setdefault((image.size or 0, image.name, image.id), []).append((key, upload))
    for order in sorted(groups):
        writers = []
        changes: dict[str, P.UploadChange] = {}
        for key, upload in groups[order]:
            if key in failed:
                continue
            run = runs[key]
            try:
                kwargs = run.upload_arguments(upload)
            except Exception as exc:
                failed[key] = exc
                continue
            image = upload.image
            writers.append((key, functools.partial(_fan_writer, image, run, kwargs)))
            changes[key] = upload
        if not writers:
            continue
        image = next(iter(changes.values())).image
        try:
            chunks = source_chunks(master_store, master_region, image, images_dir)
        except Exception as exc:
            failed.update((key, exc) for key in changes)
            continue
        outcomes = fanout.fan_out(
            chunks,
            writers,
            queue_chunks=queue_chunks,
            stall_timeout=stall_timeout,
            discard=lambda key, created: _discard_copy(runs[key], created),
        )
        for key, upload in changes.items():
            outcome = outcomes[key]
            error = outcome.error
            if error is not None and not isinstance(error, Exception):
                raise error
            if error is None:
                try:
                    runs[key].uploaded(upload, outcome.result)
                except Exception as exc:
                    error = exc
            if error is not None:
                failed[key] = error
    return failed


def _fan_writer(
    image: Image, run: RegionApply, kwargs: dict[str, Any], chunks: Iterator[bytes]
) -> Image:
    return upload_verified(chunks, image, run.store, run.region, **kwargs)


def _discard_copy(run: RegionApply, created: Any) -> None:
    """A copy that landed after its region was dropped from the fan-out: remove it."""
    if isinstance(created, Image):
        try:
            run.store.delete_image(run.region, created.id)
        except StowkitError:
            LOG.warning("%s: could not delete abandoned copy %s", run.region, created.id)
