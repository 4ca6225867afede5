"""GlanceSync rules against real Glance: three regions on one Keystone, one on another.

Each test session makes its own project and admin user on both Keystones, so
images of other tests sharing the Glance servers are someone else's (other
tenants) and never taken part in the sync.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import subprocess
import sys
import uuid

import pytest

from stowkit.corelib import config as core_config
from stowkit.corelib import imagesync
from stowkit.corelib.image import Credentials
from stowkit.corelib.imagesync import plan as P
from stowkit.plugins.glance.store import GlanceImageStore
from tests.fakes import keystone_admin
from tests.fakes.harness import stack_dir

REGIONS = ("RegionTwo", "RegionThree")
OTHER = "other:RegionOther"


@pytest.fixture(scope="module")
def stack(service, tmp_path_factory):
    keystone = service("keystone")
    glance = service("glance")
    # Two copies of this module at once would stop each other's RegionThree:
    # take turns (the lock is released when the module's fixture ends).
    lock_dir = stack_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = open(lock_dir / "test_imagesync_glance.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    name = f"sksync-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    project = keystone_admin.make_admin(keystone["admin"], name, password)
    second_project = keystone_admin.make_admin(keystone["second"]["admin"], name, password)
    work = tmp_path_factory.mktemp("imagesync")
    conf_file = work / "stowkit.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {work}\n"
        "[image]\nbackend = glance\n"
        f"[image_glance]\nauth_url = {keystone['auth_url']}\nusername = {name}\n"
        f"password = {password}\nproject_name = {name}\n"
    )
    secret = base64.b64encode(password.encode()).decode()
    sync_file = work / "glancesync.conf"
    sync_file.write_text(
        "[main]\nmaster_region = RegionOne\n\n"
        "[master]\n\n"
        "[other]\n"
        f"credential = {name},{secret},{keystone['second']['auth_url']},{name}\n"
    )
    conf = core_config.load_conf([str(conf_file)])
    store = GlanceImageStore(conf, "image_glance")
    other_store = store.for_credentials(
        Credentials(
            user=name, password=password, auth_url=keystone["second"]["auth_url"], project=name
        )
    )
    info = {
        "keystone": keystone,
        "glance": glance,
        "conf": conf,
        "conf_file": str(conf_file),
        "sync_file": str(sync_file),
        "store": store,
        "other_store": other_store,
        "project": project,
        "second_project": second_project,
        "other_tenant": keystone["other"]["project_id"],
        "name": name,
        "password": password,
        "work": work,
        "created": CREATED,
    }
    try:
        yield info
    finally:
        _cleanup(info)
        lock.close()


def _cleanup(info) -> None:
    """Leave the shared Glance servers as we found them."""
    store, other_store = info["store"], info["other_store"]
    project, second_project, name = info["project"], info["second_project"], info["name"]
    for st, regions in ((store, ("RegionOne", *REGIONS)), (other_store, ("RegionOther",))):
        for region in regions:
            try:
                images = st.list_images(region)
            except Exception:
                continue
            for im in images:
                mine = im.owner in (project, second_project) or im.name.startswith(name)
                if mine or im.id in info["created"]:
                    try:
                        st.delete_image(region, im.id)
                    except Exception:
                        pass


CREATED: list[str] = []


def put(store, region, name, data, *, public=True, props=None, owner=None, fmt="raw", **kw):
    """Create an image; its id is remembered so the module cleans up after itself."""
    image = store.create_image(
        region,
        name,
        io.BytesIO(data),
        visibility="public" if public else "private",
        properties=props or {},
        owner=owner,
        disk_format=fmt,
        container_format=fmt if fmt in ("aki", "ari", "ami") else "bare",
        size=len(data),
        **kw,
    )
    CREATED.append(image.id)
    return image


def cli(stack, *args, check=None):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stowkit.cli.app",
            "--config-file",
            stack["conf_file"],
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check is not None:
        assert proc.returncode == check, proc.stderr
    return proc


def status(stack, *regions, config=()):
    args = ["image", "status", *regions, "--sync-config", stack["sync_file"], "-f", "json"]
    for pair in config:
        args += ["--config", pair]
    proc = cli(stack, *args, check=0)
    return {(r["region"], r["image"]): r["status"] for r in json.loads(proc.stdout)}


def snapshot(stack):
    out = {}
    for st, regions in (
        (stack["store"], ("RegionOne", *REGIONS)),
        (stack["other_store"], ("RegionOther",)),
    ):
        for region in regions:
            out[region] = sorted(
                (
                    im.id,
                    im.name,
                    im.visibility,
                    tuple(sorted(im.properties.items())),
                    im.kernel_id,
                    im.ramdisk_id,
                    im.checksum,
                )
                for im in st.list_images(region)
                # other runs may use the other tenant too: only what this module made
                if im.owner in (stack["project"], stack["second_project"]) or im.id in CREATED
            )
    return out


def names(store, region, owner):
    result: dict[str, list] = {}
    for im in store.list_images(region):
        if im.owner == owner:
            result.setdefault(im.name, []).append(im)
    return result


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture(scope="module")
def scenario(stack):
    st = stack["store"]
    m = {}
    m["kernel"] = put(st, "RegionOne", "kernel", b"K" * 1000, fmt="aki")
    m["ramdisk"] = put(st, "RegionOne", "ramdisk", b"R" * 2000, fmt="ari")
    m["ami"] = put(
        st,
        "RegionOne",
        "ami",
        b"A" * 30000,
        fmt="ami",
        props={"type": "base"},
        kernel_id=m["kernel"].id,
        ramdisk_id=m["ramdisk"].id,
    )
    m["public"] = put(st, "RegionOne", "public", b"P" * 5000, props={"nid": "1"})
    m["private"] = put(st, "RegionOne", "private", b"V" * 5100, public=False)
    m["forced"] = put(st, "RegionOne", "forced", b"F" * 5200, public=False)
    m["foreign"] = put(st, "RegionOne", "foreign", b"O" * 5300, owner=stack["other_tenant"])
    put(st, "RegionOne", "dup", b"D" * 5400)
    put(st, "RegionOne", "dup", b"E" * 5401)
    m["obsolete"] = put(st, "RegionOne", "old_obsolete", b"X" * 5500, public=False)
    m["conflict"] = put(st, "RegionOne", "conflict", b"C" * 5600)
    m["meta"] = put(st, "RegionOne", "meta", b"M" * 5700, props={"nid": "4", "type": "new"})
    for region in REGIONS:
        put(st, region, "old", b"X" * 5500)
        put(st, region, "conflict", b"c" * 5601)
        put(st, region, "meta", b"M" * 5700, props={"nid": "4", "type": "stale"})
        # another tenant's public "public": ignored, ours is uploaded beside it
        m["theirs:" + region] = put(
            st, region, "public", b"P" * 5000, props={"nid": "1"}, owner=stack["other_tenant"]
        )
    with open(stack["sync_file"], "a") as fh:
        fh.write(f"\n[DEFAULT]\nforcesyncs = {m['forced'].id}\n")
    return m


EXPECTED_BEFORE = {
    "kernel": P.PENDING_UPLOAD,
    "ramdisk": P.PENDING_UPLOAD,
    "public": P.PENDING_UPLOAD,
    "forced": P.PENDING_UPLOAD,
    "conflict": P.ERROR_CHECKSUM,
    "meta": P.PENDING_METADATA,
    "ami": P.PENDING_UPLOAD,
}


def test_regions_per_target(stack):
    proc = cli(
        stack, "image", "regions", "--sync-config", stack["sync_file"], "-f", "json", check=0
    )
    rows = [(r["target"], r["region"]) for r in json.loads(proc.stdout)]
    assert rows == [
        ("master", "RegionOne"),
        ("master", "RegionThree"),
        ("master", "RegionTwo"),
        ("other", "other:RegionOther"),
    ]


def test_full_scenario(stack, scenario):
    got = status(stack)
    for region in (*REGIONS, OTHER):
        mine = {n: s for (r, n), s in got.items() if r == region}
        expected = dict(EXPECTED_BEFORE)
        if region == OTHER:  # nothing there yet
            expected.update(conflict=P.PENDING_UPLOAD, meta=P.PENDING_UPLOAD)
        assert mine == expected, region

    # the master region is reported like any other: each image to sync is ok,
    # and syncing it changes nothing
    master = status(stack, "RegionOne")
    assert master and set(master.values()) == {P.OK}
    assert {n for _r, n in master} == set(EXPECTED_BEFORE)
    before = snapshot(stack)
    cli(stack, "image", "sync", "RegionOne", "--sync-config", stack["sync_file"], check=0)
    assert snapshot(stack) == before

    bad = md5(b"c" * 5601)
    assert (
        status(stack, "RegionTwo", config=[f"master.dontupdate={bad}"])[("RegionTwo", "conflict")]
        == P.OK_STALLED_CHECKSUM
    )
    assert (
        status(stack, "RegionTwo", config=[f"master.replace={bad}"])[("RegionTwo", "conflict")]
        == P.PENDING_REPLACE
    )
    assert (
        status(stack, "RegionTwo", config=["master.rename=any"])[("RegionTwo", "conflict")]
        == P.PENDING_RENAME
    )
    assert (
        status(stack, "RegionTwo", config=["master.replace=any"])[("RegionTwo", "conflict")]
        == P.PENDING_REPLACE
    )

    # --dry-run writes nothing anywhere
    before = snapshot(stack)
    proc = cli(
        stack,
        "image",
        "sync",
        "--dry-run",
        "--sync-config",
        stack["sync_file"],
        "-f",
        "json",
        check=0,
    )
    planned = {(r["region"], r["action"], r["image"]) for r in json.loads(proc.stdout)}
    assert ("RegionTwo", "upload", "kernel") in planned
    assert ("RegionTwo", "obsolete", "old_obsolete") in planned
    assert snapshot(stack) == before

    # the real thing: rename in RegionTwo, replace in RegionThree, all of other:
    cli(
        stack,
        "image",
        "sync",
        "RegionTwo",
        "--sync-config",
        stack["sync_file"],
        "--config",
        "master.rename=any",
        check=0,
    )
    cli(
        stack,
        "image",
        "sync",
        "RegionThree",
        OTHER,
        "--parallel",
        "--sync-config",
        stack["sync_file"],
        "--config",
        "master.replace=any",
        check=0,
    )

    got = status(stack)
    for region in (*REGIONS, OTHER):
        mine = {n: s for (r, n), s in got.items() if r == region}
        assert mine == {n: P.OK for n in EXPECTED_BEFORE}, region

    project, st = stack["project"], stack["store"]
    for region in REGIONS:
        have = names(st, region, project)
        assert "private" not in have and "dup" not in have and "foreign" not in have
        assert "old" not in have and have["old_obsolete"][0].visibility == "private"
        assert have["forced"][0].visibility == "private"
        assert have["meta"][0].properties["type"] == "new"
        assert have["ami"][0].kernel_id == have["kernel"][0].id != scenario["kernel"].id
        assert have["ami"][0].ramdisk_id == have["ramdisk"][0].id != scenario["ramdisk"].id
        assert have["public"][0].os_hash_value == scenario["public"].os_hash_value
        # the other tenant's image of the same name is untouched
        theirs = names(st, region, stack["other_tenant"])["public"]
        assert scenario["theirs:" + region].id in {im.id for im in theirs}
    two = names(st, "RegionTwo", project)
    assert two["conflict.old"][0].visibility == "private"
    assert two["conflict"][0].checksum == scenario["conflict"].checksum
    three = names(st, "RegionThree", project)
    assert "conflict.old" not in three
    other = names(stack["other_store"], "RegionOther", stack["second_project"])
    assert other["ami"][0].kernel_id == other["kernel"][0].id

    # a second sync changes nothing
    before = snapshot(stack)
    proc = cli(stack, "image", "sync", "--sync-config", stack["sync_file"], "-f", "json", check=0)
    assert json.loads(proc.stdout) == []
    assert snapshot(stack) == before


def test_region_stopped_mid_run(stack, scenario):
    from tools.stack import glance as glance_stack

    extra = put(stack["store"], "RegionOne", f"{stack['name']}-late", b"L" * 3000)
    sync = imagesync.build(stack["conf"], stack["store"], stack["sync_file"])

    stopped = []

    def stop_three(region, plan):
        if not stopped:
            glance_stack.stop_region("RegionThree")
            stopped.append(True)

    try:
        report = sync.sync(["RegionTwo", "RegionThree", OTHER], before_apply=stop_three)
        assert [r.region for r in report.failed] == ["RegionThree"]
        assert "RegionThree" in report.summary()
        for region, st in (("RegionTwo", stack["store"]),):
            assert extra.name in {im.name for im in st.list_images(region)}
        other = stack["other_store"].list_images("RegionOther")
        assert extra.name in {im.name for im in other}

        # the CLI says which region failed and exits with the error's code
        proc = cli(stack, "image", "sync", "--sync-config", stack["sync_file"])
        assert proc.returncode == 9, proc.stderr
        assert "failed in 1 of 3 region(s): RegionThree:" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        glance_stack.start_region("RegionThree")
    cli(stack, "image", "sync", "RegionThree", "--sync-config", stack["sync_file"], check=0)
    assert extra.name in {im.name for im in stack["store"].list_images("RegionThree")}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("image", "sync", "RegionNowhere"), 5, "unknown region"),
        (("image", "sync", "nosuch:"), 3, "unknown target"),
        (
            ("image", "status", "--config", "master.metadata_condition=image.is_public and ("),
            10,
            "malformed metadata_condition",
        ),
        (("image", "status", "--config", "nopair"), 3, "invalid --config"),
    ],
)
def test_bad_input(stack, args, code, message):
    proc = cli(stack, *args, "--sync-config", stack["sync_file"])
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_wrong_credentials(stack, tmp_path):
    bad = tmp_path / "bad.conf"
    wrong = base64.b64encode(b"wrong").decode()
    bad.write_text(
        "[main]\nmaster_region = RegionOne\n[other]\n"
        f"credential = {stack['name']},{wrong},{stack['keystone']['second']['auth_url']},"
        f"{stack['name']}\n"
    )
    proc = cli(stack, "image", "status", "other:", "--sync-config", str(bad))
    assert proc.returncode == 10, proc.stderr
    assert "authentication failed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_glancesync_front_end(stack, scenario):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stowkit.cli.compat.glancesync",
            "--config-file",
            stack["conf_file"],
            "--sync-config",
            stack["sync_file"],
            "--show-status",
            "RegionTwo",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "ok,RegionTwo,ami" in lines and all(line.count(",") == 2 for line in lines)
