"""A backend that keeps failing: FLUSH/FUA answer EIO, the server stays responsive."""

from __future__ import annotations

import threading
import time

from stowkit.corelib.nbd import protocol as p
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread

OSIZE = 4096
SIZE = 64 * OSIZE


def client(server, name: str = "one") -> RawClient:
    c = RawClient(server.port, timeout=5)
    c.greet()
    c.go(name)
    return c


def eventually(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_writeback_that_never_succeeds_gives_eio_and_resumes_later():
    store = MemoryBlockStore()
    store.create_device("one", SIZE, OSIZE)
    store.create_device("two", SIZE, OSIZE)
    store.fail_writes = True
    t = ServerThread(
        store,
        ["one", "two"],
        cache_size=8 * OSIZE,
        workers=2,
        retry_time=1.0,
        retry_attempts=3,
        shutdown_timeout=2.0,
    )
    try:
        c = client(t)
        errors = []
        for i in range(16):  # twice the cache, all dirty
            c.request(p.CMD_WRITE, i * OSIZE, OSIZE, data=bytes([i + 1]) * OSIZE, cookie=i)
            errors.append(c.reply()[1])  # answered: never stuck in the full cache
        assert p.EIO in errors
        started = time.monotonic()
        c.request(p.CMD_FLUSH, cookie=100)
        assert c.reply()[:2] == (100, p.EIO)
        assert time.monotonic() - started < 1
        c.request(p.CMD_READ, 0, OSIZE, cookie=101)  # cached data still reads
        assert c.reply(OSIZE)[:3] == (101, 0, b"\x01" * OSIZE)
        other = client(t, "two")  # and other exports still work
        other.request(p.CMD_READ, 0, 16, cookie=1)
        assert other.reply(16)[:3] == (1, 0, bytes(16))
        store.fail_writes = False  # the backend is back: write-back resumes

        def flushed() -> bool:
            c.request(p.CMD_FLUSH, cookie=102)
            return c.reply()[:2] == (102, 0)

        eventually(flushed)
        assert store.objects["one"][0] == b"\x01" * OSIZE
    finally:
        store.fail_writes = False
        t.stop()


def test_shutdown_with_a_hung_backend_finishes_within_its_bound(caplog):
    store = MemoryBlockStore()
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(
        store, ["one"], cache_size=8 * OSIZE, retry_time=30.0, retry_attempts=1000,
        shutdown_timeout=1.0,
    )  # fmt: skip
    c = client(t)
    c.request(p.CMD_WRITE, 0, 5, data=b"lost!", cookie=1)
    assert c.reply()[:2] == (1, 0)
    store.write_gate = threading.Event()  # every write hangs (for 10 s)
    started = time.monotonic()
    try:
        t.call(t.server.shutdown())  # what SIGTERM runs
        assert time.monotonic() - started < 5
        assert "not stored" in caplog.text and "(0)" in caplog.text
    finally:
        store.write_gate.set()
        t.stop()


def test_a_client_connecting_once_the_backend_is_back_is_not_refused_until_the_probe():
    # The server keeps its lock and cache between clients (lock_scope server):
    # what the last client could not store waits in the cache.  A client that
    # connects once the backend is back gets its FLUSH answered at once, not
    # EIO until the next probe (every 5 s here).
    store = MemoryBlockStore()
    store.create_device("one", SIZE, OSIZE)
    store.fail_writes = True
    t = ServerThread(store, ["one"], cache_size=8 * OSIZE, retry_time=60.0, retry_attempts=1)
    try:
        c = client(t)
        c.request(p.CMD_WRITE, 0, 5, data=b"first", cookie=1)
        c.request(p.CMD_FLUSH, cookie=2)
        assert c.reply()[:2] == (1, 0) and c.reply()[:2] == (2, p.EIO)
        c.request(p.CMD_DISC)
        assert c.closed()
        store.fail_writes = False  # the backend is back
        c = client(t)
        c.request(p.CMD_WRITE, OSIZE, 6, data=b"second", cookie=3)
        c.request(p.CMD_FLUSH, cookie=4)
        assert c.reply()[:2] == (3, 0) and c.reply()[:2] == (4, 0)
        assert store.objects["one"][0][:5] == b"first"  # kept, and stored now
        assert store.objects["one"][1][:6] == b"second"
    finally:
        t.stop()
