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
from stowkit.corelib.linger import linger

LOG = logging.getLogger(__name__)

MAX_BODY = 1 << 20

MAX_HEADERS = 100

#: listen(2) backlog: Docker opens a connection per concurrent request, and a
#: burst (50 containers starting at once) must queue, not fail with EAGAIN.
BACKLOG = 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PluginServer
    #: set when a request is refused before all of it was read
    _refused = False

    def _send_json(self, status: int, payload: dict, reason: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer(self, raw: bytes) -> None:
        path = self.path.split("?", 1)[0]
        try:
            status, payload = self.server.app.handle(path, raw)
        except Exception as exc:  # the app answers errors itself; this is a bug
            LOG.exception("%s failed", path[:200])
            status, payload = 500, {"Err": f"internal error: {type(exc).__name__}"}
        self._send_json(status, payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors of the HTTP layer (bad request line, headers, method) as ``{"Err": ...}``.

        The stdlib answers these with an HTML page, which Docker shows raw.
        """
        short = self.responses.get(code, ("error",))[0]
        text = " ".join(str(message or short).split())[:200]
        self.log_error("code %d, message %s", code, text)
        self.close_connection = True
        self._refused = True
        # A request line too broken to name its version is answered in 1.1
        # (HTTP/0.9 would mean a bare body, no status line, no Content-Type).
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        self._send_json(code, {"Err": f"HTTP {code}: {text}"}, short)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        # Our own bound: http.client's is a module global other libraries raise
        # (swiftclient sets it to 256 when imported).
        if len(self.headers) > MAX_HEADERS:
            self.send_error(431, f"more than {MAX_HEADERS} headers")
            return False
        if self.request_version == "HTTP/0.9":
            # The stdlib would answer a bare body: no status line, no headers.
            self.send_error(400, "HTTP/0.9 requests are not served")
            return False
        return True

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.send_error(411, "a Content-Length is required (no Transfer-Encoding)")
            return
        value = (self.headers.get("Content-Length") or "0").strip()
        if not value.isdigit() or not value.isascii():
            self.send_error(400, f"bad Content-Length {value[:20]!r}")
            return
        length = int(value) if len(value) <= 18 else MAX_BODY + 1
        if length > MAX_BODY:
            self.send_error(413, f"body larger than {MAX_BODY} bytes")
            return
        self._answer(self.rfile.read(length) if length else b"")

    def do_GET(self) -> None:
        self._answer(b"")

    def finish(self) -> None:
        super().finish()
        if self._refused:
            linger(self.connection)

    def address_string(self) -> str:  # unix sockets have no peer address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)


class PluginServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG

    def __init__(self, socket_path: str, app: PluginApp, mode: int = 0o660) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.app = app
        try:
            _clear_stale_socket(self.socket_path)
            os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
            super().__init__(self.socket_path, _Handler)
            os.chmod(self.socket_path, mode)
        except OSError as exc:
            # One line that names the socket: a bare "[Errno 2]" tells the operator nothing.
            raise BackendUnavailable(
                f"cannot listen on {self.socket_path}: {exc.strerror or exc}"
            ) from None
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
