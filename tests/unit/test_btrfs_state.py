"""The btrfs backend's small records: mount IDs per boot, temporaries' locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from stowkit.plugins.btrfs import state
from tests.fakes.volumes import FakeDriver


def test_boot_id_is_the_kernels():
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert state.boot_id() == f.read().strip() != ""


def test_mount_ids_of_an_earlier_boot_are_stale(tmp_path):
    record = str(tmp_path / "v")
    state.write_mounts(record, "boot-1", ["c1", "c2"])
    assert json.loads((tmp_path / "v").read_text()) == {"boot_id": "boot-1", "ids": ["c1", "c2"]}
    assert state.read_mounts(record, "boot-1") == ["c1", "c2"]
    # the host crashed and came back: no container of boot-1 can still run
    assert state.read_mounts(record, "boot-2") == []


def test_older_records_count_as_this_boot(tmp_path):
    (tmp_path / "v").write_text('["c1"]')  # the format before boot IDs were kept
    assert state.read_mounts(str(tmp_path / "v"), "any") == ["c1"]
    assert state.read_mounts(str(tmp_path / "missing"), "any") == []
    (tmp_path / "bad").write_text('{"boot_id": 5')
    assert state.read_mounts(str(tmp_path / "bad"), "any") == []


HOLDER = textwrap.dedent(
    """
    import sys, time
    from stowkit.plugins.btrfs import state
    with state.held(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
    """
)


def test_a_lock_held_by_a_live_process_is_not_abandoned(tmp_path):
    lock = str(tmp_path / ".new-v-0123456789ab")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, lock], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not state.abandoned(lock)
        # the holder dies without cleaning up (SIGKILL: no finally runs)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert os.path.exists(lock)
        assert state.abandoned(lock)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_held_removes_its_file_and_a_missing_file_is_abandoned(tmp_path):
    lock = str(tmp_path / "t")
    with state.held(lock):
        assert os.path.exists(lock)
        assert not state.abandoned(lock)  # another open file: flock conflicts in-process too
    assert not os.path.exists(lock)
    assert state.abandoned(lock)


def test_default_clear_mounts_forgets_every_id():
    drv = FakeDriver()
    drv.create_volume("v")
    drv.mount("v", "a")
    drv.mount("v", "b")
    assert drv.clear_mounts("v") == ["a", "b"]
    assert drv.mounts("v") == []
    assert drv.cleanup() == []


@pytest.mark.parametrize("name", ["../x", "a b"])
def test_clear_mounts_checks_the_name(name):
    from stowkit.corelib.errors import InvalidName

    with pytest.raises(InvalidName):
        FakeDriver().clear_mounts(name)
