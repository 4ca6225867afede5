"""systemd's readiness protocol (sd_notify), with the standard library only.

A service started with ``Type=notify`` finds the name of a unix datagram socket
in ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket) and sends it
``READY=1`` once it serves, ``STOPPING=1`` when it begins to shut down.  Without
``$NOTIFY_SOCKET`` (not under systemd) every call here does nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ...) to ``$NOTIFY_SOCKET``; True if it was sent.

    Never raises: a service must not fail because its supervisor went away.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with contextlib.suppress(OSError):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
            return True
    return False


def ready() -> bool:
    """Tell systemd the service is serving."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down."""
    return notify("STOPPING=1")
