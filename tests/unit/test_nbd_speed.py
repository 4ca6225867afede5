"""What the speed work changed, held: one copy per upload, and lock re-reads that
do not stall every writer (doc/nbd.md, Speed)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

import pytest

from stowkit.corelib import blocklease, blocklock
from stowkit.corelib.blocklock import LOCK_KEY, LeaseLost
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.cache import ObjectCache
from stowkit.plugins.swift.store import Resendable, SwiftBlockStore
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread
from tests.fakes.swift import FakeSwift, swift_store

OSIZE = 4096


class RecordingStore(MemoryBlockStore):
    """Keeps the very objects write_object was given, and how upload_body made them."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: dict[int, object] = {}
        self.snapshots = 0

    def upload_body(self, data):
        self.snapshots += 1
        return super().upload_body(data)

    def write_object(self, device, index, data):
        self.bodies[index] = data
        super().write_object(device, index, data)


def test_an_upload_is_one_snapshot_shared_with_the_cache():
    async def main():
        store = RecordingStore()
        device = store.create_device("d", 4 * OSIZE, OSIZE)
        cache = ObjectCache(store, device, capacity=4 * OSIZE, workers=2)
        await cache.start()
        await cache.write(0, b"\x01" * OSIZE)
        await cache.flush()
        body = store.bodies[0]
        assert store.snapshots == 1 and isinstance(body, bytes)
        # The cache holds the uploaded snapshot itself, not a second copy.
        assert cache._entries[0].data is body
        # A later write copies it back (copy on write): what was sent stays as sent.
        await cache.write(10, b"\x02" * 5)
        assert body == b"\x01" * OSIZE
        assert bytes(await cache.read(8, 8)) == b"\x01\x01" + b"\x02" * 5 + b"\x01"
        await cache.flush()
        assert store.objects["d"][0][10:15] == b"\x02" * 5 and store.snapshots == 2
        await cache.close()

    asyncio.run(main())


def test_swift_sends_its_upload_body_without_copying_it_again(monkeypatch):
    store = SwiftBlockStore.__new__(SwiftBlockStore)
    sent = []

    class Conn:
        def put_object(self, container, obj, contents, **kwargs):
            sent.append(contents)

    class Opts:
        send_etag = True
        container_prefix = ""

    monkeypatch.setattr(store, "_call", lambda what, fn, *a, **k: fn(Conn(), *a, **k))
    monkeypatch.setattr(store, "_check_object", lambda *a: None)
    monkeypatch.setattr(SwiftBlockStore, "opts", Opts(), raising=False)
    body = store.upload_body(bytearray(b"\x05" * OSIZE))
    assert isinstance(body, Resendable) and body == b"\x05" * OSIZE
    store.write_object("dev", 0, body)
    assert sent[0] is body
    store.write_object("dev", 1, b"\x06" * OSIZE)  # plain bytes: wrapped to be resendable
    assert isinstance(sent[1], Resendable)


class SettlingStore(MemoryBlockStore):
    settle_seconds = 0.4  # verify_every 0.2 s: reads ahead from 0.05 s


def lease_with_reads():
    store = SettlingStore()
    store.create_device("one", 16 * OSIZE, OSIZE)
    reads = []
    get = store._control_get
    store._control_get = lambda d, k: (reads.append(k), get(d, k))[1]
    lease = blocklease.Lease(store, "one", "me", 600).acquire()
    reads.clear()
    return store, lease, reads


def test_past_a_quarter_of_the_verify_time_one_writer_reads_the_lock_ahead():
    store, lease, reads = lease_with_reads()
    lease._seen = time.monotonic()
    lease.write_object(0, b"x" * OSIZE)
    assert reads.count(LOCK_KEY) == 0  # just read: covered
    lease._seen = time.monotonic() - lease.verify_every * 0.3
    lease.write_object(0, b"x" * OSIZE)
    assert reads.count(LOCK_KEY) == 1  # read before it runs out, not after
    assert time.monotonic() - lease._seen < lease.verify_every / 4


def test_writers_covered_by_the_last_read_do_not_wait_for_the_read_ahead():
    store, lease, reads = lease_with_reads()
    lease._seen = time.monotonic() - lease.verify_every * 0.75
    with lease._verify_lock:  # another writer is reading ahead right now
        done = threading.Event()
        writer = threading.Thread(target=lambda: (lease.write_object(1, b"y" * OSIZE),
                                                  done.set()))  # fmt: skip
        writer.start()
        assert done.wait(10)  # it did not queue behind the read
    writer.join()
    assert reads.count(LOCK_KEY) == 0 and store.objects["one"][1] == b"y" * OSIZE


def test_a_failing_read_ahead_does_not_fail_a_covered_write():
    store, lease, reads = lease_with_reads()
    lease._seen = time.monotonic() - lease.verify_every * 0.75

    def down(device, key):
        raise OSError("swift is down")

    store._control_get = down
    lease.write_object(2, b"z" * OSIZE)  # the last read still covers it
    lease._seen = time.monotonic() - lease.verify_every * 1.5
    with pytest.raises(OSError):  # not covered any more: the read must succeed
        lease.write_object(3, b"z" * OSIZE)
    assert 3 not in store.objects["one"]


def test_a_read_ahead_that_finds_a_rival_stops_the_write():
    store, lease, reads = lease_with_reads()
    lease._seen = time.monotonic() - lease.verify_every * 0.75
    blocklock.unlock(store, "one", force=True)
    blocklock.take(store, "one", "rival")
    with pytest.raises(LeaseLost):
        lease.write_object(4, b"w" * OSIZE)
    assert 4 not in store.objects["one"] and lease.lost


# -- memory: the bench's peak RSS figure ---------------------------------------------------


def test_writers_wait_for_room_before_their_bytes_enter_the_cache():
    async def main():
        store = MemoryBlockStore()
        store.write_gate = threading.Event()  # uploads hang: nothing makes room
        device = store.create_device("d", 16 * OSIZE, OSIZE)
        cache = ObjectCache(store, device, capacity=4 * OSIZE, workers=2)
        await cache.start()
        half = OSIZE // 2  # partial writes: each one makes a new object
        writes = [asyncio.ensure_future(cache.write(i * OSIZE, b"\x03" * half))
                  for i in range(8)]  # fmt: skip
        await asyncio.sleep(0.2)
        peak = cache.cached_bytes
        admitted = sum(1 for i in range(8) if i in cache._entries)
        store.write_gate.set()
        await asyncio.wait_for(asyncio.gather(*writes), 10)
        await cache.flush()
        assert peak <= cache.capacity and admitted <= 4  # not all 8 copied in at once
        assert all(store.objects["d"][i][:half] == b"\x03" * half for i in range(8))
        await cache.close()

    asyncio.run(main())


def test_the_in_flight_bound_is_shared_by_the_connections_to_an_export():
    store = MemoryBlockStore()
    store.create_device("one", 64 * OSIZE, OSIZE)
    store.write_gate = threading.Event()  # every FUA write waits: payloads pile up
    t = ServerThread(store, ["one"], max_inflight_bytes=2 * OSIZE)
    clients = []
    try:
        for _ in range(2):
            c = RawClient(t.port)
            c.greet()
            c.go("one")
            clients.append(c)
        for n, c in enumerate(clients):
            for i in range(4):
                index = n * 4 + i
                c.request(p.CMD_WRITE, index * OSIZE, OSIZE, flags=p.CMD_FLAG_FUA,
                          data=bytes([index + 1]) * OSIZE, cookie=index)  # fmt: skip
        time.sleep(0.5)
        held = sum(len(conn._tasks) for conn in t.server._connections)
        assert held <= 2  # two requests' payloads for both connections, not each
        store.write_gate.set()
        for c in clients:
            assert sorted(c.reply()[1] for _ in range(4)) == [0] * 4
        assert store.objects["one"][7] == b"\x08" * OSIZE
    finally:
        store.write_gate.set()
        for c in clients:
            c.close()
        t.stop()


def test_freed_big_buffers_go_back_to_the_system():
    import subprocess
    import sys

    script = """
import sys
from stowkit.corelib.nbd import memory
if sys.argv[1] == "fixed" and not memory.return_big_buffers():
    print("no-glibc"); raise SystemExit
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) >> 10
big = 4 << 20
del bytearray(big)[:]  # freed once: glibc's dynamic threshold now takes 4 MiB from the heap
keep = [bytearray(big) for _ in range(32)]
last = keep[-1]
before = rss()
del keep  # all but the last (which keeps the heap from shrinking)
print(before - rss())
"""
    freed = {}
    for mode in ("dynamic", "fixed"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        if out == "no-glibc":
            pytest.skip("not glibc: malloc's thresholds are not ours to set")
        freed[mode] = int(out)
    assert freed["fixed"] >= 100  # MiB of the 124 freed went back at once
    assert freed["dynamic"] < freed["fixed"]  # what the fix is for (glibc's default)


# -- uploads that send the cached buffer itself ---------------------------------------------


class LendingStore(MemoryBlockStore):
    """Lends like Swift: write_object reads the very buffer the cache holds."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def lend_body(self, data):
        return memoryview(data)

    def write_object(self, device, index, data):
        super().write_object(device, index, data)
        self.sent.append(bytes(data))


def test_a_write_during_a_lent_upload_copies_the_buffer_first():
    async def main():
        store = LendingStore()
        store.write_gate = threading.Event()  # the upload waits, holding the lent buffer
        device = store.create_device("d", 4 * OSIZE, OSIZE)
        cache = ObjectCache(store, device, capacity=4 * OSIZE, workers=2)
        await cache.start()
        await cache.write(0, b"\x01" * OSIZE)  # whole: its upload starts at once
        await asyncio.sleep(0.1)
        lent = cache._entries[0]
        assert lent.upload is not None and lent.lent
        await cache.write(0, b"\x02" * 16)  # meanwhile: must not change what is sent
        store.write_gate.set()
        await cache.flush()
        # The first upload sent what was written when it began, then the newer data.
        assert store.sent == [b"\x01" * OSIZE, b"\x02" * 16 + b"\x01" * (OSIZE - 16)]
        assert store.objects["d"][0] == b"\x02" * 16 + b"\x01" * (OSIZE - 16)
        assert not cache._entries[0].lent and not cache._entries[0].dirty
        await cache.close()

    asyncio.run(main())


def test_swift_sends_a_lent_buffer_whole_through_swiftclient_and_again_on_503():
    FakeSwift.reset(fail_next_puts=1)
    with swift_store(FakeSwift) as store:
        data = bytearray(os.urandom(OSIZE))
        body = store.lend_body(data)
        assert not isinstance(body, bytes)  # shares the bytearray: no copy
        store.write_object("dev", 2, body)
        want = (bytes(data), hashlib.md5(data).hexdigest())
        assert FakeSwift.bodies == [want, want]  # whole each time, with its MD5


def test_the_profile_hook_sees_every_thread(tmp_path, monkeypatch):
    import pstats

    from stowkit.corelib.nbd import profiling

    def in_a_worker_thread():
        return sum(range(1000))

    out = tmp_path / "server.prof"
    monkeypatch.setenv(profiling.ENV, str(out))
    assert profiling.start()
    try:
        worker = threading.Thread(target=in_a_worker_thread)
        worker.start()
        worker.join()
    finally:
        assert profiling.stop() == str(out)
    names = {func for _, _, func in pstats.Stats(str(out)).stats}
    assert "in_a_worker_thread" in names


def test_without_the_variable_nothing_is_profiled(monkeypatch):
    from stowkit.corelib.nbd import profiling

    monkeypatch.delenv(profiling.ENV, raising=False)
    assert not profiling.start() and profiling.stop() is None


def test_object_calls_of_many_threads_look_the_device_up_once():
    store = MemoryBlockStore()
    store.create_device("dev", 64 * OSIZE, OSIZE)
    lookups = []
    get = store.get_device

    def slow_get(name, details=False):
        lookups.append(name)
        time.sleep(0.05)  # a lookup queued behind uploads
        return get(name, details)

    store.get_device = slow_get
    threads = [threading.Thread(target=store._check_object, args=("dev", i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert lookups == ["dev"]


def test_a_cache_tells_the_store_its_device_so_uploads_need_no_lookup():
    store = MemoryBlockStore()
    device = store.create_device("dev", 64 * OSIZE, OSIZE)
    lookups = []
    get = store.get_device
    store.get_device = lambda name, details=False: (lookups.append(name), get(name, details))[1]
    ObjectCache(store, device, capacity=8 * OSIZE, workers=2)
    store._check_object("dev", 3, b"\0" * OSIZE)
    assert lookups == []


def test_sequential_reads_keep_prefetching_once_the_cache_is_full():
    # Objects the reader has gone past make way for the next ones: a full
    # cache used to stop the readahead, leaving each read to wait for its GET.
    store = MemoryBlockStore()
    device = store.create_device("dev", 64 * OSIZE, OSIZE)
    for index in range(64):
        store.objects["dev"][index] = bytes([index]) * OSIZE
    cache = ObjectCache(store, device, capacity=4 * OSIZE, workers=2, readahead=2 * OSIZE)

    async def main() -> list[bytes]:
        await cache.start()
        out = []
        for index in range(32):
            out.append(bytes(await cache.read(index * OSIZE, OSIZE)))
            for _ in range(100):  # let the prefetches land
                if not cache._loading:
                    break
                await asyncio.sleep(0.001)
        await cache.close()
        return out

    out = asyncio.run(main())
    assert out == [bytes([i]) * OSIZE for i in range(32)]
    assert cache.stats.prefetched >= 28  # nearly every object was on its way before its read
    assert cache.cached_bytes <= 4 * OSIZE


def test_object_buffers_are_reused_and_never_while_in_use():
    from stowkit.corelib.nbd.buffers import BufferPool

    pool = BufferPool(16, 64)
    held = bytearray(16)
    others = [held]
    pool.give_back(held)  # someone else holds it: not kept
    view_of = bytearray(16)
    view = memoryview(view_of)
    pool.give_back(view_of)  # a memoryview of it is alive: not kept
    assert pool.kept == 0 and others and view

    def let_go() -> None:
        free = bytearray(b"x" * 16)
        pool.give_back(free)

    let_go()
    assert pool.kept == 16
    assert pool.zeroed() == bytearray(16) and pool.reused == 1  # filled again, zeros
    let_go()
    assert pool.copy(b"y" * 16) == b"y" * 16 and pool.reused == 2


class SharingStore(MemoryBlockStore):
    """Sends the cache's own buffer, as Swift does (lend_body)."""

    def lend_body(self, data):
        return memoryview(data)


def test_copying_in_through_a_small_cache_reuses_its_buffers():
    store = SharingStore()
    device = store.create_device("dev", 64 * OSIZE, OSIZE)
    cache = ObjectCache(store, device, capacity=8 * OSIZE, workers=2)
    payloads = [os.urandom(OSIZE) for _ in range(64)]

    async def main() -> None:
        await cache.start()
        for index, data in enumerate(payloads):
            # Two halves: the object is made by a partial write, like nbdcopy's.
            await cache.write(index * OSIZE, data[: OSIZE // 2])
            await cache.write(index * OSIZE + OSIZE // 2, data[OSIZE // 2 :])
        await cache.flush()
        await cache.close()

    asyncio.run(main())
    assert cache._pool.reused >= 32
    assert [store.objects["dev"][i] for i in range(64)] == payloads


def test_a_payload_covering_one_object_becomes_that_object_without_a_copy():
    store = SharingStore()  # uploads send the cached buffer: it stays the object's
    device = store.create_device("dev", 8 * OSIZE, OSIZE)
    cache = ObjectCache(store, device, capacity=8 * OSIZE, workers=2)
    given, lent = bytearray(os.urandom(OSIZE)), bytearray(os.urandom(OSIZE))

    async def main() -> None:
        await cache.start()
        await cache.write(OSIZE, given, given=True)
        await cache.write(2 * OSIZE, lent)  # not given: the caller may change it
        assert cache._entries[1].data is given
        assert cache._entries[2].data is not lent and cache._entries[2].data == lent
        await cache.close()

    asyncio.run(main())
    assert store.objects["dev"][1] == given


def test_swift_lets_go_of_a_lent_buffer_once_it_is_sent():
    # swiftclient keeps its last response (and the request body with it): the
    # cache's buffer would stay exported and could not be reused.
    FakeSwift.reset()
    with swift_store(FakeSwift) as store:
        data = bytearray(os.urandom(OSIZE))
        body = store.lend_body(data)
        store.write_object("dev", 2, body)
        del body
        data.append(0)  # BufferError while anything still holds a view of it
        assert len(FakeSwift.bodies) == 1
