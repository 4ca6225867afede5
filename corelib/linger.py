"""Closing a connection whose request was refused before it was read.

A socket closed with unread input resets the connection (TCP sends RST, a
unix socket reports ECONNRESET), and the client loses the answer that says
why it was refused, or its send fails mid-body.  Apache calls the remedy a
lingering close: stop writing, then read and discard what the client still
sends, bounded in time and size so a client cannot hold the thread.
"""

from __future__ import annotations

import socket
import time

#: How long and how much a refused client may still send before we close.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 << 20


def linger(sock: socket.socket, seconds: float = LINGER_SECONDS, limit: int = LINGER_BYTES) -> None:
    """Tell the client we are done, then read until it is done too (bounded)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while limit > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            chunk = sock.recv(min(limit, 65536))
            if not chunk:
                return
            limit -= len(chunk)
    except OSError:
        return  # the client went away: nothing left to protect
