"""Hostile NBD clients: stuck handshakes are closed, arbitrary bytes never hurt the server.

The handshake bound is short here (0.5 s) so the tests are quick; the socket
timeouts (10 s) only stop a test from hanging when the bound is not enforced.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.corelib.nbd import protocol as p
from tests.fakes.nbd import MemoryBlockStore, RawClient, ServerThread

OSIZE = 64 << 10
#: hypothesis examples per property: STOWKIT_FUZZ_EXAMPLES, as the other fuzz suites
EXAMPLES = int(os.environ.get("STOWKIT_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def server():
    store = MemoryBlockStore()
    store.create_device("one", 16 * OSIZE, OSIZE)
    t = ServerThread(store, ["one"], cache_size=8 * OSIZE, lease=30, handshake_timeout=0.5)
    yield t
    t.stop()


def good_roundtrip(server, payload: bytes = b"still fine") -> None:
    c = RawClient(server.port)
    c.greet()
    c.go("one")
    c.request(p.CMD_WRITE, 0, len(payload), data=payload, cookie=1)
    assert c.reply()[:2] == (1, 0)
    c.request(p.CMD_READ, 0, len(payload), cookie=2)
    assert c.reply()[:3] == (2, 0, payload)
    c.close()


def test_a_silent_client_is_closed_after_the_handshake_bound(server):
    c = RawClient(server.port)
    c.greet()  # then nothing: no option, no export
    assert c.closed()


def test_a_client_trickling_options_is_closed_too(server):
    c = RawClient(server.port)
    c.greet()
    header = p.OPTION_HEADER.pack(p.IHAVEOPT, p.OPT_GO, 8)
    with pytest.raises(ConnectionError):
        for byte in header:  # one byte every 0.2 s: never done within the bound
            c.sock.sendall(bytes([byte]))
            time.sleep(0.2)
            if c.closed():
                raise ConnectionError("closed")


def test_a_hundred_stuck_handshakes_are_all_closed_and_others_still_served(server):
    stuck = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(100)]
    try:
        good_roundtrip(server)
        for sock in stuck:
            data = b""
            while chunk := sock.recv(4096):  # the greeting, then end of stream
                data += chunk
            assert data[:8] == p.HANDSHAKE.pack(p.NBDMAGIC, p.IHAVEOPT, 0)[:8]
    finally:
        for sock in stuck:
            sock.close()


def test_a_chosen_export_is_not_subject_to_the_handshake_bound(server):
    c = RawClient(server.port)
    c.greet()
    c.go("one")
    time.sleep(1.0)  # twice the bound, idle in transmission
    c.request(p.CMD_READ, 0, 4, cookie=7)
    assert c.reply()[:2] == (7, 0)
    c.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=st.sampled_from([p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES, 0, 0xFFFFFFFF]),
    option=st.integers(0, 0xFFFFFFFF),
    length=st.integers(0, 0xFFFFFFFF),
    body=st.binary(max_size=512),
    tail=st.binary(max_size=256),
)
def test_arbitrary_options_never_hurt_the_server(server, flags, option, length, body, tail):
    """Any flags, option, length and bytes: answered or closed, never a hang or a crash."""
    c = RawClient(server.port, timeout=10)
    try:
        c.greet(flags)
        c.sock.sendall(p.OPTION_HEADER.pack(p.IHAVEOPT, option, length) + body + tail)
        c.sock.shutdown(socket.SHUT_WR)
        while c.sock.recv(65536):  # whatever the server answers, it ends the stream
            pass
    except OSError:  # the server hung up first: as good an answer as any
        pass
    finally:
        c.close()
    good_roundtrip(server, body[:32] or b"x")


@settings(
    max_examples=EXAMPLES // 3,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cmd=st.integers(0, 0xFFFF),
    cmd_flags=st.integers(0, 0xFFFF),
    offset=st.integers(0, 2**64 - 1),
    length=st.integers(0, 0xFFFFFFFF),
)
def test_arbitrary_requests_get_an_answer_or_a_close(server, cmd, cmd_flags, offset, length):
    c = RawClient(server.port, timeout=10)
    try:
        c.greet()
        c.go("one")
        c.request(cmd, offset, length, flags=cmd_flags, data=b"", cookie=99)
        c.sock.shutdown(socket.SHUT_WR)
        while c.sock.recv(65536):
            pass
    except OSError:  # the server hung up first: as good an answer as any
        pass
    finally:
        c.close()
    good_roundtrip(server)
