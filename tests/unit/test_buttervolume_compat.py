"""stowkit-buttervolume keeps buttervolume's verbs and arguments, over an in-memory driver."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from stowkit.cli.compat import buttervolume
from tests.fakes.volumes import FakeDriver


@pytest.fixture
def bv(tmp_path, monkeypatch):
    driver = FakeDriver()
    driver.create_volume("v1")
    monkeypatch.setattr(buttervolume.registry, "load", lambda ns, conf: driver)
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")

    def run(*argv):
        out = io.StringIO()
        code = buttervolume.main(["--config-file", str(conf), *argv], out=out)
        return code, out.getvalue()

    run.driver = driver
    return run


def test_snapshot_snapshots_rm(bv):
    code, out = bv("snapshot", "v1")
    snap = out.strip()
    assert code == 0 and snap.startswith("v1@")
    assert bv("snapshots") == (0, f"{snap}\n")
    assert bv("snapshots", "v1") == (0, f"{snap}\n")
    assert bv("snapshots", "other") == (0, "")
    assert bv("rm", snap) == (0, "")
    assert bv("snapshots") == (0, "")


def test_schedule_verbs(bv):
    assert bv("schedule", "snapshot", "60", "v1") == (0, "")
    assert bv("schedule", "replicate:backup1", "1440", "v1") == (0, "")
    # buttervolume's lines, its trailing space after an active job included
    assert bv("scheduled") == (0, "snapshot 60 v1 \nreplicate:backup1 1440 v1 \n")
    assert bv("schedule", "snapshot", "pause", "v1") == (0, "")
    assert bv("scheduled", "list")[1].splitlines()[0] == "snapshot 60 v1 (paused)"
    assert bv("schedule", "snapshot", "resume", "v1") == (0, "")
    assert bv("scheduled", "pause") == (0, "")
    assert bv("scheduled") == (1, "")  # globally paused: refused, see test_buttervolume_parity
    assert bv("scheduled", "resume") == (0, "")
    assert bv("schedule", "snapshot", "0", "v1") == (0, "")
    assert bv("schedule", "replicate:backup1", "delete", "v1") == (0, "")
    assert bv("scheduled") == (0, "")


def test_restore_clone_send_sync_purge(bv):
    drv = bv.driver
    snap = bv("snapshot", "v1")[1].strip()
    code, out = bv("restore", "v1")  # a volume name: its latest snapshot
    assert code == 0 and out.startswith("v1@")  # the backup taken first
    assert bv("restore", snap, "v2")[0] == 0 and "v2" in drv.volumes
    assert bv("clone", "v1", "v3") == (0, "v3\n")
    assert bv("send", "backup1", snap) == (0, "")
    assert ("send", snap, "backup1") in drv.calls
    assert bv("sync", "v1", "h1", "h2") == (0, "")
    assert ("sync", "v1", ("h1", "h2")) in drv.calls
    assert bv("purge", "--dryrun", "4h:1d", "v1") == (0, "")  # its lines go to stderr
    assert ("purge", "v1", "4h:1d", True) in drv.calls


def test_errors_are_one_line_with_exit_codes(bv, capsys):
    assert bv("snapshot", "../x")[0] == 4
    assert bv("snapshot", "nope")[0] == 5
    assert bv("clone", "v1", "v1")[0] == 6
    assert bv("clone", "v1")[0] == 3
    assert bv("restore", "v1")[0] == 5  # no snapshot yet
    snap = bv("snapshot", "v1")[1].strip()
    bv.driver.ids["v1"] = {"c1"}
    assert bv("restore", "v1")[0] == 7  # mounted
    assert bv("restore", "--force", "v1")[0] == 0
    bv.driver.unreachable.add("down")
    assert bv("send", "down", snap)[0] == 9
    assert bv("sync", "v1", "down")[0] == 9
    assert bv("schedule", "replicate:a;b", "5", "v1")[0] == 3
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 9, err  # one line per failing call
    assert all(line.startswith("stowkit-buttervolume: ") for line in lines)
    assert "Traceback" not in err


def test_usage_errors_and_missing_config():
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "stowkit.cli.compat.buttervolume", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = cli("snapshot")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("--config-file", "/nonexistent.conf", "snapshots")
    assert proc.returncode == 10 and "config file not found" in proc.stderr
    proc = cli("purge", "4h:1d")
    assert proc.returncode == 2
    proc = cli("--help")
    for word in ("run", "snapshots", "scheduled", "restore", "clone", "send", "sync", "rm"):
        assert word in proc.stdout
