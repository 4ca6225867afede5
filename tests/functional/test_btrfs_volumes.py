"""Volumes and snapshots on the harness's real loop-image btrfs."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import subprocess
import sys

import btrfsutil
import pytest

from stowkit.cli.app import main
from stowkit.corelib.errors import AlreadyExists, Conflict, InvalidName, NotFound
from stowkit.corelib.volume import split_snapshot_name
from stowkit.plugins.btrfs import subvol
from tests.fakes.harness import REPO


@pytest.fixture
def a(hosts):
    return hosts[0]


def test_create_list_show_delete(a):
    drv = a.driver
    vol = drv.create_volume("data")
    assert vol.path == str(a.path("volumes", "data"))
    assert os.path.isdir(vol.path)
    (a.path("volumes", "data") / "f").write_bytes(b"x" * 10000)
    assert [v.name for v in drv.list_volumes()] == ["data"]
    shown = drv.get_volume("data", with_size=True)
    assert shown.size >= 10000
    assert shown.created is not None and shown.snapshot_count == 0 and shown.mount_count == 0
    with pytest.raises(AlreadyExists):
        drv.create_volume("data")
    drv.delete_volume("data")
    assert drv.list_volumes() == []
    with pytest.raises(NotFound):
        drv.get_volume("data")


def test_cli_create_list_show_delete(a):
    proc = a.stowkit("volume", "create", "web", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    # copy-on-write by default, as btrfs, Docker's local driver and buttervolume 3.13
    assert json.loads(proc.stdout)["options"] == "compression=none,copyonwrite=true"
    listed = json.loads(a.stowkit("volume", "list", "-f", "json").stdout)
    assert [row["name"] for row in listed] == ["web"]
    shown = json.loads(a.stowkit("volume", "show", "web", "-f", "json").stdout)
    assert shown["path"] == str(a.path("volumes", "web")) and shown["size"] == 0
    again = a.stowkit("volume", "create", "web")
    assert again.returncode == AlreadyExists.exit_code
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert a.stowkit("volume", "delete", "web").returncode == 0
    missing = a.stowkit("volume", "show", "web")
    assert missing.returncode == NotFound.exit_code and "Traceback" not in missing.stderr


def test_nocow_on_request_and_compression_really_set(a):
    drv = a.driver
    plain = drv.create_volume("db", {"copyonwrite": "false"})
    packed = drv.create_volume("logs", {"compression": "zstd"})
    default = drv.create_volume("web")
    lsattr = subprocess.run(
        ["lsattr", "-d", plain.path, packed.path, default.path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "C" in lsattr[0].split()[0]  # no copy-on-write
    assert "C" not in lsattr[1].split()[0]
    assert "C" not in lsattr[2].split()[0]  # copy-on-write by default
    assert drv.get_volume("web").options == {"copyonwrite": "true", "compression": "none"}
    # buttervolume's compression=true
    assert drv.create_volume("bv", {"compression": "true"}).options["compression"] == "zstd"
    prop = subprocess.run(
        ["btrfs", "property", "get", packed.path, "compression"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert prop.strip() == "compression=zstd"
    # a file written later inherits both
    (a.path("volumes", "db") / "f").write_text("x")
    attrs = subprocess.run(
        ["lsattr", str(a.path("volumes", "db") / "f")], capture_output=True, text=True, check=True
    ).stdout
    assert "C" in attrs.split()[0]
    assert drv.get_volume("logs").options == {"copyonwrite": "true", "compression": "zstd"}
    assert drv.get_volume("db").options == {"copyonwrite": "false", "compression": "none"}
    cli = a.stowkit("volume", "create", "z", "-o", "compression=lzo", "-f", "json")
    assert cli.returncode == 0, cli.stderr
    assert "compression=lzo" in json.loads(cli.stdout)["options"]


def test_clone_refuses_an_existing_target_and_never_nests(a):
    drv = a.driver
    drv.create_volume("src")
    (a.path("volumes", "src") / "f").write_text("data")
    drv.create_volume("taken")
    with pytest.raises(AlreadyExists):
        drv.clone_volume("src", "taken")
    assert os.listdir(a.path("volumes", "taken")) == []
    clone = drv.clone_volume("src", "copy")
    assert (a.path("volumes", "copy") / "f").read_text() == "data"
    (a.path("volumes", "copy") / "f").write_text("changed")
    assert (a.path("volumes", "src") / "f").read_text() == "data"
    assert clone.name == "copy"
    proc = a.stowkit("volume", "clone", "src", "taken")
    assert proc.returncode == AlreadyExists.exit_code


def test_snapshots_create_list_delete(a):
    drv = a.driver
    drv.create_volume("v")
    drv.create_volume("w")
    s1 = drv.create_snapshot("v")
    s2 = drv.create_snapshot("v")
    drv.create_snapshot("w")
    assert split_snapshot_name(s1.name)[0] == "v"
    assert s1.name < s2.name and s1.created < s2.created
    # read-only
    with pytest.raises(OSError):
        (a.path("snapshots", s1.name) / "f").write_text("x")
    assert [s.name for s in drv.list_snapshots("v")] == [s1.name, s2.name]
    assert len(drv.list_snapshots()) == 3
    assert drv.get_volume("v").snapshot_count == 2
    drv.delete_snapshot(s1.name)
    assert [s.name for s in drv.list_snapshots("v")] == [s2.name]
    with pytest.raises(NotFound):
        drv.delete_snapshot(s1.name)
    cli = a.stowkit("snapshot", "create", "v", "-f", "json")
    assert cli.returncode == 0, cli.stderr
    name = json.loads(cli.stdout)["name"]
    listed = json.loads(a.stowkit("snapshot", "list", "v", "-f", "json").stdout)
    assert [r["name"] for r in listed] == [s2.name, name]
    assert a.stowkit("snapshot", "delete", name).returncode == 0


def test_restore_snapshots_current_data_first(a):
    drv = a.driver
    drv.create_volume("v")
    f = a.path("volumes", "v") / "f"
    f.write_text("one")
    s1 = drv.create_snapshot("v")
    f.write_text("two")
    result = drv.restore(s1.name)
    assert f.read_text() == "one"
    assert result.backup and result.volume == "v"
    assert (a.path("snapshots", result.backup) / "f").read_text() == "two"
    # a volume name means its newest snapshot: now the backup, holding "two"
    again = drv.restore("v")
    assert again.snapshot == result.backup
    assert f.read_text() == "two"
    # onto a new target: no backup needed
    other = drv.restore(s1.name, "restored")
    assert other.backup is None
    assert (a.path("volumes", "restored") / "f").read_text() == "one"
    cli = a.stowkit("snapshot", "restore", s1.name, "-f", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["backup"]
    assert f.read_text() == "one"
    with pytest.raises(NotFound):
        drv.restore("nosuchvolume")


def test_mounted_volume_restore_needs_force_and_keeps_the_mounted_tree(a, tmp_path):
    drv = a.driver
    drv.create_volume("v")
    vpath = a.path("volumes", "v")
    (vpath / "f").write_text("old")
    snap = drv.create_snapshot("v")
    (vpath / "f").write_text("current")
    # what a container does: bind-mount the volume's directory
    container = tmp_path / "container"
    container.mkdir()
    subprocess.run(["mount", "--bind", str(vpath), str(container)], check=True)
    try:
        drv.mount("v", "c1")
        assert drv.get_volume("v").mount_count == 1
        with pytest.raises(Conflict):
            drv.restore(snap.name)
        with pytest.raises(Conflict):
            drv.delete_volume("v")
        cli = a.stowkit("snapshot", "restore", snap.name)
        assert cli.returncode == Conflict.exit_code and "mounted" in cli.stderr
        result = drv.restore(snap.name, force=True)
        # the volume's path has the restored data ...
        assert (vpath / "f").read_text() == "old"
        # ... and the running container still has its tree, writable, not deleted
        assert (container / "f").read_text() == "current"
        (container / "late").write_text("written after the restore")
        assert not (vpath / "late").exists()
        assert (a.path("snapshots", result.backup) / "f").read_text() == "current"
    finally:
        subprocess.run(["umount", str(container)], check=True)
    # the last unmount keeps the detached tree, late writes included, as a snapshot
    before = {s.name for s in drv.list_snapshots("v")}
    drv.unmount("v", "c1")
    added = [s for s in drv.list_snapshots("v") if s.name not in before]
    assert len(added) == 1
    assert (a.path("snapshots", added[0].name) / "late").exists()
    assert os.listdir(a.path(".detached")) == []
    assert drv.get_volume("v").mount_count == 0


def test_mount_accounting_is_per_mount_id_and_persistent(a):
    drv = a.driver
    drv.create_volume("v")
    assert drv.mount("v", "id1") == str(a.path("volumes", "v"))
    drv.mount("v", "id1")
    drv.mount("v", "id2")
    assert sorted(drv.mounts("v")) == ["id1", "id2"]
    # another process (the CLI) sees the same counts
    shown = json.loads(a.stowkit("volume", "show", "v", "-f", "json").stdout)
    assert shown["mount_count"] == 2
    assert a.make_driver().mounts("v") == ["id1", "id2"]
    drv.unmount("v", "id1")
    drv.unmount("v", "unknown")
    assert drv.mounts("v") == ["id2"]
    drv.unmount("v", "id2")
    drv.delete_volume("v")


def test_list_and_create_spawn_no_process(a, monkeypatch):
    drv = a.driver
    for i in range(30):
        drv.create_volume(f"v{i:02d}")

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(os, "system", no_process)
    drv.create_volume("one-more", {"compression": "zstd"})
    volumes = drv.list_volumes()
    assert len(volumes) == 31
    drv.get_volume("v05")
    drv.create_snapshot("v05")
    assert volumes[5].snapshot_count == 0


def test_list_ignores_what_is_not_a_volume(a):
    drv = a.driver
    drv.create_volume("real")
    os.makedirs(a.path("volumes", "plain-dir"))
    os.makedirs(a.path("volumes", ".hidden"))
    a.path("volumes", "file").write_text("x")
    assert [v.name for v in drv.list_volumes()] == ["real"]


HOSTILE = [
    "../x",
    "..",
    "a/b",
    "/tmp/p",
    "x;touch /tmp/p",
    "$(touch /tmp/p)",
    "a b",
    "-rf",
    "x" * 300,
    "",
]


def outside_state(a) -> set[str]:
    # what must not change: the mount's top level, the root's parent and /tmp/p
    top = a.root.parent
    return {str(p) for p in top.iterdir()} | {str(p) for p in a.path().iterdir()}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_refused_on_every_command(a, name, capsys):
    a.driver.create_volume("ok")
    snap = a.driver.create_snapshot("ok").name
    before = outside_state(a)
    volumes_before = sorted(os.listdir(a.path("volumes")))
    commands = [
        ("volume", "create", name),
        ("volume", "show", name),
        ("volume", "delete", name),
        ("volume", "clone", "ok", name),
        ("volume", "clone", name, "ok2"),
        ("volume", "sync", name, "127.0.0.1"),
        ("snapshot", "create", name),
        ("snapshot", "list", name),
        ("snapshot", "delete", name),
        ("snapshot", "delete", f"{name}@2026-11-22T03-40-05.123456"),
        ("snapshot", "restore", name),
        ("snapshot", "restore", snap, name),
        ("snapshot", "send", f"{name}@2026-11-22T03-40-05.123456", "127.0.0.1"),
        ("snapshot", "send", snap, name or "x y"),
        ("snapshot", "purge", name, "2h:2h"),
    ]
    for args in commands:
        # "--" so that names starting with '-' reach the command, not argparse.
        # In-process: the same main() as the stowkit script, without 15 interpreter starts.
        argv = ["--config-file", str(a.config_file), *args[:2], "--", *args[2:]]
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (InvalidName.exit_code, 3), (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not os.path.exists("/tmp/p")
    assert outside_state(a) == before
    assert sorted(os.listdir(a.path("volumes"))) == volumes_before


def test_purge_dry_run_then_real(a):
    drv = a.driver
    drv.create_volume("v")
    names = [drv.create_snapshot("v").name for _ in range(3)]
    now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    dry = drv.purge("v", "2h:2h", dry_run=True, now=now)
    assert dry.deleted == names[:2] and dry.protected == {names[2]: "newest snapshot"}
    assert [s.name for s in drv.list_snapshots("v")] == names
    done = drv.purge("v", "2h:2h", now=now)
    assert done.deleted == names[:2]
    assert [s.name for s in drv.list_snapshots("v")] == names[2:]
    cli = a.stowkit("snapshot", "purge", "v", "1h:1d", "--dry-run", "-f", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == [{"snapshot": names[2], "action": "kept", "reason": ""}]
    bad = a.stowkit("snapshot", "purge", "v", "4h")
    assert bad.returncode == 3 and "pattern" in bad.stderr


def test_a_job_holding_the_volume_lock_runs_every_driver_operation(a):
    """What a scheduler job does: hold the lock, then call operations that take it too."""
    drv = a.driver

    def other_process() -> str:
        argv = [sys.executable, "-c", LOCK_PROBE, str(a.root)]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    drv.create_volume("v")
    with drv.volume_lock("v", wait=False):
        first = drv.create_snapshot("v")
        drv.mount("v", "m1")
        drv.unmount("v", "m1")
        restored = drv.restore(first.name)
        purged = drv.purge("v", "1h:1d")
        assert restored.backup and purged.deleted == []
        # meanwhile a job on the volume in another process is refused at once
        assert other_process() == "busy: volume 'v' is busy with another job"
        drv.delete_volume("v")
    assert other_process() == "free"


LOCK_PROBE = """
import sys
from stowkit.corelib import config, registry
from stowkit.corelib.errors import Locked
driver = registry.load("volume", config.load_conf(), "btrfs", root=sys.argv[1])
try:
    with driver.volume_lock("v", wait=False):
        print("free")
except Locked as exc:
    print("busy:", exc)
"""


def otime(path) -> dt.datetime:
    return dt.datetime.fromtimestamp(btrfsutil.subvolume_info(str(path)).otime, dt.UTC)


class NoIoctl:
    """Stands in for libbtrfsutil: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"libbtrfsutil.{name} used")


def no_ioctl(*args, **kwargs):
    raise AssertionError("ioctl used")


def test_list_uses_no_ioctl_and_dates_volumes_honestly(a, monkeypatch):
    drv = a.driver
    drv.create_volume("src")
    (a.path("volumes", "src") / "f").write_text("one")
    snap = drv.create_snapshot("src")
    before_clone = dt.datetime.now(dt.UTC)
    drv.clone_volume("src", "copy")
    drv.restore(snap.name, "restored")
    created = {v: drv.get_volume(v).created for v in ("src", "copy", "restored")}
    for name, when in created.items():
        # the time stowkit records is the subvolume's own creation time (to the second)
        assert abs(when - otime(a.path("volumes", name))) < dt.timedelta(seconds=1), name
    # a clone or restore is dated when it was made, not when its source was
    assert created["src"] < before_clone <= created["copy"] <= created["restored"]
    os.makedirs(a.path("volumes", "plain-dir"))
    # List: one scan, an lstat and an xattr per volume, no ioctl at all
    monkeypatch.setattr(subvol, "btrfsutil", NoIoctl())
    monkeypatch.setattr(fcntl, "ioctl", no_ioctl)
    listed = drv.list_volumes()
    assert [(v.name, v.created) for v in listed] == sorted(created.items())
    assert [v.snapshot_count for v in listed] == [0, 0, 1]


def test_a_volume_made_by_another_tool_is_listed_and_dated_by_show(a):
    drv = a.driver
    drv.list_volumes()  # lays out the root
    btrfsutil.create_subvolume(str(a.path("volumes", "foreign")))
    (listed,) = drv.list_volumes()
    assert listed.name == "foreign" and listed.created is None  # no cheap honest source
    real = otime(a.path("volumes", "foreign"))
    assert drv.get_volume("foreign").created == real == drv.volume_created("foreign")


CRASH = """
import json, os, signal, sys
from stowkit.corelib import config, registry
from stowkit.plugins.btrfs import subvol
drv = registry.load("volume", config.load_conf(), "btrfs", **json.loads(sys.argv[1]))
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(subvol, sys.argv[2], die)
getattr(drv, sys.argv[3])(*sys.argv[4:])
"""


def crash(a, step: str, *call: str) -> None:
    """Run a driver call in another process that is SIGKILLed at ``step``."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, json.dumps(a.settings), step, *call],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr


def hidden(a) -> list[str]:
    return sorted(n for n in os.listdir(a.path("volumes")) if n.startswith("."))


def test_a_crashed_create_is_collected_but_a_running_one_is_not(a):
    drv = a.driver
    crash(a, "rename", "create_volume", "crashed")  # killed before the rename into place
    (left,) = hidden(a)
    assert left.startswith(".new-crashed-")
    assert [v.name for v in drv.list_volumes()] == []
    # another process is creating "busy" right now: its temporary must survive
    with drv.layout.temporary("new", "busy") as busy:
        subvol.create(busy)
        proc = a.stowkit("volume", "cleanup", "-f", "json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == [{"item": left, "result": "deleted"}]
        assert hidden(a) == [os.path.basename(busy)]
        subvol.delete(busy)
    assert hidden(a) == []
    assert os.listdir(a.path(".locks", "tmp")) == []
    # a temporary with no lock file (an older stowkit's) is left alone while young
    btrfsutil.create_subvolume(str(a.path("volumes", ".new-old-0123456789ab")))
    assert drv.cleanup() == []
    assert drv.cleanup(min_age=0) == [(".new-old-0123456789ab", "deleted")]
    drv.create_volume("crashed")  # the name was never taken


def test_a_crashed_restore_keeps_the_swapped_out_data(a):
    drv = a.driver
    drv.create_volume("v")
    f = a.path("volumes", "v") / "f"
    f.write_text("old")
    snap = drv.create_snapshot("v")
    f.write_text("current")
    crash(a, "delete", "restore", snap.name)  # killed after the swap, before the delete
    assert f.read_text() == "old"
    (left,) = hidden(a)
    assert left.startswith(".restore-v-")
    before = {s.name for s in drv.list_snapshots("v")}
    ((item, outcome),) = drv.cleanup()
    (kept,) = {s.name for s in drv.list_snapshots("v")} - before
    assert item == left and outcome == f"kept as snapshot {kept}"
    assert (a.path("snapshots", kept) / "f").read_text() == "current"
    assert hidden(a) == [] and os.listdir(a.path(".detached")) == []


def test_mount_ids_of_an_earlier_boot_do_not_block(a):
    drv = a.driver
    drv.create_volume("v")
    record = a.path(".mounts", "v")
    record.write_text(json.dumps({"boot_id": "a-boot-before-the-crash", "ids": ["gone"]}))
    assert drv.mounts("v") == [] and drv.get_volume("v").mount_count == 0
    assert drv.list_volumes()[0].mount_count == 0
    drv.mount("v", "new")  # Docker starts the container again after the reboot
    assert drv.mounts("v") == ["new"]
    assert json.loads(record.read_text())["ids"] == ["new"]
    drv.unmount("v", "new")
    drv.delete_volume("v")


def test_volume_unmount_forgets_stale_ids(a):
    drv = a.driver
    drv.create_volume("v")
    drv.mount("v", "c1")
    drv.mount("v", "c2")
    drv.mount("v", "c3")
    assert a.stowkit("volume", "delete", "v").returncode == Conflict.exit_code
    one = a.stowkit("volume", "unmount", "v", "--id", "c1", "--id", "nope", "-f", "value")
    assert one.returncode == 0, one.stderr
    assert one.stdout.split() == ["c1"]
    assert drv.mounts("v") == ["c2", "c3"]
    every = a.stowkit("volume", "unmount", "v", "--all", "-f", "value")
    assert every.returncode == 0, every.stderr
    assert every.stdout.split() == ["c2", "c3"]
    assert drv.mounts("v") == [] and not a.path(".mounts", "v").exists()
    assert a.stowkit("volume", "delete", "v").returncode == 0
    usage = a.stowkit("volume", "unmount", "v")
    assert usage.returncode == 2 and "--all" in usage.stderr
    hostile = a.stowkit("volume", "unmount", "../x", "--all")
    assert hostile.returncode == InvalidName.exit_code


def test_compression_forcing_copy_on_write_is_said(a):
    # said when the configured default is copyonwrite=false
    with open(a.config_file, "a") as f:
        f.write("copyonwrite = false\n")
    proc = a.stowkit("volume", "create", "z", "-o", "compression=zstd", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["options"] == "compression=zstd,copyonwrite=true"
    assert "copyonwrite=true because compression needs copy-on-write" in proc.stderr
    quiet = a.stowkit(
        "volume", "create", "y", "-o", "compression=zstd", "-o", "copyonwrite=true", "-f", "json"
    )
    assert quiet.returncode == 0 and quiet.stderr == ""
    plain = a.stowkit("volume", "create", "x", "-f", "json")
    assert plain.returncode == 0 and plain.stderr == ""
    refused = a.stowkit("volume", "create", "w", "-o", "compression=zstd", "-o", "copyonwrite=no")
    assert refused.returncode == 3 and "compression needs copy-on-write" in refused.stderr


def test_list_reuses_what_it_read_only_for_the_same_subvolume(a, monkeypatch):
    drv = a.driver
    first = drv.create_volume("kept")
    drv.create_volume("replaced")
    drv.list_volumes()  # what each volume is, read once
    # another tool replaces one volume by a new subvolume of the same name, undated
    btrfsutil.delete_subvolume(str(a.path("volumes", "replaced")))
    btrfsutil.create_subvolume(str(a.path("volumes", "replaced")))
    # a plain directory where a volume was: never a volume
    btrfsutil.create_subvolume(str(a.path("volumes", "gone")))
    assert "gone" in [v.name for v in drv.list_volumes()]
    btrfsutil.delete_subvolume(str(a.path("volumes", "gone")))
    os.makedirs(a.path("volumes", "gone"))
    reads = []
    real_created = subvol.created
    monkeypatch.setattr(subvol, "created", lambda p: reads.append(p) or real_created(p))
    listed = {v.name: v.created for v in drv.list_volumes()}
    assert listed == {"kept": first.created, "replaced": None}
    # the unchanged volume came from what was read before; the new one was read
    assert reads == [str(a.path("volumes", "replaced"))]
    # the new volume is undated, so it is read again next time; the old one never
    reads.clear()
    drv.list_volumes()
    assert reads == [str(a.path("volumes", "replaced"))]
    # and a volume removed meanwhile is gone at once
    drv.delete_volume("kept")
    assert [v.name for v in drv.list_volumes()] == ["replaced"]
    assert drv.volume_entries() == [("replaced", str(a.path("volumes", "replaced")), None)]
