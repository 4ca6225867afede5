"""A GlanceSync scenario on the local image store, for the imagesync tests.

Master region ``Master`` and targets ``RegionA``/``RegionB`` (plus whatever a
test adds).  Image bytes are tiny and distinct so checksums tell them apart.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from stowkit.corelib import config as core_config
from stowkit.corelib.image import Image
from stowkit.corelib.imagesync import config as sync_config
from stowkit.corelib.imagesync.engine import ImageSync
from stowkit.plugins.local.images import LocalImageStore

TENANT = "local"
OTHER = "someoneelse"
FORCED_ID_PROPERTY = "forced"


def make_store(root: str) -> LocalImageStore:
    return _store(core_config.load_conf(), root)


def _store(conf, root: str) -> LocalImageStore:
    conf.register_opts(LocalImageStore.options, group="image_local")
    conf.set_override("path", root, "image_local")
    return LocalImageStore(conf, "image_local")


def put(
    store: LocalImageStore,
    region: str,
    name: str,
    data: bytes,
    *,
    public: bool = True,
    props: Mapping[str, str] | None = None,
    owner: str | None = None,
    kernel_id: str | None = None,
    ramdisk_id: str | None = None,
    disk_format: str = "raw",
) -> Image:
    return store.create_image(
        region,
        name,
        io.BytesIO(data),
        visibility="public" if public else "private",
        properties=dict(props or {}),
        owner=owner,
        kernel_id=kernel_id,
        ramdisk_id=ramdisk_id,
        disk_format=disk_format,
        container_format={"aki": "aki", "ari": "ari", "ami": "ami"}.get(disk_format, "bare"),
    )


def build_scenario(store: LocalImageStore) -> dict[str, Image]:
    """Master images of every kind, and region images that conflict with some of them."""
    m: dict[str, Image] = {}
    m["kernel"] = put(store, "Master", "kernel", b"K" * 10, disk_format="aki", props={"nid": "7"})
    m["ramdisk"] = put(store, "Master", "ramdisk", b"R" * 20, disk_format="ari", props={"nid": "7"})
    m["ami"] = put(
        store,
        "Master",
        "ami",
        b"A" * 300,
        disk_format="ami",
        props={"nid": "7", "type": "base"},
        kernel_id=m["kernel"].id,
        ramdisk_id=m["ramdisk"].id,
    )
    m["public"] = put(store, "Master", "public", b"P" * 100, props={"nid": "1", "local": "x"})
    m["private"] = put(store, "Master", "private", b"V" * 110, public=False, props={"nid": "2"})
    m["forced"] = put(store, "Master", "forced", b"F" * 120, public=False)
    m["other_tenant"] = put(store, "Master", "other_tenant", b"O" * 130, owner=OTHER)
    m["dup1"] = put(store, "Master", "dup", b"D" * 140)
    m["dup2"] = put(store, "Master", "dup", b"E" * 141)
    m["obsolete"] = put(
        store, "Master", "old_obsolete", b"X" * 150, public=False, props={"nid": "9"}
    )
    m["conflict"] = put(store, "Master", "conflict", b"C" * 160, props={"nid": "3"})
    m["meta"] = put(store, "Master", "meta", b"M" * 170, props={"nid": "4", "type": "new"})
    for region in ("RegionA", "RegionB"):
        put(store, region, "old", b"X" * 150, props={"nid": "8"})
        put(store, region, "conflict", b"c" * 161, props={"nid": "3"})
        put(store, region, "meta", b"M" * 170, props={"nid": "4", "type": "stale"})
        put(store, region, "foreign", b"Z" * 5, owner=OTHER)
    return m


def config_text(extra: str = "", master_extra: str = "") -> str:
    return (
        "[main]\nmaster_region = Master\n\n"
        f"[DEFAULT]\nforcesyncs = {{forced}}\n{extra}\n"
        f"[master]\n{master_extra}\n"
    )


def engine(
    store: LocalImageStore,
    images: Mapping[str, Image],
    extra: str = "",
    overrides: Mapping[str, str] | None = None,
) -> ImageSync:
    text = config_text(extra).replace("{forced}", images["forced"].id)
    return ImageSync(sync_config.parse(text, overrides, source="test.conf"), store)


def statuses(sync: ImageSync, regions=()) -> dict[tuple[str, str], str]:
    out = {}
    for result in sync.status(regions):
        assert result.ok, result.error
        for entry in result.plan.entries:
            out[(result.region, entry.master.name)] = entry.status
    return out


def snapshot(store: LocalImageStore) -> dict[str, list[tuple]]:
    """Everything observable about every region, for before/after comparisons."""
    return {
        region: sorted(
            (
                im.id,
                im.name,
                im.visibility,
                tuple(sorted(im.properties.items())),
                im.kernel_id,
                im.ramdisk_id,
                im.checksum,
            )
            for im in store.list_images(region)
        )
        for region in store.regions()
    }
