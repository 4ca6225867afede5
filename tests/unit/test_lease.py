"""The Lease: one object answering "may I write to this device now?"."""

from __future__ import annotations

import os
import threading

import pytest

from stowkit.corelib import blockcopy, blocklease, blocklock
from stowkit.corelib.blocklock import DeviceLocked, LeaseLost, LockInfo
from tests.fakes.nbd import MemoryBlockStore, intercept_lock

OSIZE = 4096


@pytest.fixture
def store():
    s = MemoryBlockStore()
    s.create_device("d", 32 * OSIZE, OSIZE)
    return s


def steal(store, device="d", owner="rival"):
    """Break the lock by hand and let a rival take it."""
    blocklock.unlock(store, device, force=True)
    return blocklock.take(store, device, owner)


def test_a_lost_lease_refuses_every_write_and_names_the_rival(store, caplog):
    lease = blocklease.Lease(store, "d", "me").acquire()
    lease.write_object(0, b"a" * OSIZE)
    rival = steal(store)
    assert not lease.renew()
    assert lease.lost and lease.rival.token == rival.token
    with pytest.raises(LeaseLost, match="now held by rival"):
        lease.write_object(1, b"b" * OSIZE)
    with pytest.raises(LeaseLost):
        lease.delete_object(0)
    assert store.writes == [("d", 0)] and store.deletes == []
    assert lease.refused == {0, 1}
    assert "rival" in caplog.text
    lease.release()
    assert blocklock.read_lock(store, "d").token == rival.token  # the rival's lock is left alone


def test_an_unconfirmed_lease_stores_nothing(store):
    lease = blocklease.Lease(store, "d", "me").acquire(confirm=False)
    with pytest.raises(DeviceLocked, match="not confirmed"):
        lease.write_object(0, b"a" * OSIZE)
    lease.confirm()
    lease.write_object(0, b"a" * OSIZE)
    lease.release()
    assert blocklock.read_lock(store, "d") is None


def test_a_lease_whose_renewals_keep_failing_runs_out(store, monkeypatch):
    lease = blocklease.Lease(store, "d", "me", lease_seconds=2.0).acquire()

    def down(*args):
        raise OSError("backend down")

    intercept_lock(monkeypatch, store, "renew", down)
    assert not lease.renew() and lease.valid  # one failure: still within the lease
    threading.Event().wait(1.1)  # 2 s lease - 1 s margin
    assert lease.lost
    with pytest.raises(LeaseLost, match="ran out"):
        lease.write_object(0, b"a" * OSIZE)


class _SlowRenewStore(MemoryBlockStore):
    """Holds a renewal between its read and its PUT of the lock until told."""

    def __init__(self) -> None:
        super().__init__()
        self.in_put = threading.Event()
        self.proceed = threading.Event()
        self.hold = False

    def _control_replace(self, device, key, data):
        if self.hold:
            self.in_put.set()
            self.proceed.wait(10)
        super()._control_replace(device, key, data)


def test_release_waits_for_a_renewal_in_flight():
    store = _SlowRenewStore()
    store.create_device("d", 32 * OSIZE, OSIZE)
    lease = blocklease.Lease(store, "d", "me", lease_seconds=30).acquire()
    store.hold = True
    renewer = threading.Thread(target=lease.renew)
    renewer.start()
    assert store.in_put.wait(5)
    releaser = threading.Thread(target=lease.release)
    releaser.start()
    releaser.join(0.3)
    assert releaser.is_alive()  # waits for the renewal's PUT
    store.proceed.set()
    renewer.join(5)
    releaser.join(5)
    assert blocklock.read_lock(store, "d") is None  # the renewal did not bring it back


def test_unlock_naming_a_holder_leaves_another_holders_lock(store):
    dead = LockInfo.new("old", 60)
    rival = blocklock.take(store, "d", "rival")
    with pytest.raises(DeviceLocked, match="rival") as err:
        blocklock.unlock(store, "d", expected=dead)
    assert err.value.holder.token == rival.token
    assert blocklock.read_lock(store, "d").token == rival.token
    assert blocklock.unlock(store, "d", expected=rival).token == rival.token
    assert blocklock.read_lock(store, "d") is None


class _StealingStore(MemoryBlockStore):
    """A rival breaks the lock by hand and takes it after ``after`` writes."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def write_object(self, device, index, data):
        super().write_object(device, index, data)
        if len(self.writes) == self.after:
            steal(self, device)
            lease = blocklease.held_lease(self, device)
            lease.renew()  # what the renewal thread would find next


def test_upload_stops_as_soon_as_its_lock_is_lost(tmp_path):
    store = _StealingStore(after=3)
    store.create_device("d", 32 * OSIZE, OSIZE)
    src = tmp_path / "img"
    src.write_bytes(os.urandom(32 * OSIZE))
    with pytest.raises(LeaseLost, match="rival.*stopped after 3 objects stored"):
        with blocklease.held(store, "d", "upload"):
            blockcopy.upload(store, "d", str(src), threads=1)
    assert len(store.writes) == 3  # nothing stored after the loss
    assert blocklock.read_lock(store, "d").owner == "rival"


def test_upload_without_a_held_lock_takes_its_own(store, tmp_path):
    src = tmp_path / "img"
    src.write_bytes(os.urandom(2 * OSIZE))
    stats = blockcopy.upload(store, "d", str(src), threads=2)
    assert stats.stored == 2 and blocklock.read_lock(store, "d") is None
    blocklock.take(store, "d", "someone")
    with pytest.raises(DeviceLocked, match="someone"):
        blockcopy.upload(store, "d", str(src))
