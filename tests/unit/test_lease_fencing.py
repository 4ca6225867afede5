"""What the fault tests found in the lease: a stolen lock stops writes at once, a slow
lock create is not trusted, and what could not be stored is recorded where it may be."""

from __future__ import annotations

import json
import threading
import time

import pytest
from oslo_config import cfg

from stowkit.corelib import blockcopy, blocklease, blocklock, config
from stowkit.corelib.blocklock import LOCK_KEY, DeviceLocked, LeaseLost
from stowkit.corelib.blockunstored import (
    UNSTORED_KEY,
    UnstoredRecord,
    unstored_records,
    write_local_record,
)
from tests.fakes.nbd import MemoryBlockStore

OSIZE = 4096


def new_store(cls=MemoryBlockStore, state_dir=None):
    store = cls()
    if state_dir is not None:
        conf = cfg.ConfigOpts()
        config.register_core_opts(conf)
        conf([], default_config_files=[])
        conf.set_override("state_dir", str(state_dir))
        store.conf = conf
    store.create_device("one", 16 * OSIZE, OSIZE)
    return store


def steal(store, device="one"):
    """What a second stowkit does: break the lock and take it."""
    blocklock.unlock(store, device, force=True)
    return blocklock.take(store, device, "rival")


def test_a_stolen_lock_stops_writes_before_the_next_renewal():
    store = new_store()
    lease = blocklease.Lease(store, "one", "me", 600).acquire()  # next renewal: 200 s away
    lease.write_object(0, b"a" * OSIZE)
    rival = steal(store)
    with pytest.raises(LeaseLost):
        lease.write_object(1, b"b" * OSIZE)
    with pytest.raises(LeaseLost):
        lease.delete_object(0)
    assert store.writes == [("one", 0)] and store.deletes == []
    assert lease.lost and lease.rival.token == rival.token and lease.refused == {0, 1}


class SettlingStore(MemoryBlockStore):
    """Creates that take ``create_delay`` seconds, on a store that settles like Swift."""

    settle_seconds = 0.05
    create_delay = 0.0

    def _control_create(self, device, key, data):
        time.sleep(self.create_delay)
        return super()._control_create(device, key, data)


def test_the_lock_is_reread_at_most_half_the_settle_time_before_a_write():
    store = new_store(SettlingStore)
    reads = []
    get = store._control_get
    store._control_get = lambda d, k: (reads.append(k), get(d, k))[1]
    lease = blocklease.Lease(store, "one", "me", 600).acquire()
    reads.clear()
    for i in range(8):  # back to back: one re-read serves them all
        lease.write_object(i, b"x" * OSIZE)
    assert reads.count(LOCK_KEY) == 1
    time.sleep(store.settle_seconds)
    steal(store)
    with pytest.raises(LeaseLost):
        lease.write_object(9, b"y" * OSIZE)
    assert ("one", 9) not in store.writes


def test_a_lock_create_slower_than_the_settle_time_is_not_trusted():
    store = new_store(SettlingStore)
    store.create_delay = 0.1  # twice the settle time
    with pytest.raises(DeviceLocked, match="longer than the settle time"):
        blocklock.take(store, "one", "slow")
    assert blocklock.read_lock(store, "one") is None  # its own lock object went with it
    store.create_delay = 0.0
    assert blocklock.take(store, "one", "fast").owner == "fast"


def test_of_two_racing_takers_the_late_landing_one_never_stores():
    # Swift's semantics: If-None-Match is checked when the PUT starts; the
    # newest timestamp (taken at the start) wins when it lands.
    class RacingSwift(SettlingStore):
        delays = [0.03, 0.2]  # the first create lands within the settle time, the second not

        def _control_create(self, device, key, data):
            if key != LOCK_KEY:
                return super()._control_create(device, key, data)
            with self.guard:
                if key in self.control[device]:
                    return False
                started = time.monotonic()
                delay = self.delays.pop(0)
            time.sleep(delay)
            with self.guard:
                landed = self.__dict__.setdefault("landed", {})
                if landed.get(key, -1.0) < started:
                    self.control[device][key] = data
                    landed[key] = started
            return True

    store = new_store(RacingSwift)
    results: dict[str, object] = {}

    def taker(name: str, delay: float) -> None:
        time.sleep(delay)
        lease = blocklease.Lease(store, "one", name, 600)
        try:
            lease.acquire()
            for _ in range(20):
                lease.write_object(0, name.encode() * (OSIZE // len(name)))
                time.sleep(0.02)
            results[name] = "stored"
        except (DeviceLocked, LeaseLost) as err:
            results[name] = err

    threads = [
        threading.Thread(target=taker, args=("aaaa", 0.0)),
        threading.Thread(target=taker, args=("bbbb", 0.01)),  # starts during the first create
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    writers = {d[1] for d in store.writes}
    assert writers == {0}
    stored_by = {bytes(store.objects["one"][0][:4])}
    assert results["aaaa"] == "stored" or isinstance(results["aaaa"], LeaseLost)
    assert isinstance(results["bbbb"], DeviceLocked), results
    assert "longer than the settle time" in str(results["bbbb"])
    assert stored_by == {b"aaaa"}  # nothing of the slow one ever landed


def test_the_unstored_record_goes_into_the_device_while_the_lease_is_ours(tmp_path):
    store = new_store(state_dir=tmp_path)
    lease = blocklease.Lease(store, "one", "me", 600).acquire()
    assert lease.record_unstored([3, 7, 8, 9], 4 * OSIZE, "backend down") == "device"
    (record,) = unstored_records(store, "one")
    assert record.objects == (3, 7, 8, 9) and record.bytes == 4 * OSIZE
    assert record.where == "device" and "me on" in record.by and record.reason == "backend down"
    assert json.loads(store.control["one"][UNSTORED_KEY])["objects"] == "3, 7-9"


def test_a_writer_that_lost_the_lease_records_locally_never_in_the_device(tmp_path):
    store = new_store(state_dir=tmp_path)
    lease = blocklease.Lease(store, "one", "me", 600).acquire()
    steal(store)
    where = lease.record_unstored([1], OSIZE, "lost")
    assert where.startswith(str(tmp_path)) and UNSTORED_KEY not in store.control["one"]
    (record,) = unstored_records(store, "one")
    assert record.where == where and record.objects == (1,)
    # The backend down: local as well, without trying the device.
    other = new_store(state_dir=tmp_path / "b")
    lease = blocklease.Lease(other, "one", "me", 600).acquire()
    assert lease.record_unstored([2], OSIZE, "down", local_only=True) != "device"
    assert UNSTORED_KEY not in other.control["one"]


def test_an_upload_that_loses_its_lease_records_what_it_did_not_store(tmp_path):
    store = new_store(state_dir=tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"z" * 16 * OSIZE)
    written = []
    write = store.write_object

    def slow_write(device, index, data):
        written.append(index)
        if len(written) == 4:
            steal(store)
        write(device, index, data)

    store.write_object = slow_write
    with pytest.raises(LeaseLost):
        blockcopy.upload(store, "one", str(src), threads=1)
    (record,) = unstored_records(store, "one")
    assert record.where.startswith(str(tmp_path))
    assert len(record.objects) == 16 - len(store.objects["one"]) and 15 in record.objects


def test_a_complete_upload_clears_the_records(tmp_path):
    store = new_store(state_dir=tmp_path)
    with blocklease.Lease(store, "one", "me", 600) as lease:
        lease.record_unstored([1], OSIZE, "earlier")
    write_local_record(store, UnstoredRecord("one", (2,), OSIZE, time.time(), "x", "older"))
    assert len(unstored_records(store, "one")) == 2
    src = tmp_path / "src"
    src.write_bytes(b"z" * OSIZE)
    blockcopy.upload(store, "one", str(src))
    assert unstored_records(store, "one") == []


def test_records_survive_garbage():
    assert UnstoredRecord.from_json(b"not json", "device") is None
    assert UnstoredRecord.from_json(b'{"objects": "x-y"}', "device") is None


def test_writers_waiting_for_a_failing_reread_share_its_failure():
    store = new_store(SettlingStore)
    lease = blocklease.Lease(store, "one", "me", 600).acquire()
    time.sleep(store.settle_seconds)  # the next write re-reads the lock
    calls = []

    def down(device, key):
        calls.append(key)
        time.sleep(0.2)  # a request that fails after a while
        raise OSError("swift down")

    store._control_get = down
    errors = []

    def write(i):
        try:
            lease.write_object(i, b"w" * OSIZE)
        except OSError as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # One failing request for the eight writers, not eight in a row (1.6 s).
    assert len(errors) == 8 and calls == [LOCK_KEY] and store.writes == []
