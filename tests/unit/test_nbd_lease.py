"""The NBD export's lease: lost means nothing more is stored, at once."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

from stowkit.corelib import blocklock
from stowkit.corelib.blocklock import LockInfo
from stowkit.corelib.nbd import protocol as p
from stowkit.corelib.nbd.export import LOCK_OWNER
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread, _string, intercept_lock

OSIZE = 4096
SIZE = 64 * OSIZE


def eventually(check, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def client(server, name: str = "one") -> RawClient:
    c = RawClient(server.port)
    c.greet()
    c.go(name)
    return c


def steal(store, device="one"):
    blocklock.unlock(store, device, force=True)
    return blocklock.take(store, device, "rival")


def new_store(cls=MemoryBlockStore):
    store = cls()
    store.create_device("one", SIZE, OSIZE)
    return store


def test_after_the_lock_is_lost_nothing_more_is_stored():
    store = new_store()
    t = ServerThread(store, ["one"], lease=3)  # renewed every second
    try:
        c = client(t)
        c.request(p.CMD_WRITE, 0, 5, data=b"first", cookie=1)
        assert c.reply()[:2] == (1, 0)
        c.request(p.CMD_FLUSH, cookie=2)
        assert c.reply()[:2] == (2, 0)
        c.request(p.CMD_WRITE, OSIZE, 5, data=b"dirty", cookie=3)
        assert c.reply()[:2] == (3, 0)  # in the cache, not stored yet
        rival = steal(store)
        writes = list(store.writes)
        export = t.server.exports["one"]
        eventually(lambda: export.lost_lock is not None)
        c.request(p.CMD_FLUSH, cookie=4)
        assert c.reply()[:2] == (4, p.EIO)
        c.request(p.CMD_WRITE, 0, 5, data=b"again", cookie=5, flags=p.CMD_FLAG_FUA)
        assert c.reply()[:2] == (5, p.EIO)
        c.request(p.CMD_DISC)
        assert c.closed()
        eventually(lambda: export.cache is None)  # detach ran (close -> flush)
        assert store.writes == writes  # not even detach stored the dirty object
        assert blocklock.read_lock(store, "one").token == rival.token
    finally:
        t.stop()
    assert store.writes == writes  # nor did the shutdown
    assert blocklock.read_lock(store, "one").token == rival.token


def test_a_flush_pending_when_the_lock_is_lost_answers_eio_at_once():
    store = new_store()
    store.write_gate = threading.Event()  # the backend holds every write
    t = ServerThread(store, ["one"], lease=3)
    try:
        c = client(t)
        c.request(p.CMD_WRITE, 0, 5, data=b"stuck", cookie=1)
        assert c.reply()[:2] == (1, 0)
        c.request(p.CMD_FLUSH, cookie=2)
        steal(store)
        c.sock.settimeout(3)  # well before the backend's write gives up (10 s)
        assert c.reply()[:2] == (2, p.EIO)
    finally:
        store.write_gate.set()
        t.stop()


class _SlowRenewStore(MemoryBlockStore):
    """Holds a renewal between its read of the lock and its PUT until told."""

    def __init__(self) -> None:
        super().__init__()
        self.in_put = threading.Event()
        self.proceed = threading.Event()

    def slow_renew(self, renew, store, device, lock, lease_seconds=60):
        self.hold = True
        return renew(store, device, lock, lease_seconds)

    def _control_replace(self, device, key, data):
        if getattr(self, "hold", False):
            self.hold = False
            self.in_put.set()
            self.proceed.wait(10)
        super()._control_replace(device, key, data)


def test_a_renewal_in_flight_cannot_bring_the_lock_back_after_release(monkeypatch):
    store = new_store(_SlowRenewStore)
    intercept_lock(monkeypatch, store, "renew", store.slow_renew)
    t = ServerThread(store, ["one"], lease=3, lock_scope="connection")
    try:
        c = client(t)
        c.request(p.CMD_WRITE, 0, 4, data=b"data", cookie=1)
        assert c.reply()[:2] == (1, 0)
        assert store.in_put.wait(5)  # a renewal is about to PUT the lock
        c.request(p.CMD_DISC)
        time.sleep(0.3)  # the detach runs meanwhile, and waits for the renewal
        store.proceed.set()
        assert c.closed()
        eventually(lambda: t.server.exports["one"].cache is None)
        eventually(lambda: blocklock.read_lock(store, "one") is None)
        time.sleep(0.3)
        assert blocklock.read_lock(store, "one") is None  # and it stays released
    finally:
        store.proceed.set()
        t.stop()


class _TakenMeanwhileStore(MemoryBlockStore):
    """The dead server's lock is replaced by a live rival's right after it is read."""

    def swap_after_read(self, take_unconfirmed, store, device, owner="", lease_seconds=60):
        try:
            return take_unconfirmed(store, device, owner, lease_seconds)
        except Exception:
            if not getattr(self, "swapped", False):
                self.swapped = True
                self.control[device]["stowkit.lock"] = LockInfo.new("rival", 600).to_json()
            raise


def test_breaking_a_dead_servers_lock_leaves_a_lock_taken_meanwhile(monkeypatch):
    store = new_store(_TakenMeanwhileStore)
    intercept_lock(monkeypatch, store, "take_unconfirmed", store.swap_after_read)
    dead = dataclasses.replace(LockInfo.new(LOCK_OWNER, 600), pid=2**22 + 12345)
    store.control["one"]["stowkit.lock"] = dead.to_json()
    t = ServerThread(store, ["one"], lock_scope="connection")
    try:
        c = RawClient(t.port)
        c.greet()
        c.option(p.OPT_GO, _string("one") + p.U16.pack(0))
        rtype, message = c.option_reply()[1:]
        assert rtype == p.REP_ERR_POLICY and b"rival" in message
        assert blocklock.read_lock(store, "one").owner == "rival"
        assert blocklock.read_lock(store, "one").pid == os.getpid()  # the rival's, untouched
    finally:
        t.stop()


def test_payload_bytes_in_flight_are_bounded_per_connection():
    store = new_store()
    store.write_gate = threading.Event()  # every write waits: FUA writes pile up
    t = ServerThread(store, ["one"], max_inflight_bytes=2 * OSIZE)
    try:
        c = client(t)
        for i in range(8):
            data = bytes([i + 1]) * OSIZE
            c.request(p.CMD_WRITE, i * OSIZE, OSIZE, flags=p.CMD_FLAG_FUA, data=data, cookie=i)
        time.sleep(0.5)
        (conn,) = t.server._connections
        assert conn._budget.peak <= 2 * OSIZE  # the rest waits in the socket
        assert len(conn._tasks) <= 2
        store.write_gate.set()
        assert sorted(c.reply()[:2] for _ in range(8)) == [(i, 0) for i in range(8)]
        assert store.objects["one"][7] == b"\x08" * OSIZE
    finally:
        store.write_gate.set()
        t.stop()
