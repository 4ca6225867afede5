"""The write-back object cache over an in-memory BlockStore."""

from __future__ import annotations

import asyncio
import threading

import pytest

from stowkit.corelib.nbd.cache import ObjectCache
from stowkit.corelib.nbd.protocol import STATE_HOLE, STATE_ZERO
from tests.fakes.nbd import MemoryBlockStore

OSIZE = 4096


def make(capacity: int = 64 * OSIZE, size: int = 256 * OSIZE, **kw):
    store = MemoryBlockStore()
    device = store.create_device("dev", size, OSIZE)
    return store, ObjectCache(store, device, capacity=capacity, workers=4, **kw)


def run(coro):
    return asyncio.run(coro)


def test_partial_write_reads_modifies_writes():
    store, cache = make()
    store.objects["dev"][1] = b"\x01" * OSIZE

    async def go() -> bytes:
        await cache.start()
        await cache.write(OSIZE + 10, b"\xff" * 5)
        await cache.flush()
        return await cache.read(OSIZE, 20)

    assert run(go()) == b"\x01" * 10 + b"\xff" * 5 + b"\x01" * 5
    assert store.objects["dev"][1][:20] == b"\x01" * 10 + b"\xff" * 5 + b"\x01" * 5
    assert store.reads == [("dev", 1)]


async def settle() -> None:
    """Wait for what the cache started in the background (prefetches, uploads).

    Assertions about the backend's requests must see every request the reads
    caused, not only those a worker thread happened to start in time.
    """
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)


def test_scattered_small_reads_fetch_ranges_then_whole_objects():
    # No readahead: the last read starts within the stream window of the
    # first, so it counts as sequential and would prefetch the next stored
    # objects (9 here): readahead is tested apart.
    store, cache = make(ranged_reads=True, readahead=0)
    store.objects["dev"][5] = bytes(range(256)) * (OSIZE // 256)
    store.objects["dev"][9] = b"\x09" * OSIZE

    async def go() -> list:
        await cache.start()
        first = await cache.read(5 * OSIZE + 16, 32)  # scattered: a range only
        hole = await cache.read(7 * OSIZE, 64)  # not stored: no request at all
        again = await cache.read(5 * OSIZE + 3000, 16)  # read by range before: loaded whole
        other = await cache.read(9 * OSIZE + 100, 8)
        nearby = await cache.read(5 * OSIZE + 1024, 1024)  # now a cache hit
        await settle()
        return [first, hole, again, other, nearby]

    first, hole, again, other, nearby = run(go())
    obj = store.objects["dev"][5]
    assert first == obj[16:48] and again == obj[3000:3016] and nearby == obj[1024:2048]
    assert hole == bytes(64) and other == b"\x09" * 8
    assert store.ranges == [("dev", 5, 16, 32), ("dev", 9, 100, 8)]
    assert store.reads == [("dev", 5)]
    assert cache.stats.ranged == 2


def test_a_read_continuing_an_earlier_one_prefetches_across_reads_between():
    # Streams are kept per reader (ReadStreams): a scattered read in between
    # does not stop the first reader's next read from counting as sequential.
    store, cache = make(ranged_reads=True)
    store.objects["dev"][5] = b"\x05" * OSIZE
    store.objects["dev"][9] = b"\x09" * OSIZE

    async def go() -> None:
        await cache.start()
        await cache.read(5 * OSIZE + 16, 32)  # scattered: a range
        await cache.read(9 * OSIZE + 100, 8)  # another reader, scattered: a range
        await cache.read(5 * OSIZE + 1024, 1024)  # continues the first: sequential
        await settle()

    run(go())
    assert store.ranges == [("dev", 5, 16, 32), ("dev", 9, 100, 8)]
    assert sorted(store.reads) == [("dev", 5), ("dev", 9)]  # 5 read whole, 9 prefetched
    assert cache.stats.prefetched == 1


def test_ranged_reads_never_bypass_data_written_in_the_cache():
    store, cache = make(ranged_reads=True)
    store.objects["dev"][3] = b"o" * OSIZE

    async def go() -> bytes:
        await cache.start()
        await cache.write(3 * OSIZE + 100, b"new")
        return await cache.read(3 * OSIZE + 100, 3)

    assert run(go()) == b"new"
    assert store.ranges == []


def test_an_object_written_all_over_is_uploaded_without_waiting_for_flush():
    store, cache = make(capacity=64 * OSIZE)

    async def go() -> None:
        await cache.start()
        for part in range(4):  # the whole of object 2, in quarters
            await cache.write(2 * OSIZE + part * OSIZE // 4, b"q" * (OSIZE // 4))
        await cache.write(4 * OSIZE, b"half" * (OSIZE // 8))  # half of object 4
        while cache._background:
            await asyncio.sleep(0.01)

    run(go())
    assert store.objects["dev"][2] == b"q" * OSIZE
    assert 4 not in store.objects["dev"]  # still being written: it waits for flush
    assert cache.stats.early_uploads == 1


def test_read_streams_follow_interleaved_readers_not_strides():
    from stowkit.corelib.nbd.cache import ReadStreams

    streams = ReadStreams(window=1024, streams=2)
    assert not streams.follows(0, 4096)
    assert not streams.follows(1 << 30, 4096)  # a second reader far away
    assert streams.follows(4096, 4096)  # each continues its own stream
    assert streams.follows((1 << 30) + 4096, 4096)
    assert streams.follows(8192 + 512, 4096)  # slightly out of order still counts
    assert not streams.follows(8192 + 512 + 4096 + 4096, 4096)  # a stride is scattered
    assert not streams.follows((1 << 30) + 8192, 10)  # forgotten: only two streams kept


def test_whole_object_write_does_not_read():
    store, cache = make(trust_listing=False)

    async def go() -> None:
        await cache.start()
        await cache.write(2 * OSIZE, b"a" * OSIZE)
        await cache.flush()

    run(go())
    assert store.reads == []
    assert store.objects["dev"][2] == b"a" * OSIZE


def test_hot_object_is_uploaded_once_per_flush():
    store, cache = make()

    async def go() -> None:
        await cache.start()
        for i in range(100):
            await cache.write(i, b"x")
        await cache.flush()
        await cache.flush()

    run(go())
    assert store.writes == [("dev", 0)]


def test_flush_returns_only_after_the_backend_stored_the_data():
    store, cache = make()
    gate = threading.Event()
    store.write_gate = gate

    async def go() -> None:
        await cache.start()
        await cache.write(0, b"z" * 100)
        flush = asyncio.ensure_future(cache.flush())
        await asyncio.sleep(0.2)
        assert not flush.done()
        assert 0 not in store.objects["dev"]
        gate.set()
        await flush
        assert store.objects["dev"][0][:100] == b"z" * 100

    run(go())


def test_fua_write_is_stored_before_it_returns():
    store, cache = make()

    async def go() -> None:
        await cache.start()
        await cache.write(5 * OSIZE, b"f" * 10, fua=True)
        assert store.objects["dev"][5][:10] == b"f" * 10
        await cache.write(6 * OSIZE, b"g" * 10)
        assert 6 not in store.objects["dev"]

    run(go())


def test_object_that_becomes_zero_is_deleted_not_stored():
    store, cache = make()
    store.objects["dev"][3] = b"\x07" * OSIZE

    async def go() -> None:
        await cache.start()
        await cache.write(3 * OSIZE, bytes(OSIZE))
        await cache.flush()

    run(go())
    assert 3 not in store.objects["dev"]
    assert store.deletes == [("dev", 3)]
    assert store.writes == []


def test_trim_whole_objects_deletes_and_partial_zeroes():
    store, cache = make()
    for i in range(4):
        store.objects["dev"][i] = b"\x09" * OSIZE

    async def go() -> bytes:
        await cache.start()
        await cache.zero(OSIZE // 2, 2 * OSIZE, punch=True)
        await cache.flush()
        return await cache.read(0, 4 * OSIZE)

    data = run(go())
    assert data == b"\x09" * (OSIZE // 2) + bytes(2 * OSIZE) + b"\x09" * (OSIZE + OSIZE // 2)
    assert 1 not in store.objects["dev"]
    assert store.objects["dev"][0] == b"\x09" * (OSIZE // 2) + bytes(OSIZE // 2)


def test_write_zeroes_no_hole_stores_real_zeros():
    store, cache = make()

    async def go() -> None:
        await cache.start()
        await cache.zero(0, OSIZE, punch=False)
        await cache.flush()

    run(go())
    assert store.objects["dev"][0] == bytes(OSIZE)


def test_extents_follow_objects_and_dirty_state():
    store, cache = make()
    store.objects["dev"][1] = b"\x01" * OSIZE

    async def go() -> list:
        await cache.start()
        await cache.write(3 * OSIZE, b"x")
        return cache.extents(0, 5 * OSIZE)

    hz = STATE_HOLE | STATE_ZERO
    assert run(go()) == [(OSIZE, hz), (OSIZE, 0), (OSIZE, hz), (OSIZE, 0), (OSIZE, hz)]


def test_cache_stays_bounded_and_writes_back_before_evicting():
    store, cache = make(capacity=8 * OSIZE)

    async def go() -> bytes:
        await cache.start()
        for i in range(64):
            await cache.write(i * OSIZE, bytes([i + 1]) * OSIZE)
            assert cache.cached_bytes <= 8 * OSIZE + OSIZE
        await cache.flush()
        return await cache.read(0, 64 * OSIZE)

    data = run(go())
    assert data == b"".join(bytes([i + 1]) * OSIZE for i in range(64))
    assert len(store.objects["dev"]) == 64


def test_backend_failure_keeps_data_dirty_until_it_is_stored():
    store, cache = make()
    store.fail_writes = True

    async def go() -> None:
        await cache.start()
        await cache.write(0, b"keep")
        with pytest.raises(OSError):
            await cache.flush()
        assert cache.dirty_bytes == OSIZE
        store.fail_writes = False
        await cache.flush()
        assert cache.dirty_bytes == 0

    run(go())
    assert store.objects["dev"][0][:4] == b"keep"


def test_sequential_reads_prefetch_ahead():
    store, cache = make(readahead=8 * OSIZE, trust_listing=False)

    async def go() -> None:
        await cache.start()
        await cache.read(0, OSIZE)
        await cache.read(OSIZE, OSIZE)
        for _ in range(1000):  # prefetches run in the background: wait for them
            if len(store.reads) >= 10:
                break
            await asyncio.sleep(0.02)

    run(go())
    assert cache.stats.prefetched >= 8
    assert {("dev", i) for i in range(2, 10)} <= set(store.reads)


def test_a_failed_multi_object_read_leaves_nothing_pinned():
    store, cache = make(capacity=4 * OSIZE, size=64 * OSIZE, trust_listing=False)
    for i in range(64):
        store.objects["dev"][i] = bytes([i + 1]) * OSIZE
    store.fail_reads = {i for i in range(64) if i % 2}

    async def go() -> None:
        await cache.start()
        for first in range(0, 64, 2):
            with pytest.raises(OSError):
                await cache.read(first * OSIZE, 2 * OSIZE)  # the second object fails
        assert all(e.pins == 0 for e in cache._entries.values())
        store.fail_reads = set()
        await cache.read(0, OSIZE)  # any later request makes room again
        assert cache.cached_bytes <= cache.capacity

    run(go())
