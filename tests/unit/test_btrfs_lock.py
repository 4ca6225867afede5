"""The btrfs driver's one per-volume lock (VolumeDriver.volume_lock), without btrfs.

Taking the lock needs btrfs only for the layout check, which is faked here
(and in the holder process); volumes are plain directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.errors import Locked
from stowkit.plugins.btrfs import subvol

# The holder process fakes the layout check as the fixture below does.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from stowkit.corelib import config, registry
    from stowkit.plugins.btrfs import subvol

    subvol.require_bindings = lambda: None
    subvol.btrfsutil = type("U", (), {"subvolume_id": staticmethod(lambda path: 5)})
    driver = registry.load("volume", config.load_conf(), "btrfs", root=sys.argv[1])
    with driver.volume_lock("v"):
        print("held", flush=True)
        time.sleep(600)
    """
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _OnBtrfs:
    """libbtrfsutil as far as the layout check asks: every path is on btrfs."""

    BtrfsUtilError = OSError

    @staticmethod
    def subvolume_id(path: str) -> int:
        return 5


@pytest.fixture
def driver(tmp_path, monkeypatch):
    monkeypatch.setattr(subvol, "require_bindings", lambda: None)
    monkeypatch.setattr(subvol, "btrfsutil", _OnBtrfs)
    monkeypatch.setattr(subvol, "is_subvolume", os.path.isdir)
    monkeypatch.setattr(subvol, "delete", shutil.rmtree)
    return registry.load("volume", config.load_conf(), "btrfs", root=str(tmp_path / "root"))


def _in_thread(fn, timeout: float = 10.0):
    """Run ``fn`` in another thread; its result or exception (a hang fails the test)."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the other thread is still waiting for the lock"
    return out


def _try(driver, name="v"):
    with driver.volume_lock(name, wait=False):
        return "got it"


def test_the_lock_is_reentrant_in_the_thread_that_holds_it(driver):
    with driver.volume_lock("v"):
        with driver.volume_lock("v", wait=False), driver.volume_lock("v"):
            pass
        # still held after the inner blocks left
        assert isinstance(_in_thread(lambda: _try(driver))["error"], Locked)
    assert _in_thread(lambda: _try(driver)) == {"result": "got it"}


def test_another_thread_without_waiting_gets_locked_with_the_jobs_message(driver):
    with driver.volume_lock("v"):
        error = _in_thread(lambda: _try(driver))["error"]
        assert isinstance(error, Locked)
        assert str(error) == "volume 'v' is busy with another job"
        assert _in_thread(lambda: _try(driver, "w")) == {"result": "got it"}  # per volume


def _waits_for_the_holder(driver, fn) -> None:
    """``fn`` in another thread does not finish while this thread holds v's lock, then does."""
    done = threading.Event()

    def other():
        fn()
        done.set()

    with driver.volume_lock("v"):
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not done.wait(0.3)
    assert done.wait(10)
    thread.join(10)


def test_another_thread_that_waits_gets_it_when_the_holder_leaves(driver):
    def other():
        with driver.volume_lock("v"):
            pass

    _waits_for_the_holder(driver, other)


def test_a_second_driver_in_the_same_thread_shares_the_holders_count(driver, tmp_path):
    again = registry.load("volume", config.load_conf(), "btrfs", root=str(tmp_path / "root"))
    with driver.volume_lock("v"), again.volume_lock("v", wait=False):
        pass


def test_another_process_gets_locked_and_a_dead_holders_lock_is_free(driver, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, driver.root], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(Locked):
            _try(driver)
        proc.send_signal(signal.SIGKILL)  # no finally runs: only the kernel frees it
        proc.wait(30)
        assert _try(driver) == "got it"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_driver_operations_inside_the_held_lock_do_not_deadlock(driver):
    os.makedirs(os.path.join(driver.volumes_dir, "v"))

    def job():
        with driver.volume_lock("v", wait=False):
            path = driver.mount("v", "m1")
            driver.unmount("v", "m1")
            driver.mount("v", "m2")
            cleared = driver.clear_mounts("v")
            driver.delete_volume("v")
            return path, cleared

    out = _in_thread(job)
    assert out == {"result": (os.path.join(driver.volumes_dir, "v"), ["m2"])}
    assert not os.path.exists(os.path.join(driver.volumes_dir, "v"))


def test_the_name_is_checked_before_anything(driver):
    from stowkit.corelib.errors import InvalidName

    with pytest.raises(InvalidName):
        driver.volume_lock("../x")
    assert not os.path.exists(driver.root)


def test_a_mount_does_not_wait_for_a_job_holding_the_volumes_lock(driver):
    # A job (a long replication) holds the volume's lock; Docker's Mount of
    # that volume must still answer, as it did before jobs shared the lock.
    os.makedirs(os.path.join(driver.volumes_dir, "v"))
    with driver.volume_lock("v"):
        out = _in_thread(lambda: driver.mount("v", "m1"))
        assert out == {"result": os.path.join(driver.volumes_dir, "v")}
        assert _in_thread(lambda: driver.unmount("v", "m1")) == {"result": None}


def test_a_purge_waits_for_the_job_holding_the_volumes_lock(driver):
    # The job may be sending a snapshot a purge would condemn as the parent.
    os.makedirs(os.path.join(driver.volumes_dir, "v"))
    _waits_for_the_holder(driver, lambda: driver.purge("v", "1h:1d"))
