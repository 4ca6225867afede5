"""Which images take part in a synchronisation: GlanceSync's selection rules.

Pure functions over lists of :class:`stowkit.corelib.image.Image`; nothing here talks
to a store, so planning thousands of images costs only dictionary work.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from stowkit.corelib.image import Image
from stowkit.corelib.imagesync.condition import IMAGE_ATTRIBUTES, ConditionError
from stowkit.corelib.imagesync.config import Target

LOG = logging.getLogger("stowkit.imagesync")

OBSOLETE_SUFFIX = "_obsolete"
AMI_PROPERTIES = ("kernel_id", "ramdisk_id")
#: prefix of a kernel/ramdisk reference whose master image is not in the master list
MISSING_AMI_PREFIX = "__missing__:"


def same_owner(owner: str | None, tenant: str | None) -> bool:
    """GlanceSync's rule: no owner counts as ours; ids compare zero-padded to 32."""
    if not owner or owner == tenant:
        return True
    if not tenant:
        return False
    return owner.zfill(32) == tenant.zfill(32)


class ConditionView:
    """What ``metadata_condition`` sees as ``image``: GlanceSync's attribute names.

    ``user_properties`` includes ``kernel_id``/``ramdisk_id`` holding the *names*
    of the master's kernel and ramdisk images, as GlanceSync's did.
    """

    # Exactly the attributes the condition evaluator lets a condition read.
    __slots__ = tuple(sorted(IMAGE_ATTRIBUTES))

    def __init__(self, image: Image, user_properties: dict[str, str]) -> None:
        self.id = image.id
        self.name = image.name
        self.region = image.region
        self.owner = image.owner
        self.size = image.size or 0
        self.checksum = image.checksum
        self.status = image.status
        self.is_public = image.is_public
        self.visibility = image.visibility
        self.user_properties = user_properties
        self.os_hash_value = image.os_hash_value
        self.disk_format = image.disk_format
        self.container_format = image.container_format


class MasterImages:
    """The master region's images by name, with kernel/ramdisk ids turned into names."""

    def __init__(self, images: Iterable[Image], tenant_id: str | None) -> None:
        self.warnings: list[str] = []
        candidates = [
            im
            for im in images
            if im.status == "active" and im.name and same_owner(im.owner, tenant_id)
        ]
        seen: set[str] = set()
        duplicated: set[str] = set()
        for im in candidates:
            if im.name in seen and im.name not in duplicated:
                duplicated.add(im.name)
                self.warnings.append(f"duplicated images with name {im.name} will be ignored")
            seen.add(im.name)
        self.by_name: dict[str, Image] = {
            im.name: im for im in candidates if im.name not in duplicated
        }
        by_id = {im.id: im.name for im in self.by_name.values()}
        #: name -> user properties with kernel_id/ramdisk_id as image *names*
        self.props: dict[str, dict[str, str]] = {}
        for im in self.by_name.values():
            props = dict(im.properties)
            for key, ref in (("kernel_id", im.kernel_id), ("ramdisk_id", im.ramdisk_id)):
                if ref:
                    props[key] = by_id.get(ref) or MISSING_AMI_PREFIX + ref
            self.props[im.name] = props
        self._views: dict[str, ConditionView] = {}

    def view(self, name: str) -> ConditionView:
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = ConditionView(self.by_name[name], self.props[name])
        return view

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __len__(self) -> int:
        return len(self.by_name)


def is_synchronisable(
    master: MasterImages, name: str, target: Target, warnings: list[str] | None = None
) -> bool:
    """GlanceSync's order: ``_obsolete`` never, forcesyncs, condition, public + metadata_set."""
    image = master.by_name[name]
    if name.endswith(OBSOLETE_SUFFIX):
        return False
    if image.id in target.forcesyncs:
        return True
    if target.metadata_condition is not None:
        try:
            return target.metadata_condition.evaluate(master.view(name), target.metadata_set)
        except ConditionError as exc:
            if warnings is not None:
                warnings.append(str(exc))
            return False
    if not image.is_public:
        return False
    if not target.metadata_set:
        return True
    props = master.props[name]
    return any(p in props for p in target.metadata_set)


def images_to_sync(master: MasterImages, target: Target, warnings: list[str]) -> dict[str, Image]:
    """The master images this target receives, by name, smallest first.

    The order is the upload order: kernels and ramdisks, always smaller than
    the images that use them, are uploaded before those.
    """
    chosen = [
        im
        for name, im in master.by_name.items()
        if is_synchronisable(master, name, target, warnings)
    ]
    chosen.sort(key=lambda im: (im.size or 0, im.name))
    return {im.name: im for im in chosen}


def visible_region_images(
    images: Iterable[Image], tenant_id: str | None, only_tenant_images: bool
) -> list[Image]:
    """Images of a region the engine may look at (GlanceSync's get_images_region)."""
    if not only_tenant_images:
        return list(images)
    return [im for im in images if im.name and same_owner(im.owner, tenant_id)]


def region_images_by_name(
    to_sync: Mapping[str, Image],
    images: Sequence[Image],
    tenant_id: str | None,
    target: Target,
    region: str,
    warnings: list[str],
) -> dict[str, Image]:
    """The region's images that share a name with an image to sync.

    Other tenants' images are skipped when ``only_tenant_images`` (with a
    warning either way), inactive ones are skipped, and among duplicated
    names the one with the master's checksum wins.
    """
    result: dict[str, Image] = {}
    for im in images:
        master = to_sync.get(im.name)
        if master is None:
            continue
        if not same_owner(im.owner, tenant_id):
            warnings.append(
                f"{region}: image {im.name} (UUID {im.id}) is owned by other tenant: {im.owner}"
            )
            if target.only_tenant_images:
                continue
        if im.status != "active":
            warnings.append(
                f"{region}: state of image {im.name} with UUID {im.id} is not active: {im.status}"
            )
            continue
        previous = result.get(im.name)
        if previous is not None:
            warnings.append(
                f"{region}: image name {im.name} is duplicated. UUIDs: {im.id} {previous.id}"
            )
            if im.checksum != master.checksum or previous.checksum == master.checksum:
                continue
        result[im.name] = im
    return result
