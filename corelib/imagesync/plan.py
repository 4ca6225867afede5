"""The synchronisation plan of one region: statuses and the changes they imply.

Statuses are GlanceSync's (see :data:`STATUSES`); the plan keeps, for every
image to sync, its status and the region image it concerns, plus the
obsolete-image changes, so :mod:`stowkit.corelib.imagesync.apply` only executes and
``--dry-run`` only prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

from stowkit.corelib.image import Image
from stowkit.corelib.imagesync.config import Target
from stowkit.corelib.imagesync.select import (
    AMI_PROPERTIES,
    OBSOLETE_SUFFIX,
    MasterImages,
    images_to_sync,
    is_synchronisable,
    region_images_by_name,
    same_owner,
)

OK = "ok"
OK_STALLED_CHECKSUM = "ok_stalled_checksum"
ERROR_CHECKSUM = "error_checksum"
ERROR_AMI = "error_ami"
PENDING_METADATA = "pending_metadata"
PENDING_UPLOAD = "pending_upload"
PENDING_REPLACE = "pending_replace"
PENDING_RENAME = "pending_rename"
PENDING_AMI = "pending_ami"

STATUSES: dict[str, str] = {
    OK: "the image is synchronised",
    OK_STALLED_CHECKSUM: "the content differs from the master but its checksum is in dontupdate",
    ERROR_CHECKSUM: "the content differs and neither dontupdate, replace nor rename covers it",
    ERROR_AMI: "its kernel or ramdisk is not among the images to synchronise",
    PENDING_METADATA: "the content is right; visibility, properties or kernel/ramdisk ids differ",
    PENDING_UPLOAD: "the image is missing in the region",
    PENDING_REPLACE: "the content differs; the region's image will be replaced",
    PENDING_RENAME: "the content differs; the region's image will be renamed NAME.old, "
    "made private, and a new copy uploaded",
    PENDING_AMI: "its kernel or ramdisk is still to be uploaded; ids are fixed after upload",
}
UPLOADING = frozenset({PENDING_UPLOAD, PENDING_REPLACE, PENDING_RENAME})


class Entry(NamedTuple):
    """One image to sync and its status (a tuple: thousands are made per plan)."""

    status: str
    master: Image
    region_image: Image | None = None


@dataclasses.dataclass(frozen=True)
class ObsoleteChange:
    """Rename an image to NAME_obsolete and/or sync its visibility and obsolete_syncprops."""

    image: Image
    master: Image
    new_name: str
    visibility: str | None
    set_properties: Mapping[str, str]


class Uploaded(NamedTuple):
    """A kernel/ramdisk id unknown when planning: that of the copy of ``name`` this plan uploads."""

    name: str


#: a region's kernel_id/ramdisk_id value as planned
AmiId = str | Uploaded


@dataclasses.dataclass(frozen=True)
class MetadataChange:
    """``update_image(region_image.id, **changes)``; kernel/ramdisk ids may be :class:`Uploaded`."""

    kind: str  # metadata | ami
    image: str  # the master image's name
    region_image: Image
    changes: Mapping[str, object]


@dataclasses.dataclass(frozen=True)
class UploadChange:
    """Copy a master image into the region, then delete or rename the old one."""

    kind: str  # upload | replace | rename
    image: Image  # the master's
    properties: Mapping[str, str]
    kernel_id: AmiId | None
    ramdisk_id: AmiId | None
    old: Image | None = None  # the region image replaced or renamed


@dataclasses.dataclass
class RegionPlan:
    """Everything a region needs, resolved: apply executes the change lists in order.

    ``obsolete``, then ``metadata``, then ``uploads`` (smallest first), then
    ``ami`` (kernel/ramdisk ids that point at copies the uploads made).
    """

    region: str  # full name, target:region
    target: str
    store_region: str
    entries: list[Entry]
    obsolete: list[ObsoleteChange]
    region_by_name: dict[str, Image]
    warnings: list[str]
    metadata: list[MetadataChange] = dataclasses.field(default_factory=list)
    uploads: list[UploadChange] = dataclasses.field(default_factory=list)
    ami: list[MetadataChange] = dataclasses.field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.obsolete) + len(self.metadata) + len(self.uploads) + len(self.ami)

    def count(self, *statuses: str) -> int:
        return sum(1 for e in self.entries if e.status in statuses)

    @property
    def pending(self) -> bool:
        return bool(self.obsolete) or any(e.status.startswith("pending") for e in self.entries)

    @property
    def bytes_to_upload(self) -> int:
        return sum(e.master.size or 0 for e in self.entries if e.status in UPLOADING)


def _metadata_differs(
    master: Image, master_props: Mapping[str, str], region: Image, target: Target
) -> bool:
    """GlanceSync's comparison: visibility, then metadata_set (or every property).

    kernel_id/ramdisk_id values differ by region by design: only their
    presence is compared here (their values are :func:`ami_state`'s job).
    """
    if master.is_public != region.is_public:
        return True
    region_props = region.properties
    if bool(region.kernel_id) != ("kernel_id" in master_props) or bool(region.ramdisk_id) != (
        "ramdisk_id" in master_props
    ):
        return True
    if target.metadata_set:
        for prop in target.metadata_set:
            if prop not in AMI_PROPERTIES and master_props.get(prop) != region_props.get(prop):
                return True
        return False
    own = sum(1 for p in region_props if p not in AMI_PROPERTIES)
    master_own = sum(1 for p in master_props if p not in AMI_PROPERTIES)
    if own != master_own:
        return True
    for prop, value in region_props.items():
        if prop not in AMI_PROPERTIES and master_props.get(prop) != value:
            return True
    return False


def ami_state(
    master_props: Mapping[str, str],
    region: Image,
    region_by_name: Mapping[str, Image],
    pending: set[str],
) -> str:
    """ready | update | pending | missing, combined over kernel_id and ramdisk_id."""
    if not (region.kernel_id or region.ramdisk_id) and not (
        "kernel_id" in master_props or "ramdisk_id" in master_props
    ):
        return "ready"  # the common case: not an AMI image at all
    states = []
    region_props = region.user_properties()
    for prop in AMI_PROPERTIES:
        if prop not in master_props:
            states.append("update" if prop in region_props else "ready")
            continue
        aux_name = master_props[prop]
        aux = region_by_name.get(aux_name)
        if aux is None:
            states.append("pending" if aux_name in pending else "missing")
        elif region_props.get(prop) == aux.id:
            states.append("ready")
        else:
            states.append("update")
    if states[0] == states[1]:
        return states[0]
    for worst in ("missing", "pending"):
        if worst in states:
            return worst
    return "update"


def entries_for_region(
    master: MasterImages,
    to_sync: Mapping[str, Image],
    region_by_name: dict[str, Image],
    target: Target,
) -> list[Entry]:
    """One Entry per image to sync, smallest first (kernels and ramdisks go first)."""
    entries: list[Entry] = []
    pending: set[str] = set()
    for image in to_sync.values():  # images_to_sync() orders them smallest first
        region = region_by_name.get(image.name)
        if region is None:
            entries.append(Entry(PENDING_UPLOAD, image))
            pending.add(image.name)
            continue
        props = master.props[image.name]
        if region.checksum != image.checksum:
            checksum = region.checksum
            if checksum in target.dontupdate:
                entries.append(Entry(OK_STALLED_CHECKSUM, image, region))
                continue
            if checksum in target.replace:
                status = PENDING_REPLACE
            elif checksum in target.rename or "any" in target.rename:
                status = PENDING_RENAME
            elif "any" in target.replace:
                status = PENDING_REPLACE
            else:
                entries.append(Entry(ERROR_CHECKSUM, image, region))
                continue
            entries.append(Entry(status, image, region))
            del region_by_name[image.name]
            pending.add(image.name)
            continue
        differs = _metadata_differs(image, props, region, target)
        state = ami_state(props, region, region_by_name, pending)
        if state == "missing":
            entries.append(Entry(ERROR_AMI, image, region))
        elif state == "pending":
            entries.append(Entry(PENDING_AMI, image, region))
        elif state == "update" or differs:
            entries.append(Entry(PENDING_METADATA, image, region))
        else:
            entries.append(Entry(OK, image, region))
    return entries


def obsolete_changes(
    master: MasterImages,
    region_images: Sequence[Image],
    tenant_id: str | None,
    target: Target,
) -> list[ObsoleteChange]:
    """Region images to rename NAME_obsolete or whose obsolete metadata must follow the master.

    GlanceSync's three checks: the checksum must be the master's; images of
    another tenant are never touched; a master ``NAME_obsolete`` is ignored
    while a synchronisable ``NAME`` still exists in the master.
    """
    obsolete: dict[str, Image] = {}
    for name, image in master.by_name.items():
        if not name.endswith(OBSOLETE_SUFFIX):
            continue
        base = name[: -len(OBSOLETE_SUFFIX)]
        if base in master and is_synchronisable(master, base, target):
            continue
        obsolete[name] = image
    if not obsolete:
        return []
    changes: list[ObsoleteChange] = []
    for image in region_images:
        if not same_owner(image.owner, tenant_id):
            continue
        if image.name.endswith(OBSOLETE_SUFFIX) and image.name in obsolete:
            new_name = image.name
        elif image.name + OBSOLETE_SUFFIX in obsolete:
            new_name = image.name + OBSOLETE_SUFFIX
        else:
            continue
        image_master = obsolete[new_name]
        if image.checksum != image_master.checksum:
            continue
        props = image.user_properties()
        master_props = master.props[new_name]
        set_props = {
            p: master_props[p]
            for p in sorted(target.obsolete_syncprops)
            if p in master_props and p not in AMI_PROPERTIES and props.get(p) != master_props[p]
        }
        visibility = image_master.visibility if image_master.is_public != image.is_public else None
        if new_name != image.name or visibility or set_props:
            changes.append(ObsoleteChange(image, image_master, new_name, visibility, set_props))
    return changes


def plan_region(
    master: MasterImages,
    region_images: Sequence[Image],
    tenant_id: str | None,
    target: Target,
    region: str,
    store_region: str,
    *,
    with_obsolete: bool = True,
    to_sync: Mapping[str, Image] | None = None,
) -> RegionPlan:
    """Everything one region needs, computed from the two image lists only.

    ``to_sync`` (the target's synchronisable master images) may be passed in
    when several regions of one target are planned: it is the same for all.
    """
    warnings: list[str] = []
    obsolete: list[ObsoleteChange] = []
    images = list(region_images)
    if with_obsolete and target.support_obsolete_images:
        obsolete = obsolete_changes(master, images, tenant_id, target)
        if obsolete:
            # Plan the rest as if the renames were done: a renamed image no
            # longer answers to its old name.
            renamed = {c.image.id: c.new_name for c in obsolete}
            images = [im.replace(name=renamed.get(im.id, im.name)) for im in images]
    if to_sync is None:
        to_sync = images_to_sync(master, target, warnings)
    by_name = region_images_by_name(to_sync, images, tenant_id, target, region, warnings)
    entries = entries_for_region(master, to_sync, by_name, target)
    for entry in entries:
        if entry.status == ERROR_CHECKSUM and entry.region_image is not None:
            # GlanceSync's warning, one per image
            warnings.append(
                f"Image {entry.master.name} has a different checksum "
                f"({entry.region_image.checksum}) in region {region}"
            )
    plan = RegionPlan(region, target.name, store_region, entries, obsolete, by_name, warnings)
    resolve_changes(plan, master, target)
    return plan


_UPLOAD_KIND = {PENDING_UPLOAD: "upload", PENDING_REPLACE: "replace", PENDING_RENAME: "rename"}


def resolve_changes(plan: RegionPlan, master: MasterImages, target: Target) -> None:
    """Fill the plan's metadata, upload and AMI change lists from its entries."""
    by_name = plan.region_by_name
    for entry in plan.entries:
        if entry.status == PENDING_METADATA and entry.region_image is not None:
            changes = metadata_update(master, entry.master, entry.region_image, by_name, target)
            if changes:
                plan.metadata.append(
                    MetadataChange("metadata", entry.master.name, entry.region_image, changes)
                )
    uploaded: list[str] = []
    for entry in plan.entries:
        if entry.status not in UPLOADING:
            continue
        image = entry.master
        props = master.props[image.name]
        refs = {}
        for prop in AMI_PROPERTIES:
            refs[prop] = ami_target_id(props, prop, by_name, uploaded)
            if prop in props and not refs[prop]:
                plan.warnings.append(
                    f"{plan.region}: {prop} {props[prop]} of {image.name} not found"
                )
        plan.uploads.append(
            UploadChange(
                _UPLOAD_KIND[entry.status],
                image,
                upload_properties(master, image, target),
                refs["kernel_id"],
                refs["ramdisk_id"],
                entry.region_image,
            )
        )
        uploaded.append(image.name)
    for entry in plan.entries:
        if entry.status == PENDING_AMI and entry.region_image is not None:
            changes = metadata_update(
                master, entry.master, entry.region_image, by_name, target, uploaded
            )
            if changes:
                plan.ami.append(
                    MetadataChange("ami", entry.master.name, entry.region_image, changes)
                )


def master_region_plan(region: str, target: Target, to_sync: Mapping[str, Image]) -> RegionPlan:
    """The master region's own plan: each image to sync is there, ``ok``; no change."""
    entries = [Entry(OK, image, image) for image in to_sync.values()]
    _, _, store_region = region.rpartition(":")
    return RegionPlan(region, target.name, store_region, entries, [], dict(to_sync), [])


def metadata_update(
    master: MasterImages,
    image: Image,
    region_image: Image,
    region_by_name: Mapping[str, Image],
    target: Target,
    uploading: Collection[str] = (),
) -> dict[str, object]:
    """``update_image`` keyword arguments making ``region_image`` match ``image``.

    Only properties of ``metadata_set`` are touched (every property when the
    set is empty); visibility always follows the master; kernel_id and
    ramdisk_id point at the region's own kernel and ramdisk.  Empty when
    nothing needs to change.
    """
    master_props = master.props[image.name]
    region_props = dict(region_image.properties)
    set_props: dict[str, str] = {}
    remove: list[str] = []
    names = target.metadata_set or (set(master_props) | set(region_props))
    for prop in sorted(names):
        if prop in AMI_PROPERTIES:
            continue
        if prop in master_props:
            if region_props.get(prop) != master_props[prop]:
                set_props[prop] = master_props[prop]
        elif prop in region_props:
            remove.append(prop)
    changes: dict[str, object] = {}
    if set_props:
        changes["set_properties"] = set_props
    if remove:
        changes["remove_properties"] = remove
    if image.is_public != region_image.is_public:
        changes["visibility"] = image.visibility
    for prop, current in (
        ("kernel_id", region_image.kernel_id),
        ("ramdisk_id", region_image.ramdisk_id),
    ):
        wanted = ami_target_id(master_props, prop, region_by_name, uploading)
        if prop not in master_props:
            if current:
                changes[f"remove_{prop}"] = True
        elif wanted and wanted != current:
            changes[prop] = wanted
    return changes


def ami_target_id(
    master_props: Mapping[str, str],
    prop: str,
    region_by_name: Mapping[str, Image],
    uploading: Collection[str] = (),
) -> AmiId | None:
    """The region's id for the master's kernel/ramdisk, None when it is not there.

    A kernel or ramdisk among ``uploading`` (copied earlier by the same plan)
    is :class:`Uploaded`: its id is known once apply has made the copy.
    """
    name = master_props.get(prop)
    if not name:
        return None
    if name in uploading:
        return Uploaded(name)
    aux = region_by_name.get(name)
    return aux.id if aux else None


def upload_properties(master: MasterImages, image: Image, target: Target) -> dict[str, str]:
    """The user properties a new copy gets: ``metadata_set`` only, or all."""
    props = {k: v for k, v in image.properties.items() if k not in AMI_PROPERTIES}
    if target.metadata_set:
        props = {k: v for k, v in props.items() if k in target.metadata_set}
    return props
