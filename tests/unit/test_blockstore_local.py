"""The local BlockStore backend on temporary directories: devices, objects, locks."""

import os
import threading
import time

import pytest

from stowkit.corelib import blocklock, config, registry
from stowkit.corelib.blocklock import LOCK_KEY, DeviceLocked, LockInfo
from stowkit.corelib.blockstore import (
    DEFAULT_OBJECT_SIZE,
    BlockStore,
    BlockStoreCapability,
    check_geometry,
    is_zeros,
    object_index,
    object_name,
    zeros,
)
from stowkit.corelib.errors import AlreadyExists, InvalidArgument, InvalidName, Locked, NotFound
from stowkit.plugins.local.blocks import LocalBlockStore

OS = 64 << 10  # object size used in these tests


@pytest.fixture
def store(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    drv = registry.load("blockstore", conf, "local")
    assert isinstance(drv, LocalBlockStore)
    return drv


@pytest.fixture
def dev(store):
    return store.create_device("disk0", 16 * OS, OS)


def test_default_backend_and_path(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    drv = registry.load("blockstore", conf)
    assert isinstance(drv, LocalBlockStore)
    assert drv.root == str(tmp_path / "blocks")
    assert drv.capabilities == {BlockStoreCapability.RANGED_READ}


def test_object_names_sort_as_indexes():
    names = [object_name(i) for i in (0, 9, 10, 99, 100, 12345678, 99999999)]
    assert names == sorted(names)
    assert [object_index(n) for n in names] == [0, 9, 10, 99, 100, 12345678, 99999999]
    assert object_name(5) == "disk.part/00000005"
    for other in (LOCK_KEY, "disk.part/123", "disk.part/0000000x", "device.json"):
        assert object_index(other) is None


def test_default_object_size_divides_the_size():
    from stowkit.corelib.blockstore import DEFAULT_OBJECT_SIZE, default_object_size

    assert default_object_size(1 << 30) == DEFAULT_OBJECT_SIZE == 4 << 20
    assert default_object_size(10 << 20) == 2 << 20
    assert default_object_size(3 << 20) == 1 << 20
    assert default_object_size(12 << 10) == 4 << 10
    # No allowed object size divides these: the default, refused by check_geometry.
    assert default_object_size(6000) == default_object_size(0) == DEFAULT_OBJECT_SIZE


def test_zero_helpers():
    assert is_zeros(zeros(OS)) and is_zeros(b"") and is_zeros(bytearray(10))
    assert not is_zeros(b"\0" * 100 + b"\1")
    assert not is_zeros(b"\0\1")
    assert zeros(OS) is zeros(OS)


@pytest.mark.parametrize(
    "size, object_size, fragment",
    [
        (OS * 3, 3 << 10, "between"),
        (OS * 3, 128 << 20, "between"),
        (OS * 3, 96 << 10, "power of two"),
        (0, OS, "positive"),
        (OS + 1, OS, "multiple"),
        (10**8 * 4096 + 4096, 4096, "more than"),
    ],
)
def test_bad_geometry(size, object_size, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        check_geometry(size, object_size)


def test_create_get_list_delete(store, tmp_path):
    assert store.list_devices() == []
    dev = store.create_device("disk0", 16 * OS, OS)
    assert (dev.name, dev.size, dev.object_size, dev.object_count) == ("disk0", 16 * OS, OS, 16)
    got = store.get_device("disk0", details=True)
    assert got.size == 16 * OS and got.objects_stored == 0 and got.lock is None
    assert store.get_device("disk0").objects_stored is None
    store.create_device("disk1", 1 << 30)
    assert store.get_device("disk1").object_size == DEFAULT_OBJECT_SIZE
    assert [d.name for d in store.list_devices()] == ["disk0", "disk1"]
    with pytest.raises(AlreadyExists):
        store.create_device("disk0", 16 * OS, OS)
    # settings are stored with the device, in a small JSON file
    assert (tmp_path / "blocks" / "disk0" / "device.json").is_file()
    store.delete_device("disk0")
    with pytest.raises(NotFound):
        store.get_device("disk0")
    assert [d.name for d in store.list_devices()] == ["disk1"]
    assert sorted(os.listdir(tmp_path / "blocks")) == ["disk1"]


def test_list_ignores_strays(store, dev, tmp_path):
    (tmp_path / "blocks" / "notadevice").mkdir()
    (tmp_path / "blocks" / "file.txt").write_text("x")
    (tmp_path / "blocks" / ".tmp-half").mkdir()
    assert [d.name for d in store.list_devices()] == ["disk0"]


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "-x", "a b", "x" * 300])
def test_hostile_names_refused_before_any_io(store, tmp_path, name):
    with pytest.raises(InvalidName):
        store.create_device(name, OS, OS)
    with pytest.raises(InvalidName):
        store.read_object(name, 0)
    with pytest.raises(InvalidName):
        blocklock.take(store, name)
    assert not (tmp_path / "blocks").exists() or os.listdir(tmp_path / "blocks") == []


def test_objects_read_write_delete(store, dev):
    assert store.read_object("disk0", 3) is None  # never written: zeros
    data = os.urandom(OS)
    store.write_object("disk0", 3, data)
    store.write_object("disk0", 15, b"\x01" * OS)
    assert store.read_object("disk0", 3) == data
    assert list(store.list_objects("disk0")) == [3, 15]
    store.write_object("disk0", 3, b"\x02" * OS)  # replace
    assert store.read_object("disk0", 3) == b"\x02" * OS
    store.delete_object("disk0", 3)
    store.delete_object("disk0", 3)  # deleting a hole is fine
    assert store.read_object("disk0", 3) is None
    assert list(store.list_objects("disk0")) == [15]
    assert store.get_device("disk0", details=True).objects_stored == 1


def test_read_range(store, dev):
    data = os.urandom(OS)
    store.write_object("disk0", 2, data)
    assert store.read_range("disk0", 2, 100, 50) == data[100:150]
    assert store.read_range("disk0", 2, OS - 1, 1) == data[-1:]
    assert store.read_range("disk0", 4, 0, 10) is None  # a hole
    for start, length in ((-1, 4), (0, 0), (OS - 4, 8)):
        with pytest.raises(InvalidArgument, match="invalid range"):
            store.read_range("disk0", 2, start, length)


def test_object_checks(store, dev):
    with pytest.raises(InvalidArgument, match="past the end"):
        store.write_object("disk0", 16, zeros(OS))
    with pytest.raises(InvalidArgument, match="past the end"):
        store.read_object("disk0", 16)
    with pytest.raises(InvalidArgument, match="object size"):
        store.write_object("disk0", 0, b"short")
    with pytest.raises(InvalidArgument):
        store.read_object("disk0", -1)
    with pytest.raises(NotFound):
        store.read_object("nodisk", 0)
    with pytest.raises(NotFound):
        list(store.list_objects("nodisk"))


def test_write_is_atomic_no_temp_files_left(store, dev, tmp_path):
    store.write_object("disk0", 1, b"\x05" * OS)
    part = tmp_path / "blocks" / "disk0" / "disk.part"
    assert os.listdir(part) == ["00000001"]


def test_parallel_object_calls(store, dev):
    errors = []

    def work(i):
        try:
            for _ in range(5):
                store.write_object("disk0", i, bytes([i + 1]) * OS)
                assert store.read_object("disk0", i) == bytes([i + 1]) * OS
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list(store.list_objects("disk0")) == list(range(16))


def test_recreated_device_gets_new_geometry(store, dev):
    store.write_object("disk0", 0, b"\x01" * OS)
    store.delete_device("disk0")
    store.create_device("disk0", 4 * 2 * OS, 2 * OS)
    assert store.read_object("disk0", 0) is None
    store.write_object("disk0", 3, b"\x01" * 2 * OS)


# -- locks -------------------------------------------------------------------


def test_lock_is_exclusive_and_names_the_holder(store, dev):
    mine = blocklock.take(store, "disk0", "server-a", lease_seconds=60)
    assert mine.owner == "server-a" and mine.pid == os.getpid() and mine.taken_over is None
    with pytest.raises(DeviceLocked) as err:
        blocklock.take(store, "disk0", "server-b")
    assert isinstance(err.value, Locked)
    assert err.value.holder.token == mine.token
    assert "server-a" in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    assert store.get_device("disk0").lock.token == mine.token
    blocklock.unlock(store, "disk0", mine)
    assert blocklock.read_lock(store, "disk0") is None
    blocklock.take(store, "disk0", "server-b")


def test_lock_missing_device(store):
    with pytest.raises(NotFound):
        blocklock.take(store, "nodisk")
    with pytest.raises(NotFound):
        blocklock.unlock(store, "nodisk", force=True)


def test_renew_extends_and_detects_loss(store, dev):
    mine = blocklock.take(store, "disk0", "server-a", lease_seconds=5)
    renewed = blocklock.renew(store, "disk0", mine, lease_seconds=100)
    assert renewed.token == mine.token and renewed.expires > mine.expires
    assert blocklock.read_lock(store, "disk0").expires == renewed.expires
    broken = blocklock.unlock(store, "disk0", force=True)
    assert broken.token == mine.token
    with pytest.raises(DeviceLocked, match="gone"):
        blocklock.renew(store, "disk0", renewed)


def test_unlock_someone_elses_lock_needs_force(store, dev):
    theirs = blocklock.take(store, "disk0", "server-a")
    fake_mine = LockInfo.new("me", 10)
    with pytest.raises(DeviceLocked):
        blocklock.unlock(store, "disk0", fake_mine)
    with pytest.raises(DeviceLocked):
        blocklock.unlock(store, "disk0")
    broken = blocklock.unlock(store, "disk0", force=True)
    assert broken.token == theirs.token and broken.owner == "server-a"
    assert blocklock.unlock(store, "disk0", force=True) is None


def test_lock_without_lease_never_goes_stale(store, dev):
    manual = blocklock.take(store, "disk0", "by hand", lease_seconds=None)
    assert manual.expires is None and not manual.expired(now=time.time() + 10**9)
    with pytest.raises(DeviceLocked):
        blocklock.take(store, "disk0", "server")


def test_stale_lock_taken_over_only_after_lease(store, dev, caplog):
    old = blocklock.take(store, "disk0", "crashed-server", lease_seconds=120)
    with pytest.raises(DeviceLocked):
        blocklock.take(store, "disk0", "new-server")
    old = blocklock.renew(
        store, "disk0", old, lease_seconds=1.1
    )  # its last renewal, then it "died"
    while not blocklock.read_lock(store, "disk0").expired():
        time.sleep(0.05)
    new = blocklock.take(store, "disk0", "new-server")
    assert new.taken_over is not None and new.taken_over.token == old.token
    assert "took over the stale lock of crashed-server" in caplog.text
    assert blocklock.read_lock(store, "disk0").token == new.token
    # the crashed server, coming back, learns it lost the lock
    with pytest.raises(DeviceLocked, match="new-server"):
        blocklock.renew(store, "disk0", old)


def test_renew_refuses_an_expired_lease(store, dev):
    mine = blocklock.take(store, "disk0", "slow", lease_seconds=0.2)
    time.sleep(0.3)
    with pytest.raises(DeviceLocked, match="expired"):
        blocklock.renew(store, "disk0", mine)
    # ... but lock() takes our own stale lock back properly
    again = blocklock.take(store, "disk0", "slow")
    assert again.taken_over.token == mine.token


def test_concurrent_takeover_has_one_winner(store, dev):
    blocklock.take(store, "disk0", "crashed", lease_seconds=0.1)
    time.sleep(0.2)
    winners, losers = [], []
    barrier = threading.Barrier(8)

    def contend(i):
        barrier.wait()
        try:
            winners.append(blocklock.take(store, "disk0", f"taker-{i}"))
        except DeviceLocked as exc:
            losers.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert blocklock.read_lock(store, "disk0").token == winners[0].token


def test_concurrent_fresh_lock_has_one_winner(store, dev):
    winners = []
    barrier = threading.Barrier(8)

    def contend(i):
        barrier.wait()
        try:
            winners.append(blocklock.take(store, "disk0", f"locker-{i}"))
        except DeviceLocked:
            pass

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1


def test_unreadable_lock_is_held_by_unknown_and_never_stale(store, dev, tmp_path):
    (tmp_path / "blocks" / "disk0" / LOCK_KEY).write_text("garbage")
    holder = blocklock.read_lock(store, "disk0")
    assert holder.owner == "unreadable lock object" and not holder.expired()
    with pytest.raises(DeviceLocked):
        blocklock.take(store, "disk0")
    assert blocklock.unlock(store, "disk0", force=True).owner == "unreadable lock object"


def test_delete_refused_while_locked(store, dev):
    store.write_object("disk0", 0, b"\x01" * OS)
    blocklock.take(store, "disk0", "server")
    with pytest.raises(DeviceLocked, match="server"):
        store.delete_device("disk0")
    assert store.read_object("disk0", 0) == b"\x01" * OS
    broken = store.delete_device("disk0", force=True)
    assert broken.owner == "server"
    with pytest.raises(NotFound):
        store.get_device("disk0")


def test_lock_roundtrips_as_json():
    lock = LockInfo.new("x", 10)
    assert LockInfo.from_json(lock.to_json()) == lock
    assert "x on" in lock.describe() and "lease until" in lock.describe()


def test_interface_is_abstract():
    with pytest.raises(TypeError):
        BlockStore(config.load_conf(), "blockstore_x")  # type: ignore[abstract]
