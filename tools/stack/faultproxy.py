"""A fault-injecting HTTP pass-through for the functional tests (stdlib only).

Put it in front of a real HTTP service (the harness Swift's tempauth proxy)
and point the client at it.  Requests are forwarded as they come (bodies
streamed both ways, keep-alive kept), except those a *fault* picks:

* ``delay``: wait ``seconds`` before forwarding the request;
* ``delay_body``: forward the request line and headers at once, wait
  ``seconds``, then send the body: the server has started the request (Swift
  checks ``If-None-Match`` and stamps the object then) but it lands late;
* ``drop``: close the client's connection without an answer;
* ``503``: answer 503 Service Unavailable (the body is read, the connection kept);
* ``hang``: say nothing for ``seconds`` (or until :meth:`FaultProxy.release`),
  then close: the client's own timeout fires.

A fault applies to a share of the matching requests (``share``, drawn from one
seeded ``random.Random`` so a run is repeatable), optionally only to methods
and paths matching regular expressions, from ``after`` seconds from now for
``duration`` seconds, and to at most ``count`` requests.  The first fault
that matches and draws a hit wins.  Faults are added and removed while the
proxy runs (from the test's thread).

Swift's auth answer carries ``X-Storage-Url`` naming the real proxy; it is
rewritten to name this proxy, so object traffic comes through here too.
Every request is logged (:attr:`FaultProxy.log`) with its wall-clock arrival
time, method, path and what became of it (the upstream status, or the fault).

Used in-process: ``with FaultProxy(upstream) as proxy: proxy.add("503", share=0.05)``.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

ACTIONS = ("delay", "delay_body", "drop", "503", "hang")
#: Headers that belong to one connection, never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
CHUNK = 256 << 10


@dataclasses.dataclass
class Fault:
    action: str
    share: float = 1.0
    method: str | None = None  # regex, matched in full against the method
    path: str | None = None  # regex, searched in the path (with the query)
    seconds: float = 0.0
    start: float = 0.0  # time.monotonic() from which it applies
    until: float | None = None  # time.monotonic() after which it no longer does
    count: int | None = None  # requests it may still hit
    hits: int = 0

    def matches(self, method: str, path: str, now: float) -> bool:
        if now < self.start or (self.until is not None and now >= self.until):
            return False
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method is not None and not re.fullmatch(self.method, method):
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    time: float  # time.time() when its headers arrived
    method: str
    path: str
    outcome: str  # the upstream status ("201"), or the fault ("drop", "503", ...)
    client: tuple[str, int]


class FaultProxy:
    """Forward HTTP to ``upstream`` (``http://host:port``), injecting faults on request."""

    def __init__(self, upstream: str, seed: int = 0, bind: str = "127.0.0.1", port: int = 0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.upstream = f"http://{parsed.netloc}"
        self.timeout = 120.0  # upstream socket timeout
        self._random = random.Random(seed)
        self._guard = threading.Lock()
        self._faults: list[Fault] = []
        self._released = threading.Event()
        self.log: list[Seen] = []
        self._server = _Server((bind, port), _Handler)
        self._server.proxy = self
        self.url = f"http://{bind}:{self._server.server_address[1]}"
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.clear()
        self._released.set()  # hanging requests end now
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------
    def add(
        self,
        action: str,
        share: float = 1.0,
        method: str | None = None,
        path: str | None = None,
        seconds: float = 0.0,
        after: float = 0.0,
        duration: float | None = None,
        count: int | None = None,
    ) -> Fault:
        """Inject ``action`` into matching requests; returns the fault (see :meth:`remove`)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}; one of {', '.join(ACTIONS)}")
        if not 0.0 <= share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        for pattern in (method, path):
            if pattern is not None:
                re.compile(pattern)
        now = time.monotonic()
        fault = Fault(
            action,
            share,
            method,
            path,
            seconds if action != "hang" or seconds else 3600.0,
            now + after,
            None if duration is None else now + after + duration,
            count,
        )
        with self._guard:
            self._faults.append(fault)
        self._released.clear()
        return fault

    def remove(self, fault: Fault) -> None:
        with self._guard:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        """No more faults (hanging requests keep hanging until :meth:`release`)."""
        with self._guard:
            self._faults.clear()

    def release(self) -> None:
        """End every hanging request now (their connections are closed)."""
        self._released.set()

    def _pick(self, method: str, path: str) -> Fault | None:
        now = time.monotonic()
        with self._guard:
            for fault in self._faults:
                if fault.matches(method, path, now) and self._random.random() < fault.share:
                    fault.hits += 1
                    return fault
        return None

    def _record(self, seen: Seen) -> None:
        with self._guard:
            self.log.append(seen)

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """The logged requests matching ``method`` (full match) and ``path`` (search)."""
        with self._guard:
            entries = list(self.log)
        return [
            s
            for s in entries
            if (method is None or re.fullmatch(method, s.method))
            and (path is None or re.search(path, s.path))
        ]

    def rewrite(self, value: str) -> str:
        """A URL naming the upstream, made to name this proxy."""
        if value.startswith(self.upstream):
            return self.url + value[len(self.upstream) :]
        return value


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._sockets: set[socket.socket] = set()
        self._sockets_guard = threading.Lock()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._sockets_guard:
            self._sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._sockets_guard:
                self._sockets.discard(request)

    def close_all(self) -> None:
        """Close every client connection (keep-alive ones would outlive the server)."""
        with self._sockets_guard:
            socks = list(self._sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out in two writes: Nagle plus delayed ACKs would
    # add 40 ms to every answer.
    disable_nagle_algorithm = True
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method: GET, PUT, HEAD, POST, DELETE, COPY, ...
            return self._proxy
        raise AttributeError(name)

    # -- the request ----------------------------------------------------------------
    def _proxy(self) -> None:
        proxy = self.server.proxy
        arrived = time.time()
        fault = proxy._pick(self.command, self.path)
        action = fault.action if fault is not None else None

        recorded = []

        def record(outcome: str) -> None:
            if not recorded:  # once: the upstream status, else what went wrong
                recorded.append(outcome)
                proxy._record(Seen(arrived, self.command, self.path, outcome, self.client_address))

        if action == "drop":
            record("drop")
            self._hang_up()
            return
        if action == "hang":
            record("hang")
            proxy._released.wait(fault.seconds)
            self._hang_up()
            return
        if action == "503":
            self._discard_body()
            record("503")
            body = b"<html><h1>Service Unavailable</h1><p>fault injected</p></html>"
            self.send_response(503)
            self.send_header("Content-Type", "text/html; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        if action == "delay":
            time.sleep(fault.seconds)
        try:
            self._forward(fault.seconds if action == "delay_body" else 0.0, record)
        except (ConnectionError, TimeoutError, OSError, http.client.HTTPException) as err:
            record(f"upstream error: {err!r}")
            self._drop_upstream()
            self.close_connection = True  # the request's body may be half read
            if not self._replied:
                self._bad_gateway(err)
            return

    def _hang_up(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body_chunks(self):
        """The request body, streamed: Content-Length or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1 << 16)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1 << 16) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("client went away in the body")
                    left -= len(data)
                    yield data
                self.rfile.readline(1 << 16)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                data = self.rfile.read(min(left, CHUNK))
                if not data:
                    raise ConnectionError("client went away in the body")
                left -= len(data)
                yield data

    def _discard_body(self) -> None:
        for _ in self._body_chunks():
            pass

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            proxy = self.server.proxy
            self._upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=proxy.timeout
            )
        return self._upstream

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    _replied = False

    def _forward(self, body_delay: float, record: Callable[[str], None]) -> int:
        self._replied = False
        conn = self._connection()
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for key, value in self.headers.items():
            if key.lower() not in HOP_BY_HOP:
                conn.putheader(key, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        if body_delay:
            time.sleep(body_delay)
        for data in self._body_chunks():
            conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        # Logged before the client hears the answer: a test that looks at the
        # log once its client is done sees every request.
        record(str(response.status))
        self._reply(response)
        if response.will_close:
            self._drop_upstream()
        return response.status

    def _reply(self, response: http.client.HTTPResponse) -> None:
        proxy = self.server.proxy
        self.send_response_only(response.status, response.reason)
        length = response.getheader("Content-Length")
        status = response.status
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        for key, value in response.getheaders():
            low = key.lower()
            if low in HOP_BY_HOP:
                continue
            if low in ("x-storage-url", "location"):
                value = proxy.rewrite(value)
            self.send_header(key, value)
        chunked = not no_body and length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._replied = True
        if no_body:
            response.read()
            return
        while True:
            data = response.read1(CHUNK) if chunked else response.read(CHUNK)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _bad_gateway(self, err: BaseException) -> None:
        body = f"fault proxy: upstream failed: {err!r}".encode()
        self.send_response(502)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
