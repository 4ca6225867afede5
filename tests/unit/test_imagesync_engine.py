"""The GlanceSync engine against the local image store: statuses, sync, dry run, failures."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from stowkit.corelib.errors import InvalidArgument, NotFound
from stowkit.corelib.imagesync import plan as P
from tests.fakes.imagesync import (
    OTHER,
    build_scenario,
    engine,
    make_store,
    put,
    snapshot,
    statuses,
)


@pytest.fixture
def store(tmp_path):
    return make_store(str(tmp_path / "images"))


@pytest.fixture
def images(store):
    return build_scenario(store)


def by_name(store, region):
    out = {}
    for im in store.list_images(region):
        out.setdefault(im.name, []).append(im)
    return out


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


EXPECTED_BEFORE = {
    "kernel": P.PENDING_UPLOAD,
    "ramdisk": P.PENDING_UPLOAD,
    "public": P.PENDING_UPLOAD,
    "forced": P.PENDING_UPLOAD,
    "conflict": P.ERROR_CHECKSUM,
    "meta": P.PENDING_METADATA,
    "ami": P.PENDING_UPLOAD,
}


def test_status_before_sync(store, images):
    sync = engine(store, images)
    got = statuses(sync)
    for region in ("RegionA", "RegionB"):
        assert {n: s for (r, n), s in got.items() if r == region} == EXPECTED_BEFORE
    # smallest first, as uploads happen
    result = sync.status(["RegionA"])[0]
    sizes = [e.master.size for e in result.plan.entries]
    assert sizes == sorted(sizes)


def test_sync_then_status_ok_and_second_sync_changes_nothing(store, images):
    sync = engine(store, images)
    report = sync.sync()
    assert not report.failed, report.summary()
    for region in ("RegionA", "RegionB"):
        names = by_name(store, region)
        # uploaded copies are verified, public stays public, forced stays private
        assert names["public"][0].checksum == images["public"].checksum
        assert names["public"][0].os_hash_value == images["public"].os_hash_value
        assert names["public"][0].properties == {"nid": "1", "local": "x"}
        assert names["forced"][0].visibility == "private"
        # never synchronised
        for absent in ("private", "other_tenant", "dup", "old"):
            assert absent not in names, absent
        # obsolete: renamed and made private like the master's
        assert names["old_obsolete"][0].visibility == "private"
        # metadata updated in place (same id)
        assert names["meta"][0].properties["type"] == "new"
        # AMI ids point at this region's own kernel and ramdisk
        ami = names["ami"][0]
        assert ami.kernel_id == names["kernel"][0].id != images["kernel"].id
        assert ami.ramdisk_id == names["ramdisk"][0].id != images["ramdisk"].id
        # another tenant's image is left alone
        assert names["foreign"][0].owner == OTHER
    fresh = engine(store, images)
    got = statuses(fresh)
    expected = {n: P.OK for n in EXPECTED_BEFORE} | {"conflict": P.ERROR_CHECKSUM}
    assert {n: s for (r, n), s in got.items() if r == "RegionA"} == expected
    before = snapshot(store)
    again = engine(store, images).sync()
    assert not again.failed
    assert [d for r in again.results for d in r.done] == []
    assert snapshot(store) == before


def test_dry_run_writes_nothing(store, images, tmp_path):
    before = snapshot(store)
    index_bytes = {
        r: (tmp_path / "images" / r / "images.json").read_bytes() for r in store.regions()
    }
    report = engine(store, images, extra="rename = any").sync(dry_run=True)
    assert not report.failed
    actions = {(d.action, d.image) for r in report.results for d in r.done}
    assert ("upload", "kernel") in actions
    assert ("rename", "conflict") in actions
    assert ("obsolete", "old_obsolete") in actions
    assert ("metadata", "meta") in actions
    assert snapshot(store) == before
    for region, data in index_bytes.items():
        assert (tmp_path / "images" / region / "images.json").read_bytes() == data


@pytest.mark.parametrize(
    ("extra", "status", "after"),
    [
        ("", P.ERROR_CHECKSUM, "untouched"),
        ("rename = any", P.PENDING_RENAME, "renamed"),
        ("replace = any", P.PENDING_REPLACE, "replaced"),
        ("rename = {bad}", P.PENDING_RENAME, "renamed"),
        ("replace = {bad}", P.PENDING_REPLACE, "replaced"),
        ("dontupdate = {bad}\nreplace = any", P.OK_STALLED_CHECKSUM, "untouched"),
        ("replace = 0123,any\ndontupdate = {bad}", P.OK_STALLED_CHECKSUM, "untouched"),
    ],
)
def test_checksum_conflict_policies(store, images, extra, status, after):
    extra = extra.replace("{bad}", md5(b"c" * 161))
    sync = engine(store, images, extra=extra)
    assert statuses(sync, ["RegionA"])[("RegionA", "conflict")] == status
    old_id = by_name(store, "RegionA")["conflict"][0].id
    assert not sync.sync(["RegionA"]).failed
    names = by_name(store, "RegionA")
    if after == "untouched":
        assert [im.id for im in names["conflict"]] == [old_id]
        return
    assert len(names["conflict"]) == 1
    new = names["conflict"][0]
    assert new.id != old_id and new.checksum == images["conflict"].checksum
    if after == "renamed":
        old = names["conflict.old"][0]
        assert old.id == old_id and old.visibility == "private"
    else:
        assert "conflict.old" not in names
        assert old_id not in {im.id for im in store.list_images("RegionA")}
    assert (
        statuses(engine(store, images, extra=extra), ["RegionA"])[("RegionA", "conflict")] == P.OK
    )


def test_metadata_set_limits_comparison_and_upload(store, images):
    sync = engine(store, images, extra="metadata_set = nid")
    got = statuses(sync, ["RegionA"])
    assert got[("RegionA", "meta")] == P.OK  # type differs, but it is not in metadata_set
    # metadata_set without a condition: only public images with one of its properties
    assert ("RegionA", "forced") in got  # forcesyncs still win
    assert not sync.sync(["RegionA"]).failed
    names = by_name(store, "RegionA")
    assert names["public"][0].properties == {"nid": "1"}
    assert names["meta"][0].properties["type"] == "stale"


def test_metadata_set_update_touches_only_listed_properties(store, images):
    put(store, "RegionA", "public", b"P" * 100, props={"nid": "old", "mine": "keep"})
    sync = engine(store, images, extra="metadata_set = nid")
    assert statuses(sync, ["RegionA"])[("RegionA", "public")] == P.PENDING_METADATA
    sync.sync(["RegionA"])
    public = by_name(store, "RegionA")["public"][0]
    assert public.properties == {"nid": "1", "mine": "keep"}


def test_visibility_is_propagated(store, images):
    put(store, "RegionA", "public", b"P" * 100, public=False, props={"nid": "1", "local": "x"})
    sync = engine(store, images)
    assert statuses(sync, ["RegionA"])[("RegionA", "public")] == P.PENDING_METADATA
    sync.sync(["RegionA"])
    assert by_name(store, "RegionA")["public"][0].visibility == "public"


def test_metadata_condition_and_error_ami(store, images):
    cond = "metadata_condition = image.is_public and image.user_properties.get('type') == 'base'"
    got = statuses(engine(store, images, extra=cond), ["RegionA"])
    # only the AMI matches; its kernel and ramdisk are not synchronised
    assert got == {("RegionA", "forced"): P.PENDING_UPLOAD, ("RegionA", "ami"): P.PENDING_UPLOAD}
    put(store, "RegionA", "ami", b"A" * 300, props={"nid": "7", "type": "base"})
    got = statuses(engine(store, images, extra=cond), ["RegionA"])
    assert got[("RegionA", "ami")] == P.ERROR_AMI


def test_pending_ami_then_fixed(store, images):
    put(store, "RegionB", "ami", b"A" * 300, props={"nid": "7", "type": "base"})
    sync = engine(store, images)
    assert statuses(sync, ["RegionB"])[("RegionB", "ami")] == P.PENDING_AMI
    report = sync.sync(["RegionB"])
    assert ("ami", "ami") in {(d.action, d.image) for d in report.results[0].done}
    names = by_name(store, "RegionB")
    assert names["ami"][0].kernel_id == names["kernel"][0].id
    assert statuses(engine(store, images), ["RegionB"])[("RegionB", "ami")] == P.OK


def test_other_tenant_images_in_region(store, images):
    put(store, "RegionA", "public", b"P" * 100, owner=OTHER, props={"nid": "1", "local": "x"})
    # only_tenant_images (default): the other tenant's copy is ignored, ours is uploaded
    assert statuses(engine(store, images), ["RegionA"])[("RegionA", "public")] == P.PENDING_UPLOAD
    got = statuses(engine(store, images, extra="only_tenant_images = False"), ["RegionA"])
    assert got[("RegionA", "public")] == P.OK


def test_duplicated_names_in_region_prefer_master_checksum(store, images):
    put(store, "RegionA", "public", b"p" * 99, props={"nid": "1", "local": "x"})
    put(store, "RegionA", "public", b"P" * 100, props={"nid": "1", "local": "x"})
    assert statuses(engine(store, images), ["RegionA"])[("RegionA", "public")] == P.OK


def test_obsolete_checks(store, images):
    # check 1: a different checksum is never renamed
    put(store, "RegionA", "old", b"y" * 150)
    # check 2: another tenant's image is never touched
    put(store, "RegionB", "old", b"X" * 150, owner=OTHER)
    engine(store, images).sync()
    a = by_name(store, "RegionA")
    assert len(a["old_obsolete"]) == 1 and len(a["old"]) == 1
    b = by_name(store, "RegionB")
    assert [im.owner for im in b["old"]] == [OTHER]


def test_obsolete_ignored_while_synchronisable_base_exists(store, images):
    put(store, "Master", "old", b"N" * 10)  # the base image exists again and is public
    sync = engine(store, images)
    assert statuses(sync, ["RegionA"])[("RegionA", "old")] == P.ERROR_CHECKSUM
    sync.sync(["RegionA"])
    names = by_name(store, "RegionA")
    # not renamed to old_obsolete; its other checksum is an ordinary conflict, left alone
    assert "old_obsolete" not in names
    assert {im.checksum for im in names["old"]} == {md5(b"X" * 150)}


def test_obsolete_syncprops_and_disabled(store, images):
    extra = "obsolete_syncprops = nid"
    engine(store, images, extra=extra).sync(["RegionA"])
    assert by_name(store, "RegionA")["old_obsolete"][0].properties["nid"] == "9"
    engine(store, images, extra="support_obsolete_images = False").sync(["RegionB"])
    names = by_name(store, "RegionB")
    assert "old" in names and "old_obsolete" not in names


def test_failing_region_does_not_stop_others(store, images, tmp_path):
    put(store, "RegionC", "x", b"1")
    (tmp_path / "images" / "RegionB" / "images.json").write_text("{not json")
    report = engine(store, images).sync(parallel=True)
    failed = {r.region for r in report.failed}
    assert failed == {"RegionB"}
    assert "RegionB" in report.summary() and "FAILED in 1" in report.summary()
    assert "kernel" in by_name(store, "RegionA") and "kernel" in by_name(store, "RegionC")


@pytest.mark.parametrize("store_reports_hashes", [True, False])
def test_copy_is_verified(store, images, monkeypatch, store_reports_hashes):
    if not store_reports_hashes:  # then the engine hashes the bytes in transit
        monkeypatch.setattr(store, "capabilities", frozenset())
    real = store.read_image

    def corrupt(region, image_id):
        for chunk in real(region, image_id):
            yield chunk[:-1] + b"!" if image_id == images["public"].id else chunk

    monkeypatch.setattr(store, "read_image", corrupt)
    report = engine(store, images).sync(["RegionA"])
    assert report.failed and "verification" in report.failed[0].error
    assert "public" not in by_name(store, "RegionA")  # the bad copy was removed


def test_images_dir_is_read_when_set(store, images, tmp_path):
    images_dir = tmp_path / "glance-images"
    images_dir.mkdir()
    (images_dir / images["kernel"].id).write_bytes(b"K" * 10)
    sync = engine(store, images)
    sync.config.images_dir = str(images_dir)
    calls = []
    real = store.read_image
    store.read_image = lambda r, i: calls.append(i) or real(r, i)  # type: ignore[method-assign]
    assert not sync.sync(["RegionA"]).failed
    assert images["kernel"].id not in calls and images["public"].id in calls


def test_regions_targets_and_resolution(store, images):
    put(store, "Other1", "x", b"1")
    put(store, "Other2", "x", b"1")
    extra = "ignore_regions = RegionB\n[other]\ncredential = u,cA==,http://k/v3,t\n"
    extra += "regions = Other1, Other2\nignore_regions = Other2\n"
    sync = engine(store, images, extra=extra)
    assert sync.all_regions() == {"master": ["RegionA"], "other": ["other:Other1"]}
    assert sync.resolve(["other:"]) == ["other:Other1"]
    assert sync.resolve(["RegionB", "other:Other2"]) == ["RegionB", "other:Other2"]
    with pytest.raises(NotFound):
        sync.resolve(["Nowhere"])
    with pytest.raises(InvalidArgument):
        sync.resolve(["nope:RegionA"])
    # the master region is a region like the others (GlanceSync's status shows it)
    assert sync.resolve(["Master"]) == ["Master"]
    report = sync.sync(["other:"])
    assert not report.failed
    assert "kernel" in by_name(store, "Other1")


def test_preferable_order(store, images):
    for region in ("RegionC", "RegionD"):
        put(store, region, "x", b"1")
    sync = engine(store, images)
    sync.config.preferable_order = ("RegionD", "RegionB", "Absent")
    assert sync.resolve() == ["RegionD", "RegionB", "RegionA", "RegionC"]


def test_master_duplicates_warned(store, images, caplog):
    sync = engine(store, images)
    with caplog.at_level("WARNING", logger="stowkit.imagesync"):
        master = sync.master_images()
    assert "dup" not in master
    assert any("duplicated images with name dup" in r.message for r in caplog.records)


def test_backup_and_reload(store, images, tmp_path):
    sync = engine(store, images)
    rows = sync.backup(str(tmp_path / "bk"))
    assert [r[0] for r in rows] == ["Master", "RegionA", "RegionB"]
    assert all(err is None for _, _, err in rows)
    text = (tmp_path / "bk" / "backup_Master.csv").read_text()
    line = next(ln for ln in text.splitlines() if ",ami," in ln)
    fields = line.split(",", 8)
    assert fields[:4] == ["Master", "ami", images["ami"].id, "active"]
    assert fields[4] == "300" and fields[5] == images["ami"].checksum and fields[7] == "True"
    assert "'kernel_id': '" + images["kernel"].id in fields[8]
    other = make_store(str(tmp_path / "scenario"))
    loaded = other.load_backups(str(tmp_path / "bk"))
    assert loaded == {"Master": 12, "RegionA": 4, "RegionB": 4}
    got = statuses(engine(other, images))
    assert {n: s for (r, n), s in got.items() if r == "RegionA"} == EXPECTED_BEFORE
    # metadata only: a real sync reports the missing data, per region
    report = engine(other, images).sync(["RegionA"])
    assert report.failed and "no data" in report.failed[0].error


def test_local_store_rejects_bad_region_names(store):
    from stowkit.corelib.errors import InvalidName

    with pytest.raises(InvalidName):
        store.list_images("../etc")
    with pytest.raises(NotFound):
        store.list_images("Missing")


def test_local_index_is_json(store, images, tmp_path):
    data = json.loads((tmp_path / "images" / "Master" / "images.json").read_text())
    assert data[images["ami"].id]["kernel_id"] == images["kernel"].id
    assert os.path.isfile(tmp_path / "images" / "Master" / "data" / images["ami"].id)


def test_unreachable_target_does_not_stop_the_others(store, images):
    extra = "[other]\ncredential = u,cA==,http://k/v3,t\nregions = Gone\n"
    sync = engine(store, images, extra=extra)
    report = sync.sync()
    assert [r.region for r in report.failed] == ["other:"]
    assert "Gone" in report.failed[0].error
    assert "kernel" in by_name(store, "RegionA") and "kernel" in by_name(store, "RegionB")
    results = engine(store, images, extra=extra).status()
    assert [r.region for r in results if not r.ok] == ["other:"]
    # named explicitly, the same target is a plain error
    with pytest.raises(NotFound):
        engine(store, images, extra=extra).sync(["other:"])
