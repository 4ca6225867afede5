"""Each named lock rule, in its one place (stowkit.corelib.blocklock / blocklease)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from stowkit.corelib import blockcopy, blocklease, blocklock, config, registry
from stowkit.corelib.blocklease import UnlockedWriter
from stowkit.corelib.blocklock import DeviceLocked, LockInfo
from stowkit.corelib.blockstore import BlockStore
from stowkit.corelib.errors import NotFound
from stowkit.corelib.nbd.cache import ObjectCache
from stowkit.plugins.local.blocks import LocalBlockStore
from stowkit.plugins.swift.store import SwiftBlockStore
from tests.fakes.nbd import MemoryBlockStore, ServerThread, intercept_lock

OSIZE = 4096


def new_store() -> MemoryBlockStore:
    store = MemoryBlockStore()
    store.create_device("one", 8 * OSIZE, OSIZE)
    return store


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def lock_of(owner: str, **changes) -> LockInfo:
    return dataclasses.replace(LockInfo.new(owner, 60), **changes)


# -- renewal timing -------------------------------------------------------------------


def test_a_lease_is_renewed_every_third_of_it_never_faster_than_the_floor():
    assert blocklock.renew_every(30) == 10
    assert blocklock.renew_every(0.03) == blocklock.MIN_RENEW_INTERVAL


def test_a_lease_and_a_served_device_take_their_renewal_timing_from_the_one_rule(monkeypatch):
    asked = []

    def rule(lease_seconds):
        asked.append(lease_seconds)
        return 600.0  # no renewal during the test

    monkeypatch.setattr(blocklease, "renew_every", rule)
    store = new_store()
    with blocklease.Lease(store, "one", "me", 45):
        pass
    assert asked == [45]
    server = ServerThread(store, ["one"], lease=30)  # lock_scope server: leased at start
    try:
        assert asked == [45, 30]
    finally:
        server.stop()


# -- reclaim a dead local holder ---------------------------------------------------------


def test_the_lock_of_a_dead_holder_of_this_host_with_our_owner_is_reclaimable():
    dead = lock_of("srv", host=socket.gethostname(), pid=dead_pid())
    assert blocklock.reclaimable(dead, "srv")


@pytest.mark.parametrize(
    "changes",
    [
        {"pid": os.getppid()},  # alive
        {"pid": os.getpid()},  # ourselves
        {"host": "elsewhere.example"},  # another host's process: cannot tell
    ],
)
def test_a_live_or_foreign_holder_is_not_reclaimable(changes):
    holder = lock_of("srv", **{"host": socket.gethostname(), **changes})
    assert not blocklock.reclaimable(holder, "srv")


def test_a_dead_holder_with_another_owner_is_not_reclaimable():
    dead = lock_of("stowkit blockstore lock", host=socket.gethostname(), pid=dead_pid())
    assert not blocklock.reclaimable(dead, "srv")


def test_our_own_lock_left_behind_is_reclaimable_whoever_it_names():
    leftover = lock_of("srv", host="elsewhere.example")
    assert blocklock.reclaimable(leftover, "srv", leftover=leftover)


def test_a_lease_reclaiming_breaks_a_dead_holders_lock_and_takes_it():
    store = new_store()
    dead = lock_of("srv", host=socket.gethostname(), pid=dead_pid())
    store.control["one"][blocklock.LOCK_KEY] = dead.to_json()
    with pytest.raises(DeviceLocked):
        blocklease.Lease(store, "one", "srv").acquire()  # without reclaim: refused
    lease = blocklease.Lease(store, "one", "srv").acquire(reclaim=True)
    try:
        assert blocklock.read_lock(store, "one").token == lease.info.token
    finally:
        lease.release()


# -- release now or retry later ------------------------------------------------------------


class _FlakyUnlock(MemoryBlockStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def flaky_unlock(self, unlock, store, device, lock=None, force=False, expected=None):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OSError("backend down")
        return unlock(store, device, lock, force, expected)


def test_a_release_that_failed_is_retried_until_the_lock_is_gone(monkeypatch):
    monkeypatch.setattr(blocklock, "RELEASE_RETRY_INTERVAL", 0.01)
    store = _FlakyUnlock(failures=3)
    intercept_lock(monkeypatch, store, "unlock", store.flaky_unlock)
    store.create_device("one", 8 * OSIZE, OSIZE)
    mine = blocklock.take(store, "one", "me")
    blocklock.release_later(store, "one", mine, 30).join(10)
    assert store.attempts == 4 and blocklock.read_lock(store, "one") is None


def test_a_release_retried_later_leaves_a_lock_taken_meanwhile(monkeypatch):
    monkeypatch.setattr(blocklock, "RELEASE_RETRY_INTERVAL", 0.01)
    store = _FlakyUnlock(failures=1)
    intercept_lock(monkeypatch, store, "unlock", store.flaky_unlock)
    store.create_device("one", 8 * OSIZE, OSIZE)
    mine = blocklock.take(store, "one", "me")
    del store.control["one"][blocklock.LOCK_KEY]  # broken by hand meanwhile
    rival = blocklock.take(store, "one", "rival")
    blocklock.release_later(store, "one", mine, 30).join(10)
    assert store.attempts == 2 and blocklock.read_lock(store, "one").token == rival.token


def test_a_lease_whose_release_failed_hands_back_its_lock_for_reclaim(monkeypatch):
    started = []
    monkeypatch.setattr(blocklease, "release_later", lambda *args: started.append(args))
    store = new_store()
    lease = blocklease.Lease(store, "one", "me", 30).acquire()
    assert lease.retry_release_later() == lease.info
    assert started == [(store, "one", lease.info, 30)]


# -- break only the holder you read ---------------------------------------------------------


def test_breaking_the_lock_read_removes_that_lock_and_names_it():
    store = new_store()
    held = blocklock.take(store, "one", "someone", None)
    seen = []
    assert blocklock.break_lock_read(store, "one", seen.append).token == held.token
    assert [s.token for s in seen] == [held.token] and blocklock.read_lock(store, "one") is None


def test_breaking_the_lock_read_leaves_one_taken_after_the_read():
    store = new_store()
    blocklock.take(store, "one", "someone", None)

    def meanwhile(_holder):
        store.control["one"][blocklock.LOCK_KEY] = LockInfo.new("rival", None).to_json()

    with pytest.raises(DeviceLocked) as err:
        blocklock.break_lock_read(store, "one", meanwhile)
    assert err.value.holder.owner == "rival" and blocklock.read_lock(store, "one").owner == "rival"


def test_breaking_an_unlocked_device_is_nothing_and_a_missing_one_not_found(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    store = registry.load("blockstore", conf, "local")
    store.create_device("one", 8 * OSIZE, OSIZE)
    assert blocklock.break_lock_read(store, "one") is None
    with pytest.raises(NotFound):
        blocklock.break_lock_read(store, "nope")


# -- may this device be copied ---------------------------------------------------------------


def test_a_device_held_by_a_live_lease_may_not_be_copied():
    store = new_store()
    held = blocklock.take(store, "one", "writer", 60)
    dev = dataclasses.replace(store.get_device("one"), lock=blocklock.read_lock(store, "one"))
    assert blocklock.lock_refusing_copy(dev).token == held.token


def test_a_device_unlocked_or_with_a_stale_lock_may_be_copied():
    store = new_store()
    dev = store.get_device("one")
    assert blocklock.lock_refusing_copy(dev) is None
    stale = lock_of("writer", expires=time.time() - 1)
    assert blocklock.lock_refusing_copy(dataclasses.replace(dev, lock=stale)) is None


# -- settle then re-read ----------------------------------------------------------------------


class _Settling(MemoryBlockStore):
    settle_seconds = 0.05

    def __init__(self, rival: bytes | None = None, slow: float = 0.0) -> None:
        super().__init__()
        self.rival, self.slow = rival, slow

    def _control_create(self, device, key, data):
        time.sleep(self.slow)
        return super()._control_create(device, key, data)

    def _settle(self):
        super()._settle()
        if self.rival is not None:  # a rival's create that started together landed last
            self.control["one"]["k"] = self.rival


def test_a_create_is_kept_only_if_it_is_still_ours_after_the_settle_time():
    store = _Settling()
    store.create_device("one", 8 * OSIZE, OSIZE)
    assert blocklock.settled_create(store, "one", "k", b"mine", lambda c: c == b"mine").created
    store = _Settling(rival=b"theirs")
    store.create_device("one", 8 * OSIZE, OSIZE)
    got = blocklock.settled_create(store, "one", "k", b"mine", lambda c: c == b"mine")
    assert not got.created and not got.untrusted


def test_a_create_slower_than_the_settle_time_is_untrusted():
    store = _Settling(slow=0.06)
    store.create_device("one", 8 * OSIZE, OSIZE)
    got = blocklock.settled_create(store, "one", "k", b"mine", lambda c: c == b"mine")
    assert got.untrusted


# -- writers ------------------------------------------------------------------------------


def test_a_held_lock_logs_a_takeover_once(caplog):
    store = new_store()
    blocklock.take(store, "one", "gone", 60)
    stale = LockInfo.from_json(store.control["one"][blocklock.LOCK_KEY])
    store.control["one"][blocklock.LOCK_KEY] = dataclasses.replace(
        stale, expires=time.time() - 5
    ).to_json()
    with caplog.at_level(logging.WARNING), blocklease.held(store, "one", "copy") as lease:
        assert lease.info.taken_over is not None
    assert sum("took over the stale lock" in r.getMessage() for r in caplog.records) == 1


def test_an_upload_inside_a_held_lock_stores_through_that_lease(tmp_path):
    store = new_store()
    src = tmp_path / "img"
    src.write_bytes(b"\x01" * OSIZE)
    with blocklease.held(store, "one", "copy") as lease:
        assert blocklease.lease_for(store, "one") is lease
        blockcopy.upload(store, "one", str(src))
        assert blocklock.read_lock(store, "one").token == lease.info.token  # not locked twice
    assert store.objects["one"][0] == b"\x01" * OSIZE


def test_an_unlocked_writer_stores_and_deletes_through_the_store():
    store = new_store()
    writer = UnlockedWriter(store, "one")
    writer.write_object(2, b"\x02" * OSIZE)
    writer.delete_object(2)
    assert store.writes == [("one", 2)] and store.deletes == [("one", 2)]


class _RecordingWriter:
    def __init__(self, device: str) -> None:
        self.device = device
        self.calls: list[tuple[str, int]] = []

    def write_object(self, index: int, data: bytes) -> None:
        self.calls.append(("write", index))

    def delete_object(self, index: int) -> None:
        self.calls.append(("delete", index))


def test_the_cache_stores_and_deletes_only_through_its_writer():
    async def main():
        store = new_store()
        writer = _RecordingWriter("one")
        cache = ObjectCache(store, store.get_device("one"), capacity=4 * OSIZE, writer=writer)
        await cache.start()
        await cache.write(0, b"\x03" * OSIZE)
        await cache.write(OSIZE, bytes(OSIZE))
        await cache.flush()
        await cache.close()
        return writer.calls

    assert sorted(asyncio.run(main())) == [("delete", 1), ("write", 0)]
    # (the store itself saw neither: only the writer stores)


# -- the layering ----------------------------------------------------------------------

#: The lock methods BlockStore once carried: the lock layer now takes the store
#: as its first argument (blocklock.take(store, ...), blocklease.Lease(store, ...)).
FORMER_LOCK_METHODS = (
    "get_lock",
    "lock",
    "lock_unconfirmed",
    "confirm_lock",
    "renew",
    "unlock",
    "lease",
    "held_lease",
)


@pytest.mark.parametrize(
    "store_class", [BlockStore, SwiftBlockStore, LocalBlockStore], ids=lambda c: c.__name__
)
def test_a_block_store_is_storage_only_with_no_lock_method(store_class):
    public = {name for name in dir(store_class) if not name.startswith("_")}
    assert sorted(public.intersection(FORMER_LOCK_METHODS)) == []
    assert sorted(n for n in public if "lock" in n.lower() or "lease" in n.lower()) == []
