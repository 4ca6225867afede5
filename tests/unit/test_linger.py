"""The lingering close is bounded: a client that never stops sending cannot hold the thread."""

from __future__ import annotations

import socket
import threading

from stowkit.corelib.linger import linger


def _in_thread(fn) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(30)
    return thread


def test_a_silent_client_that_never_closes_is_left_after_the_time_bound():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not _in_thread(lambda: linger(ours, seconds=0.2)).is_alive()
        assert theirs.recv(1) == b""  # it was told we are done writing


def test_a_client_that_keeps_sending_is_left_after_the_size_bound():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"x" * 100_000)
        assert not _in_thread(lambda: linger(ours, seconds=60, limit=1000)).is_alive()
        assert len(ours.recv(200_000)) > 0  # what is past the bound was left unread


def test_a_client_that_already_went_away_is_no_error():
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        linger(ours)
