"""The functional tests' fault proxy (tools/stack/faultproxy.py) against a tiny local server."""

from __future__ import annotations

import http.client
import http.server
import threading
import time

import pytest

from tools.stack.faultproxy import FaultProxy


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: list[bytes] = []

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path == "/auth/v1.0":
            storage = f"http://127.0.0.1:{self.server.server_address[1]}/v1/AUTH_test"
            self._answer(200, b"", {"X-Storage-Url": storage, "X-Auth-Token": "tok"})
        elif self.path == "/big":
            self._answer(200, bytes(range(256)) * 8192)  # 2 MiB
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._answer(200, f"{self.command} {self.path} {self.client_address[1]}".encode())

    do_HEAD = do_GET

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        self._answer(201, b"", {"Etag": str(len(body))})


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    _Upstream.bodies = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def proxy(upstream):
    with FaultProxy(upstream, seed=7) as p:
        yield p


def conn(proxy, timeout=10):
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def get(c, path="/x", method="GET", body=None):
    c.request(method, path, body=body)
    r = c.getresponse()
    return r.status, r.read(), r


def test_passes_requests_and_bodies_through_on_one_kept_alive_connection(proxy):
    c = conn(proxy)
    status, body, _ = get(c, "/a")
    assert status == 200 and body.startswith(b"GET /a ")
    upstream_port = body.split()[-1]
    payload = bytes(range(256)) * 4096  # 1 MiB, streamed both ways
    status, _, r = get(c, "/obj", "PUT", payload)
    assert status == 201 and r.getheader("Etag") == str(len(payload))
    assert _Upstream.bodies == [payload]
    status, body, _ = get(c, "/big")
    assert body == bytes(range(256)) * 8192
    status, body, _ = get(c, "/chunked")
    assert body == b"hello chunked world"
    status, body, r = get(c, "/b", "HEAD")
    assert status == 200 and body == b"" and int(r.getheader("Content-Length")) > 0
    # the same downstream connection, the same upstream one: keep-alive both sides
    assert get(c, "/c")[1].split()[-1] == upstream_port
    assert [s.outcome for s in proxy.seen()] == ["200", "201", "200", "200", "200", "200"]


def test_the_storage_url_of_an_auth_answer_names_the_proxy(proxy):
    _, _, r = get(conn(proxy), "/auth/v1.0")
    assert r.getheader("X-Storage-Url") == f"{proxy.url}/v1/AUTH_test"


def test_503_for_a_share_of_matching_requests_only(proxy):
    proxy.add("503", share=0.5, method="PUT", path=r"/v1/.*/disk\.part/")
    c = conn(proxy)
    statuses = [get(c, f"/v1/A/c/disk.part/{i:08d}", "PUT", b"x" * 100)[0] for i in range(200)]
    failed = statuses.count(503)
    assert 60 < failed < 140 and set(statuses) == {201, 503}  # seeded: about half
    assert get(c, "/v1/A/c/disk.part/00000001")[0] == 200  # GET: not matched
    assert get(c, "/v1/A/c/stowkit.lock", "PUT", b"y")[0] == 201  # other path
    # the 503s read their bodies: the connection stayed usable throughout
    assert len(_Upstream.bodies) == 201 - failed


def test_the_same_seed_gives_the_same_faults(upstream):
    runs = []
    for _ in range(2):
        with FaultProxy(upstream, seed=3) as p:
            p.add("503", share=0.3)
            c = conn(p)
            runs.append([get(c, f"/{i}")[0] for i in range(40)])
    assert runs[0] == runs[1] and 503 in runs[0] and 200 in runs[0]


def test_drop_closes_the_connection_without_an_answer(proxy):
    proxy.add("drop", count=1)
    c = conn(proxy)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(c, "/dropped")
    c.close()
    assert get(c, "/next")[0] == 200  # count=1: the next one passes
    assert [s.outcome for s in proxy.seen()] == ["drop", "200"]


def test_hang_says_nothing_until_the_client_times_out_or_release(proxy):
    fault = proxy.add("hang", path="/stuck")
    c = conn(proxy, timeout=0.5)
    with pytest.raises(TimeoutError):
        get(c, "/stuck")
    c.close()
    waiter = conn(proxy, timeout=10)
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(err=_catch(lambda: get(waiter, "/stuck")))
    )
    thread.start()
    time.sleep(0.2)
    proxy.remove(fault)
    proxy.release()
    thread.join(10)
    assert isinstance(result["err"], (http.client.RemoteDisconnected, ConnectionError))
    assert get(conn(proxy), "/stuck")[0] == 200  # fault removed


def _catch(fn):
    try:
        fn()
    except Exception as err:
        return err
    return None


def test_delay_and_a_period(proxy):
    proxy.add("delay", seconds=0.3, method="GET", count=1)
    c = conn(proxy)
    started = time.monotonic()
    assert get(c, "/slow")[0] == 200
    assert time.monotonic() - started >= 0.3
    assert get(c, "/fast")[0] == 200
    proxy.add("503", duration=60, method="HEAD")
    proxy.add("503", after=60, method="GET")  # not yet
    assert get(c, "/h", "HEAD")[0] == 503 and get(c, "/g")[0] == 200
    proxy.clear()
    proxy.add("503", duration=0.2, method="HEAD")
    time.sleep(0.3)
    assert get(c, "/h", "HEAD")[0] == 200  # the period is over


def test_delay_body_sends_the_headers_first(proxy, upstream):
    proxy.add("delay_body", seconds=0.3, method="PUT")
    started = time.monotonic()
    assert get(conn(proxy), "/o", "PUT", b"late")[0] == 201
    assert time.monotonic() - started >= 0.3 and _Upstream.bodies == [b"late"]


def test_unreachable_upstream_answers_502():
    with FaultProxy("http://127.0.0.1:9", seed=1) as p:
        assert get(conn(p), "/")[0] == 502


def test_bad_faults_are_refused(proxy):
    with pytest.raises(ValueError):
        proxy.add("explode")
    with pytest.raises(ValueError):
        proxy.add("503", share=2)
