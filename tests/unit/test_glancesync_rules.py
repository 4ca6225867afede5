"""GlanceSync's behaviour where stowkit used to differ (issue 12), one test per rule."""

from __future__ import annotations

import pytest

from stowkit.corelib.errors import Conflict, StowkitError
from stowkit.corelib.imagesync import plan as P
from tests.fakes.cli_output import rows
from tests.fakes.imagesync import (
    build_scenario,
    engine,
    make_store,
    put,
    snapshot,
)


@pytest.fixture
def store(tmp_path):
    return make_store(str(tmp_path / "images"))


@pytest.fixture
def images(store):
    return build_scenario(store)


# -- the master region is reported like any other ------------------------------


def test_master_region_status_is_ok_and_sync_changes_nothing(store, images):
    sync = engine(store, images)
    [result] = sync.status(["Master"])
    assert result.ok
    got = {e.master.name: e.status for e in result.plan.entries}
    # every image to sync, each ok (the same set the other regions get)
    other = {e.master.name for e in sync.status(["RegionA"])[0].plan.entries}
    assert set(got) == other and set(got.values()) == {P.OK}
    before = snapshot(store)
    report = engine(store, images).sync(["Master"])
    assert not report.failed and report.results[0].done == []
    assert snapshot(store) == before


def test_master_region_named_in_cli_and_front_end(env, capsys, tmp_path):
    env("image", "create", str(tmp_path / "a.img"), "--name", "a", "--region", "One", "--public")
    capsys.readouterr()
    assert env("image", "status", "One", "-f", "json") == 0
    assert rows(capsys) == [{"status": "ok", "region": "One", "image": "a"}]
    assert env("--show-status", "One", front=glancesync_main()) == 0
    assert capsys.readouterr().out == "ok,One,a\n"
    assert env("image", "sync", "One") == 0
    assert env("image", "backup", "--dir", str(tmp_path / "bk"), "One") == 0
    assert (tmp_path / "bk" / "backup_One.csv").read_text().startswith("One,a,")


def glancesync_main():
    from stowkit.cli.compat import glancesync

    return glancesync.main


# -- backups always hold the master region ---------------------------------------


def test_backup_of_named_regions_includes_the_master(store, images, tmp_path):
    rows_ = engine(store, images).backup(str(tmp_path / "bk"), ["RegionA"])
    assert [r[0] for r in rows_] == ["Master", "RegionA"]


def test_make_backup_region_includes_the_master(env, capsys, tmp_path):
    assert env("--make-backup", "Two", front=glancesync_main()) == 0
    names = sorted(p.name for p in tmp_path.glob("backup_glance_*/backup_*.csv"))
    assert names == ["backup_One.csv", "backup_Two.csv"]


# -- error_checksum warns, once per image -------------------------------------------


def test_error_checksum_warns_with_image_region_and_checksum(store, images, caplog):
    region_conflict = next(im for im in store.list_images("RegionA") if im.name == "conflict")
    with caplog.at_level("WARNING", logger="stowkit.imagesync"):
        engine(store, images).status(["RegionA"])
    wanted = (
        f"Image conflict has a different checksum ({region_conflict.checksum}) in region RegionA"
    )
    assert [r.getMessage() for r in caplog.records].count(wanted) == 1


# -- a target without regions = does not claim the master region -----------------


OTHER_TARGET = "[other]\ncredential = u,cA==,http://k/v3,t\n"


def test_target_without_regions_does_not_claim_the_master_region(store, images):
    sync = engine(store, images, extra=OTHER_TARGET)
    regions = sync.all_regions()
    assert "other:Master" not in regions["other"]
    assert regions["other"] == ["other:RegionA", "other:RegionB"]
    report = engine(store, images, extra=OTHER_TARGET).sync(["other:"], dry_run=True)
    assert all(not r.region.endswith(":Master") for r in report.results)


# -- copies belong to the target's tenant, so a second sync changes nothing ----------


def test_uploads_are_owned_by_the_target_tenant_and_sync_is_idempotent(store, images):
    extra = OTHER_TARGET + "tenant_id = tenant2\nonly_tenant_images = True\nregions = Other\n"
    put(store, "Other", "seed", b"s", owner="tenant2")
    report = engine(store, images, extra=extra).sync(["other:"])
    assert not report.failed, report.summary()
    uploaded = [im for im in store.list_images("Other") if im.name == "public"]
    assert [im.owner for im in uploaded] == ["tenant2"]
    statuses = {
        e.master.name: e.status
        for e in engine(store, images, extra=extra).status(["other:"])[0].plan.entries
    }
    assert set(statuses.values()) <= {P.OK}, statuses
    before = snapshot(store)
    again = engine(store, images, extra=extra).sync(["other:"])
    assert [d for r in again.results for d in r.done] == []
    assert snapshot(store) == before


# -- the plan carries every change; apply only executes it ----------------------------


def test_plan_carries_resolved_changes(store, images):
    plan = engine(store, images).plan("RegionA")
    assert [(c.kind, c.image) for c in plan.metadata] == [("metadata", "meta")]
    assert plan.metadata[0].changes == {"set_properties": {"type": "new"}}
    uploads = {u.image.name: u for u in plan.uploads}
    assert list(uploads)[:2] == ["kernel", "ramdisk"]
    # the AMI image's kernel/ramdisk are the copies this plan uploads first
    assert uploads["ami"].kernel_id == P.Uploaded("kernel")
    assert uploads["ami"].ramdisk_id == P.Uploaded("ramdisk")
    assert uploads["public"].properties == {"nid": "1", "local": "x"}
    assert plan.changes == len(plan.obsolete) + 1 + len(plan.uploads)


def test_apply_does_not_recompute_the_plan(store, images, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("apply recomputed a change")

    def edit(region, plan):
        # planned: now the planning helpers are gone, and the plan is edited
        for helper in ("metadata_update", "ami_target_id", "upload_properties"):
            monkeypatch.setattr(P, helper, boom)
        plan.uploads[:] = [u for u in plan.uploads if u.image.name == "public"]
        plan.metadata.clear()

    report = engine(store, images).sync(["RegionA"], before_apply=edit)
    assert not report.failed, report.summary()
    # whatever the plan says is what happens, nothing else
    assert [(d.action, d.image) for d in report.results[0].done] == [
        ("obsolete", "old_obsolete"),
        ("upload", "public"),
    ]


def test_failure_halfway_reports_what_changed(store, images):
    sync = engine(store, images)
    real = store.create_image
    calls = []

    def failing(region, name, *a, **k):
        calls.append(name)
        if name == "public":
            raise StowkitError("disk full")
        return real(region, name, *a, **k)

    store.create_image = failing  # type: ignore[method-assign]
    report = sync.sync(["RegionA"])
    [result] = report.results
    assert not result.ok and "disk full" in result.error
    done = [(d.action, d.image) for d in result.done]
    assert ("upload", "kernel") in done and ("metadata", "meta") in done
    assert ("upload", "public") not in done
    summary = report.summary()
    assert f"{len(done)} change(s) made" in summary and "0 change(s)" not in summary
    assert f"(after {len(done)} change(s))" in summary


# -- load-backups: TARGET: prefixes and existing regions ----------------------------------


def _backup(directory, region, image_id, name="base"):
    directory.mkdir(exist_ok=True)
    (directory / f"backup_{region}.csv").write_text(
        f"{region},{name},{image_id},active,10,abc,,True,{{'type': 'base'}}\n"
    )


def test_load_backups_refuses_two_files_for_one_region(tmp_path, caplog):
    store = make_store(str(tmp_path / "images"))
    bk = tmp_path / "bk"
    _backup(bk, "RegionA", "11111111-1111-1111-1111-111111111111")
    _backup(bk, "other:RegionA", "22222222-1111-1111-1111-111111111111")
    with pytest.raises(Conflict, match="both region RegionA"):
        store.load_backups(str(bk))
    assert store.regions() == []


def test_load_backups_says_where_a_prefixed_file_went(tmp_path, caplog):
    store = make_store(str(tmp_path / "images"))
    bk = tmp_path / "bk"
    _backup(bk, "other:RegionB", "22222222-1111-1111-1111-111111111111")
    with caplog.at_level("WARNING", logger="stowkit.imagesync"):
        assert store.load_backups(str(bk)) == {"RegionB": 1}
    assert any(
        "regions =" in r.getMessage() and "other:RegionB" in r.getMessage() for r in caplog.records
    )


def test_load_backups_does_not_merge_into_a_region(tmp_path):
    store = make_store(str(tmp_path / "images"))
    put(store, "RegionA", "mine", b"m")
    bk = tmp_path / "bk"
    _backup(bk, "RegionA", "11111111-1111-1111-1111-111111111111")
    with pytest.raises(Conflict, match="already holds 1 image"):
        store.load_backups(str(bk))
    assert [im.name for im in store.list_images("RegionA")] == ["mine"]
    assert store.load_backups(str(bk), replace=True) == {"RegionA": 1}
    assert [im.name for im in store.list_images("RegionA")] == ["base"]


# -- image status -f csv is GlanceSync's lines --------------------------------------------


def test_status_csv_is_glancesync_lines(env, capsys, tmp_path):
    env("image", "create", str(tmp_path / "a.img"), "--name", "a", "--region", "One", "--public")
    capsys.readouterr()
    assert env("image", "status", "-f", "csv") == 0
    assert capsys.readouterr().out == "pending_upload,Three,a\npending_upload,Two,a\n"


# -- progress: per-image bytes, rate and ETA on a terminal only ---------------------------


def test_sync_and_create_progress_only_when_asked_or_on_a_terminal(env, capsys, tmp_path):
    img = str(tmp_path / "a.img")
    assert env("image", "create", img, "--name", "a", "--region", "One", "--public") == 0
    assert "MiB" not in capsys.readouterr().err  # not a terminal: quiet
    assert env("image", "create", img, "--name", "b", "--region", "One", "--progress") == 0
    assert "One: b: 0.0 MiB of 0.0 MiB (100%)" in capsys.readouterr().err
    assert env("image", "sync", "Two", "--no-progress") == 0
    assert "MiB/s" not in capsys.readouterr().err
    assert env("image", "sync", "Three", "--progress") == 0
    err = capsys.readouterr().err
    assert "a: Three 100%; 0.0 MiB of 0.0 MiB (100%)" in err and "ETA" in err
