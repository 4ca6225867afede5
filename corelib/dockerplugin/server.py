"""HTTP/1.1 on a unix socket, stdlib only.

Docker keeps one connection open per plugin and posts small JSON bodies; a
threading server with keep-alive answers each in well under a millisecond of
our own time, so the driver call is what a request costs.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import socket
import socketserver
import stat
import threading

from stowkit.corelib.dockerplugin.app import CONTENT_TYPE, PluginApp
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument

LOG = logging.getLogger(__name__)

MAX_BODY = 1 << 20


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PluginServer

    def _answer(self, raw: bytes) -> None:
        status, payload = self.server.app.handle(self.path.split("?", 1)[0], raw)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.send_error(400, "bad Content-Length")
            return
        self._answer(self.rfile.read(length) if length else b"")

    def do_GET(self) -> None:
        self._answer(b"")

    def address_string(self) -> str:  # unix sockets have no peer address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)


class PluginServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, socket_path: str, app: PluginApp, mode: int = 0o660) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.app = app
        _clear_stale_socket(self.socket_path)
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        super().__init__(self.socket_path, _Handler)
        os.chmod(self.socket_path, mode)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="stowkit-plugin"
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the socket and remove its file."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidArgument(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise BackendUnavailable(f"another process already serves {path}")
