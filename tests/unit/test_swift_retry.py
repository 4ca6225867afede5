"""The Swift backend retries a failed object PUT (a fake Swift answering 503 once).

python-swiftclient retries a PUT only when it can rewind the body; plain bytes made
it give up at the first 503 (tests/functional/test_nbd_faults.py found it).
"""

from __future__ import annotations

import http.server

import pytest

from stowkit.plugins.swift.store import SwiftBlockStore
from tests.unit.swift_fakes import swift_store


class FakeSwift(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    puts: list[tuple[str, int]] = []
    fail_next_puts = 0

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
        if cls.fail_next_puts:
            cls.fail_next_puts -= 1
            return self._answer(503, body=b"busy")
        self._answer(201, {"Etag": self.headers.get("Etag", "")})


@pytest.fixture
def swift():
    FakeSwift.puts, FakeSwift.fail_next_puts = [], 0
    with swift_store(FakeSwift) as store:
        yield store


def test_an_object_put_answered_503_is_sent_again(swift):
    FakeSwift.fail_next_puts = 2
    swift.write_object("dev", 3, b"\x07" * 4096)
    assert FakeSwift.puts == [("/v1/AUTH_t/dev/disk.part/00000003", 4096)] * 3


def test_a_lock_create_answered_503_is_sent_again(swift):
    FakeSwift.fail_next_puts = 1
    assert swift._control_create("dev", "stowkit.lock", b"{}") is True
    assert [p for p, _ in FakeSwift.puts] == ["/v1/AUTH_t/dev/stowkit.lock"] * 2


def test_a_setup_whose_settings_create_outlasts_the_settle_time_is_not_confirmed(monkeypatch):
    # Two setups race; ours lands after a rival could have read its own
    # settings back and gone on: ours must not claim the device, nor write
    # the container metadata (the settings every reader takes first).
    import time

    from stowkit.corelib.errors import Conflict

    store = SwiftBlockStore.__new__(SwiftBlockStore)
    objects, posted = {}, []

    class Opts:
        container_prefix = ""
        create_settle = 0.05

    def slow_create(device, key, data):
        time.sleep(0.06)  # longer than the settle time
        objects[key] = data
        return True

    monkeypatch.setattr(SwiftBlockStore, "opts", Opts(), raising=False)
    monkeypatch.setattr(store, "_head", lambda name: None)
    monkeypatch.setattr(store, "_call", lambda what, fn: posted.append(what))
    monkeypatch.setattr(store, "_control_create", slow_create)
    monkeypatch.setattr(store, "_control_get", lambda device, key: objects.get(key))
    with pytest.raises(Conflict, match="could not be confirmed"):
        store.create_device("dev", 1 << 20, 65536)
    assert not [what for what in posted if what.startswith("set the settings")]
