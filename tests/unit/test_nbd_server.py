"""The NBD server's handshake and transmission, spoken raw over loopback."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from stowkit.corelib import blocklock
from stowkit.corelib.blocklock import DEFAULT_LEASE, DeviceLocked, LockInfo
from stowkit.corelib.nbd import protocol as p
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread, _string, intercept_lock

OSIZE = 4096
SIZE = 64 * OSIZE


@pytest.fixture
def store():
    s = MemoryBlockStore()
    s.create_device("one", SIZE, OSIZE)
    s.create_device("two", 8 * OSIZE, OSIZE)
    return s


@pytest.fixture
def server(store):
    t = ServerThread(store, ["one", "two"], cache_size=16 * OSIZE, lease=30)
    yield t
    t.stop()


def client(server, name: str = "one", **kw) -> RawClient:
    c = RawClient(server.port)
    c.greet()
    c.go(name, **kw)
    return c


def test_handshake_flags(server):
    c = RawClient(server.port)
    assert c.greet() == p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES


def test_list_exports(server):
    c = RawClient(server.port)
    c.greet()
    c.option(p.OPT_LIST)
    replies = c.replies_until_final()
    names = sorted(d[4:].decode() for t, d in replies if t == p.REP_SERVER)
    assert names == ["one", "two"] and replies[-1][0] == p.REP_ACK


def test_info_gives_size_flags_block_size_name_description(server):
    c = RawClient(server.port)
    c.greet()
    c.option(p.OPT_INFO, _string("one") + p.U16.pack(2) + p.U16.pack(1) + p.U16.pack(2))
    infos = {p.U16.unpack_from(d)[0]: d for t, d in c.replies_until_final() if t == p.REP_INFO}
    _, size, flags = p.INFO_EXPORT_STRUCT.unpack(infos[p.INFO_EXPORT])
    assert size == SIZE
    for bit in (p.TFLAG_HAS_FLAGS, p.TFLAG_SEND_FLUSH, p.TFLAG_SEND_FUA, p.TFLAG_SEND_TRIM,
                p.TFLAG_SEND_WRITE_ZEROES, p.TFLAG_CAN_MULTI_CONN):  # fmt: skip
        assert flags & bit
    assert not flags & p.TFLAG_READ_ONLY
    assert p.INFO_BLOCK_SIZE_STRUCT.unpack(infos[p.INFO_BLOCK_SIZE])[1:] == (1, OSIZE, 32 << 20)
    assert infos[p.INFO_NAME][2:] == b"one"
    assert b"one" in infos[p.INFO_DESCRIPTION]
    # INFO leaves the client in negotiation: GO still works afterwards.
    assert c.go("one")[0] == SIZE


def test_unknown_option_and_unknown_export(server):
    c = RawClient(server.port)
    c.greet()
    c.option(999, b"payload")
    assert c.option_reply()[1] == p.REP_ERR_UNSUP
    c.option(p.OPT_GO, _string("nope") + p.U16.pack(0))
    assert c.option_reply()[1] == p.REP_ERR_UNKNOWN
    c.option(p.OPT_GO, b"\x00\x00")  # malformed
    assert c.option_reply()[1] == p.REP_ERR_INVALID
    assert c.go("two")[0] == 8 * OSIZE


def test_export_name_unknown_closes_known_works(server):
    c = RawClient(server.port)
    c.greet()
    c.option(p.OPT_EXPORT_NAME, b"nope")
    assert c.closed()
    c = RawClient(server.port)
    c.greet(p.FLAG_C_FIXED_NEWSTYLE)  # without NO_ZEROES: 124 zero bytes follow
    c.option(p.OPT_EXPORT_NAME, b"two")
    size, flags = p.EXPORT_NAME_REPLY.unpack(c.recv(10))
    assert size == 8 * OSIZE and flags & p.TFLAG_HAS_FLAGS
    assert c.recv(124) == bytes(124)
    c.request(p.CMD_WRITE, 0, 3, data=b"abc", cookie=7)
    assert c.reply()[:2] == (7, 0)  # simple replies: no structured negotiated
    c.request(p.CMD_READ, 0, 3, cookie=8)
    assert c.reply(3)[:3] == (8, 0, b"abc")


def test_abort(server):
    c = RawClient(server.port)
    c.greet()
    c.option(p.OPT_ABORT)
    assert c.option_reply()[1] == p.REP_ACK
    assert c.closed()


def test_meta_context_list_and_set(server):
    c = RawClient(server.port)
    c.greet()
    c.option(p.OPT_LIST_META_CONTEXT, _string("one") + p.U32.pack(0))
    replies = c.replies_until_final()
    assert replies[0] == (p.REP_META_CONTEXT, p.U32.pack(1) + b"base:allocation")
    c.option(p.OPT_SET_META_CONTEXT, _string("one") + p.U32.pack(1) + _string(p.BASE_ALLOCATION))
    assert c.option_reply()[1] == p.REP_ERR_INVALID  # structured replies come first
    c.option(p.OPT_LIST_META_CONTEXT, _string("one") + p.U32.pack(1) + _string("qemu:dirty"))
    assert c.replies_until_final() == [(p.REP_ACK, b"")]


def test_read_write_roundtrip_unaligned_and_pipelined(server, store):
    c = client(server)
    payload = os.urandom(3 * OSIZE + 123)
    c.request(p.CMD_WRITE, 777, len(payload), data=payload, cookie=1)
    c.request(p.CMD_READ, 0, 1, cookie=2)
    c.request(p.CMD_READ, OSIZE, 1, cookie=3)
    got = {}
    for _ in range(3):
        cookie, err, data, _ = c.reply()
        got[cookie] = (err, data)
    assert got[1] == (0, b"") and got[2][0] == 0 and got[3][0] == 0
    # a flush covers the writes whose replies came before it was sent
    c.request(p.CMD_FLUSH, cookie=4)
    assert c.reply()[:2] == (4, 0)
    c.request(p.CMD_READ, 777, len(payload), cookie=5)
    assert c.reply()[:3] == (5, 0, payload)
    assert store.content("one")[777 : 777 + len(payload)] == payload


def test_burst_past_the_staging_buffer_and_a_request_byte_by_byte(server, store):
    from stowkit.corelib.nbd.stream import STAGING

    c = client(server)
    chunk = 16 << 10
    count = SIZE // chunk
    payloads = [os.urandom(chunk) for _ in range(count)]
    burst = b"".join(
        p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, i, i * chunk, chunk) + payloads[i]
        for i in range(count)
    )
    assert len(burst) > STAGING  # the server must pause reading and resume, losing nothing
    c.sock.sendall(burst)
    assert sorted(c.reply()[:2] for _ in range(count)) == [(i, 0) for i in range(count)]
    # Header and payload dribbled in: staged and direct reads meet mid-payload.
    tail = os.urandom(100)
    for byte in p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 99, 5, len(tail)) + tail:
        c.sock.sendall(bytes([byte]))
    assert c.reply()[:2] == (99, 0)
    c.request(p.CMD_READ, 0, SIZE, cookie=100)
    expected = bytearray(b"".join(payloads))
    expected[5 : 5 + len(tail)] = tail
    assert c.reply()[:3] == (100, 0, bytes(expected))


def test_requests_sent_before_a_half_close_still_get_their_replies(server, store):
    import socket

    c = client(server)
    c.request(p.CMD_WRITE, 0, 5, data=b"hello", cookie=1)
    c.request(p.CMD_READ, 0, 5, cookie=2)
    c.sock.shutdown(socket.SHUT_WR)  # no DISC: end of file right after the requests
    replies = {r[0]: r[1:3] for r in (c.reply(), c.reply())}
    assert replies == {1: (0, b""), 2: (0, b"hello")}
    assert c.closed()


def test_errors_keep_the_connection(server):
    c = client(server)
    c.request(p.CMD_WRITE, SIZE - 2, 4, data=b"abcd", cookie=1)
    assert c.reply()[1] == p.ENOSPC
    c.request(p.CMD_READ, SIZE - 2, 4, cookie=2)
    assert c.reply()[1] == p.EINVAL
    c.request(42, 0, 10, cookie=3)  # unknown command: no payload assumed
    assert c.reply()[1] == p.EINVAL
    c.request(p.CMD_READ, 0, 10, flags=p.CMD_FLAG_DF, cookie=4)  # DF not offered
    assert c.reply()[1] == p.EINVAL
    c.request(p.CMD_WRITE_ZEROES, 0, 10, flags=p.CMD_FLAG_FAST_ZERO, cookie=5)
    assert c.reply()[1] == p.EINVAL
    c.request(p.CMD_READ, 0, (32 << 20) + 1, cookie=6)
    assert c.reply()[1] == p.EINVAL
    c.request(p.CMD_BLOCK_STATUS, 0, 10, cookie=7)  # no context negotiated
    assert c.reply()[1] == p.EINVAL
    c.request(p.CMD_READ, 0, 4, cookie=8)
    assert c.reply()[:3] == (8, 0, bytes(4))


def test_error_chunk_carries_a_message(server):
    c = client(server)
    c.request(p.CMD_READ, SIZE, 1)
    _, err, _, chunks = c.reply()
    assert err == p.EINVAL and chunks[0][0] == p.REPLY_TYPE_ERROR
    (length,) = struct.unpack_from(">H", chunks[0][1], 4)
    assert b"past the end" in chunks[0][1][6 : 6 + length]


def test_read_only_export_refuses_writes_and_takes_no_lock(store):
    t = ServerThread(store, ["one"], read_only=True)
    try:
        c = client(t)
        for cmd in (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES):
            c.request(cmd, 0, 1, data=b"x" if cmd == p.CMD_WRITE else b"")
            assert c.reply()[1] == p.EPERM
        assert blocklock.read_lock(store, "one") is None
        c.sock.close()
    finally:
        t.stop()


def test_block_status_extents(server, store):
    c = client(server, meta=True)
    c.request(p.CMD_WRITE, 2 * OSIZE, OSIZE, data=b"\x01" * OSIZE)
    c.request(p.CMD_FLUSH)
    assert c.reply()[1] == 0 and c.reply()[1] == 0
    c.request(p.CMD_BLOCK_STATUS, 0, 4 * OSIZE)
    _, err, _, chunks = c.reply()
    assert err == 0 and chunks[0][0] == p.REPLY_TYPE_BLOCK_STATUS
    body = chunks[0][1]
    assert p.U32.unpack_from(body)[0] == 1
    extents = [struct.unpack_from(">II", body, 4 + 8 * i) for i in range((len(body) - 4) // 8)]
    assert extents == [(2 * OSIZE, 3), (OSIZE, 0), (OSIZE, 3)]
    c.request(p.CMD_BLOCK_STATUS, 0, 4 * OSIZE, flags=p.CMD_FLAG_REQ_ONE)
    assert len(c.reply()[3][0][1]) == 12


def test_trim_and_write_zeroes(server, store):
    c = client(server)
    c.request(p.CMD_WRITE, 0, 2 * OSIZE, data=b"\x05" * 2 * OSIZE, flags=p.CMD_FLAG_FUA)
    assert c.reply()[1] == 0
    assert set(store.objects["one"]) == {0, 1}
    c.request(p.CMD_TRIM, 0, OSIZE, flags=p.CMD_FLAG_FUA)
    assert c.reply()[1] == 0
    assert set(store.objects["one"]) == {1}
    c.request(p.CMD_WRITE_ZEROES, OSIZE, OSIZE, flags=p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE)
    assert c.reply()[1] == 0
    assert store.objects["one"][1] == bytes(OSIZE)
    c.request(p.CMD_WRITE_ZEROES, OSIZE, OSIZE, flags=p.CMD_FLAG_FUA)
    assert c.reply()[1] == 0
    assert store.objects["one"] == {}


def test_malformed_clients_do_not_disturb_a_good_one(server):
    good = client(server)
    bad = []
    # wrong magic in the option header
    c = RawClient(server.port)
    c.greet()
    c.sock.sendall(b"\x00" * 16)
    bad.append(c)
    # unknown client flags
    c = RawClient(server.port)
    c.greet(0xFF)
    bad.append(c)
    # huge option length
    c = RawClient(server.port)
    c.greet()
    c.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, 0xFFFFFFFF))
    bad.append(c)
    # truncated handshake, then gone
    c = RawClient(server.port)
    c.recv(18)
    c.sock.sendall(b"\x00\x00")
    c.sock.close()
    # bad request magic, and a write too large to read
    c = client(server)
    c.sock.sendall(b"\xde\xad\xbe\xef" + bytes(24))
    bad.append(c)
    c = client(server)
    c.request(p.CMD_WRITE, 0, 0xFFFFFFFF)
    bad.append(c)
    for c in bad:
        assert c.closed()
    good.request(p.CMD_WRITE, 0, 5, data=b"hello", cookie=11)
    assert good.reply()[:2] == (11, 0)
    good.request(p.CMD_READ, 0, 5, cookie=12)
    assert good.reply()[:3] == (12, 0, b"hello")


def test_disconnect_writes_back_and_unlocks(store):
    server = ServerThread(store, ["one"], lock_scope="connection")
    try:
        assert blocklock.read_lock(store, "one") is None  # nobody connected: not locked
        c = client(server)
        c.request(p.CMD_WRITE, 0, 4, data=b"data")
        assert c.reply()[1] == 0
        assert blocklock.read_lock(store, "one") is not None
        c.request(p.CMD_DISC)
        assert c.closed()
        eventually(
            lambda: blocklock.read_lock(store, "one") is None
        )  # unlocked after the write-back
        assert store.objects["one"][0][:4] == b"data"
    finally:
        server.stop()


def test_a_server_holds_its_writable_devices_from_start_to_stop(store):
    server = ServerThread(store, ["one"], lease=30)
    try:
        lock = blocklock.read_lock(store, "one")
        assert lock is not None  # before any client
        assert server.server.exports["one"].lease.state == "valid"  # confirmed already
        c = client(server)
        c.request(p.CMD_WRITE, 0, 4, data=b"data")
        assert c.reply()[1] == 0
        c.request(p.CMD_DISC)
        assert c.closed()
        # Written back at the disconnect, the lock kept (same token) for the next client.
        eventually(lambda: store.objects["one"].get(0, b"")[:4] == b"data")
        assert blocklock.read_lock(store, "one").token == lock.token
        reads = len(store.reads)
        c = client(server)
        c.request(p.CMD_READ, 0, 4, cookie=9)
        assert c.reply(4)[:3] == (9, 0, b"data")
        assert len(store.reads) == reads  # the cache stayed warm
        c.request(p.CMD_DISC)
        assert c.closed()
    finally:
        server.stop()
    assert blocklock.read_lock(store, "one") is None


def test_a_server_does_not_start_on_a_device_locked_elsewhere(store):
    blocklock.take(store, "one", "someone else", 600)
    with pytest.raises(DeviceLocked, match="someone else"):
        ServerThread(store, ["one", "two"], lease=30)
    assert blocklock.read_lock(store, "two") is None  # the lock it had taken is given back
    assert blocklock.read_lock(store, "one").owner == "someone else"


def test_a_held_lock_broken_unnoticed_is_re_read_when_the_next_client_connects(store):
    server = ServerThread(store, ["one"], lease=30)
    try:
        token = blocklock.read_lock(store, "one").token
        blocklock.unlock(store, "one", force=True)  # broken by hand; no renewal has seen it yet
        c = client(server)  # the lock is re-read, found gone, and taken again
        c.request(p.CMD_WRITE, 0, 4, data=b"anew", cookie=1)
        c.request(p.CMD_FLUSH, cookie=2)
        assert c.reply()[:2] == (1, 0) and c.reply()[:2] == (2, 0)
        assert store.objects["one"][0][:4] == b"anew"
        assert blocklock.read_lock(store, "one").token != token
    finally:
        server.stop()


def test_a_lock_lost_while_no_client_is_connected_is_taken_again_by_the_next(store):
    server = ServerThread(store, ["one"], lease=30)
    try:
        export = server.server.exports["one"]
        blocklock.unlock(store, "one", force=True)  # broken by hand, then taken by a rival
        rival = blocklock.take(store, "one", "rival", 600)
        export.lease.renew()  # the renewal finds the rival's lock
        assert export.lease.lost
        c = RawClient(server.port)
        c.greet()
        c.option(p.OPT_GO, _string("one") + p.U16.pack(0))
        rtype, message = c.option_reply()[1:]
        assert rtype == p.REP_ERR_POLICY and b"rival" in message  # refused, naming it
        blocklock.unlock(store, "one", expected=rival)
        c = client(server)  # free again: locked anew for the server
        c.request(p.CMD_WRITE, 0, 4, data=b"next")
        c.request(p.CMD_FLUSH)
        assert c.reply()[1] == 0 and c.reply()[1] == 0
        assert store.objects["one"][0][:4] == b"next"
        assert blocklock.read_lock(store, "one").owner == export.lease.info.owner
    finally:
        server.stop()


def eventually(check, seconds: float = 20) -> None:
    """Wait until ``check()`` holds: a disconnect's write-back and unlock run after it."""
    import time

    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_second_server_refused_while_first_connected(store):
    first = ServerThread(store, ["one"], lease=DEFAULT_LEASE, lock_scope="connection")
    second = ServerThread(store, ["one"], lease=DEFAULT_LEASE, lock_scope="connection")
    try:
        c1 = client(first)
        c2 = RawClient(second.port)
        c2.greet()
        c2.option(p.OPT_GO, _string("one") + p.U16.pack(0))
        rtype, message = c2.option_reply()[1:]
        assert rtype == p.REP_ERR_POLICY and b"locked" in message
        # a second connection to the *same* server shares its cache: allowed
        c3 = client(first)
        c3.request(p.CMD_READ, 0, 1)
        assert c3.reply()[1] == 0
        c1.request(p.CMD_DISC)
        c3.request(p.CMD_DISC)
        assert c1.closed() and c3.closed()
        eventually(lambda: blocklock.read_lock(store, "one") is None)
        assert client(second).go is not None
    finally:
        first.stop()
        second.stop()


def test_lock_of_a_dead_server_on_this_host_is_broken(store):
    import dataclasses

    from stowkit.corelib.blocklock import LockInfo
    from stowkit.corelib.nbd.export import LOCK_OWNER

    dead = dataclasses.replace(LockInfo.new(LOCK_OWNER, 600), pid=2**22 + 12345)
    store.control["one"]["stowkit.lock"] = dead.to_json()
    t = ServerThread(store, ["one"])
    try:
        c = client(t)
        c.request(p.CMD_READ, 0, 1)
        assert c.reply()[1] == 0
        assert blocklock.read_lock(store, "one").pid == os.getpid()
    finally:
        t.stop()


def test_shutdown_writes_back_dirty_data(store):
    t = ServerThread(store, ["one"])
    c = client(t)
    c.request(p.CMD_WRITE, OSIZE, 3, data=b"bye")
    assert c.reply()[1] == 0
    t.stop()
    assert store.objects["one"][1][:3] == b"bye"
    assert blocklock.read_lock(store, "one") is None


class _SlowConfirmStore(MemoryBlockStore):
    """Confirms its lock only when the test says so, optionally after a rival won."""

    def __init__(self) -> None:
        super().__init__()
        self.confirm_gate = threading.Event()
        self.rival_wins = False

    def slow_confirm(self, confirm, store, device, mine):
        self.confirm_gate.wait(20)
        if self.rival_wins:  # what a concurrent create that landed later leaves
            rival = LockInfo.new("rival server", 600)
            self.control[device]["stowkit.lock"] = rival.to_json()
        return confirm(store, device, mine)


def test_nothing_is_stored_before_the_lock_is_confirmed(monkeypatch):
    store = _SlowConfirmStore()
    intercept_lock(monkeypatch, store, "confirm", store.slow_confirm)
    store.create_device("one", SIZE, OSIZE)
    t = ServerThread(store, ["one"], lock_scope="connection")
    try:
        c = client(t)  # the client is served at once
        c.request(p.CMD_WRITE, 0, 5, data=b"early", cookie=1)
        assert c.reply()[:2] == (1, 0)  # taken into the cache
        c.request(p.CMD_FLUSH, cookie=2)
        c.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.reply()  # no FLUSH answer while the lock is unconfirmed
        assert store.writes == []
        store.confirm_gate.set()
        c.sock.settimeout(10)
        assert c.reply()[:2] == (2, 0)
        assert store.objects["one"][0][:5] == b"early"
    finally:
        store.confirm_gate.set()
        t.stop()


def test_a_lock_a_rival_won_stores_nothing_and_refuses_writes(monkeypatch):
    store = _SlowConfirmStore()
    intercept_lock(monkeypatch, store, "confirm", store.slow_confirm)
    store.create_device("one", SIZE, OSIZE)
    store.rival_wins = True
    t = ServerThread(store, ["one"], lock_scope="connection")
    try:
        c = client(t)
        c.request(p.CMD_WRITE, 0, 5, data=b"loser", cookie=1)
        assert c.reply()[:2] == (1, 0)
        store.confirm_gate.set()
        c.request(p.CMD_FLUSH, cookie=2)
        assert c.reply()[:2] == (2, p.EIO)
        c.request(p.CMD_WRITE, 0, 5, data=b"again", cookie=3)
        assert c.reply()[:2] == (3, p.EIO)
        c.request(p.CMD_DISC)
        assert c.closed()
        eventually(lambda: t.server.exports["one"].cache is None)  # detached
        assert (
            blocklock.read_lock(store, "one").owner == "rival server"
        )  # not unlocked by the loser
        assert store.writes == [] and store.objects["one"] == {}
    finally:
        store.confirm_gate.set()
        t.stop()


def test_a_server_confirms_the_locks_of_its_devices_together():
    # Each confirmation waits the backend's settle time: serving many devices
    # must not pay it once per device, one after another.
    class SettlingStore(MemoryBlockStore):
        settle_seconds = 0.2

        def __init__(self) -> None:
            super().__init__()
            self.settling = self.most = 0
            self.count_guard = threading.Lock()

        def _settle(self) -> None:
            with self.count_guard:
                self.settling += 1
                self.most = max(self.most, self.settling)
            super()._settle()
            with self.count_guard:
                self.settling -= 1

    store = SettlingStore()
    for name in ("a", "b", "c", "d"):
        store.create_device(name, 8 * OSIZE, OSIZE)
    server = ServerThread(store, ["a", "b", "c", "d"], lease=30)
    try:
        assert store.most > 1
        assert all(blocklock.read_lock(store, n) is not None for n in ("a", "b", "c", "d"))
    finally:
        server.stop()
