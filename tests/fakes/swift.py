"""A fake Swift (an http.server handler) and a SwiftBlockStore talking to one on loopback."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator

from oslo_config import cfg

from stowkit.plugins.swift.store import SwiftBlockStore


class FakeSwift(http.server.BaseHTTPRequestHandler):
    """Tempauth and one container of 16 objects of 4096 bytes; PUTs recorded, some failed.

    The record is kept on the class (each request gets a new handler): ``reset``
    it before a test.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    puts: list[tuple[str, int]] = []  # (path, length) of each PUT
    bodies: list[tuple[bytes, str]] = []  # (body, ETag header) of each PUT
    fail_next_puts = 0  # so many PUTs to come are answered 503

    @classmethod
    def reset(cls, fail_next_puts: int = 0) -> None:
        cls.puts, cls.bodies, cls.fail_next_puts = [], [], fail_next_puts

    def log_message(self, *args):
        pass

    def _answer(self, status, headers=None, body=b""):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/auth/v1.0"):  # through a proxy: the whole URL
            url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/AUTH_t"
            return self._answer(200, {"X-Storage-Url": url, "X-Auth-Token": "tok"})
        self._answer(404)

    def do_HEAD(self):
        meta = "X-Container-Meta-Stowkit-"
        self._answer(204, {meta + "Format": "1", meta + "Size": "65536",
                           meta + "Object-Size": "4096"})  # fmt: skip

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.puts.append((self.path, len(body)))
        cls.bodies.append((body, self.headers.get("Etag", "")))
        if cls.fail_next_puts:
            cls.fail_next_puts -= 1
            return self._answer(503, body=b"busy")
        self._answer(201, {"Etag": self.headers.get("Etag", "")})


@contextlib.contextmanager
def swift_store(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[SwiftBlockStore]:
    """A store (tempauth, 3 quick retries) whose requests ``handler`` answers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    conf = cfg.ConfigOpts()
    store = SwiftBlockStore(conf, "blockstore_swift")
    port = server.server_address[1]
    for key, value in (("auth_url", f"http://127.0.0.1:{port}/auth/v1.0"), ("user", "t:u"),
                       ("key", "k"), ("retries", 3), ("max_backoff", 0.1)):  # fmt: skip
        conf.set_override(key, value, "blockstore_swift")
    conf([], default_config_files=[])
    try:
        yield store
    finally:
        store.close()
        server.shutdown()
        server.server_close()
        thread.join(10)
