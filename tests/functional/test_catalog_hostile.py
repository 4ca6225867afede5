"""The catalog server for real against hostile clients, on SQLite and PostgreSQL.

``catalog serve --no-auth`` on 127.0.0.1 (2 workers): raw-socket requests
with lying Content-Lengths, stalled bodies and HEAD; documents and searches
that used to poison a project or cost seconds of CPU; a small hypothesis
budget of hostile documents over HTTP; a slowloris of 40 connections; and
``kill -9`` of the master (workers must die with it) and of the whole server
(a restart must work at once).  Every step is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings

from tests.commands import STOWKIT
from tests.fakes.hostile_json import encode, hostile
from tests.fakes.net import free_port

BACKUP = {"container": "c", "hostname": "h.example.org", "backup_name": "etc", "time_stamp": 1}


class Server:
    """``stowkit catalog serve --no-auth`` in its own session, on a fixed port."""

    def __init__(self, work: pathlib.Path, database: str, port: int | None = None) -> None:
        self.work, self.port = work, port or free_port()
        self.conf = work / "stowkit.conf"
        self.conf.write_text(
            f"[DEFAULT]\nstate_dir = {work}\n[catalog_sql]\nconnection = {database}\n"
            "[catalog_api]\nclient_timeout = 2\nrequest_timeout = 4\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self, within: float = 30) -> Server:
        self.log = open(self.work / "server.log", "ab")
        self.proc = subprocess.Popen(
            [*STOWKIT, "--config-file", str(self.conf), "catalog", "serve", "--no-auth"]
            + ["--port", str(self.port), "--workers", "2"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + within
        while not self.answers():
            assert self.proc.poll() is None, (self.work / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "catalog server not ready"
            time.sleep(0.2)
        return self

    def answers(self, timeout: float = 2) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=timeout)
        except urllib.error.HTTPError:
            return True  # 300 Multiple Choices
        except OSError:
            return False
        return True

    def workers(self) -> list[int]:
        assert self.proc is not None
        found = []
        for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid:
                    found.append(int(stat.parent.name))
        return found

    def stop(self) -> None:
        if self.proc is not None:
            # The whole process group: workers too, even when the master is gone.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
            time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()

    def raw(self, data: bytes, timeout: float = 15) -> tuple[int, bytes, bytes, float]:
        """Send ``data`` on one connection, read to EOF: (status, headers, body, seconds)."""
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
            conn.sendall(data)
            chunks = []
            with contextlib.suppress(ConnectionResetError):
                while piece := conn.recv(65536):
                    chunks.append(piece)
        reply = b"".join(chunks)
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), head, body, time.monotonic() - began

    def call(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body or None, method=method
        )
        request.add_header("X-User-Id", "hostile")
        for key, value in headers.items():
            request.add_header(key.replace("_", "-"), value)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, payload = err.code, err.read()
        return status, _strict(payload) if payload else None


def _strict(payload: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"served {name}, which is not JSON")

    return json.loads(payload, parse_constant=refuse)


@pytest.fixture(scope="module")
def catalog(database, tmp_path_factory) -> Any:
    server = Server(tmp_path_factory.mktemp("hostile-server"), database).start()
    yield server
    server.stop()


def test_bodies_are_read_only_through_the_bounded_reader(catalog):
    # Content-Length -1 used to read to EOF: the answer came only when the client
    # closed (here it never does, so the read below would time out).
    head = b"POST /v2/p/backups HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n{"
    with socket.create_connection(("127.0.0.1", catalog.port), timeout=10) as conn:
        conn.sendall(head)
        assert conn.recv(4096).split()[1] == b"400"
    # A body shorter than its Content-Length from a client that then stalls: 408
    # after client_timeout (2 s here), not a 500 after 30 s.
    with socket.create_connection(("127.0.0.1", catalog.port), timeout=20) as conn:
        began = time.monotonic()
        conn.sendall(b"POST /v2/p/backups HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        reply = conn.recv(4096)
        took = time.monotonic() - began
    assert reply.split()[1] == b"408", reply
    assert took < 12, took
    status, head, body, _ = catalog.raw(b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert status == 300 and body == b"" and b"Content-Length" in head


POISON = [
    b'"x": 1e400',
    b'"x": "a\\u0000b"',
    b'"x": "\\ud800"',
    b'"x\\u0000": 1',
    b'"x": ' + b'{"n":' * 600 + b"1" + b"}" * 600,
]


def test_no_document_poisons_the_searches_of_its_project(catalog):
    project = f"p{uuid.uuid4().hex[:8]}"
    good = json.dumps(BACKUP).encode()
    assert catalog.call("POST", f"/v2/{project}/backups", good)[0] == 201
    for poison in POISON:
        doc = json.dumps({**BACKUP, "time_stamp": 2}).encode()[:-1] + b", " + poison + b"}"
        status, body = catalog.call("POST", f"/v2/{project}/backups", doc)
        assert status == 400, (poison[:30], body)
    session = b'{"session_id": "s1", "jobs": {"j1": 5}}'
    assert catalog.call("POST", f"/v2/{project}/sessions", session)[0] == 400
    status, body = catalog.call("POST", "/v1/backups", good, X_Project_Id="p" * 300)
    assert status == 400 and "project id" in body["description"]
    for search in ({"match": [{"backup_name": "etc"}]}, {"match_not": [{"x": "y"}]}):
        status, body = catalog.call("GET", f"/v2/{project}/backups", json.dumps(search).encode())
        assert status == 200 and len(body["backups"]) == 1, body


def test_searches_are_bounded(catalog):
    for search in (
        {"match": [{f"f{i}": i} for i in range(1000)]},
        {"match": [{"f": "x" * (512 << 10)}]},
        {"match": [{"f": "a\u0000"}]},
        {"match": [{"f": "\ud800"}]},
    ):
        data = json.dumps(search).encode()
        began = time.monotonic()
        status, body = catalog.call("GET", "/v2/p/backups", data)
        assert status == 400, body
        assert time.monotonic() - began < 5


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=hostile)
def test_hostile_documents_over_http_never_5xx(catalog, value):
    project = f"h{uuid.uuid4().hex[:10]}"
    text = encode({**BACKUP, "extra": value})
    note(f"sent: {text[:2000]}")
    status, body = catalog.call(
        "POST", f"/v2/{project}/backups", text.encode("utf-8", "surrogatepass")
    )
    assert status in (201, 400, 413), body
    for search in ({"match": [{"backup_name": "etc"}]}, {"match": [{"extra": 1}]}):
        status, body = catalog.call("GET", f"/v2/{project}/backups", json.dumps(search).encode())
        assert status == 200, body


@pytest.fixture
def sqlite_catalog(tmp_path) -> Any:
    """A server on SQLite: connection and process handling do not depend on the database."""
    server = Server(tmp_path, f"sqlite:///{tmp_path}/catalog.sqlite").start()
    yield server
    server.stop()


def test_a_slowloris_does_not_stop_the_service(sqlite_catalog):
    catalog = sqlite_catalog
    slow = []
    for _ in range(40):
        conn = socket.create_connection(("127.0.0.1", catalog.port), timeout=5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        slow.append(conn)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(1):
            for conn in slow:
                with contextlib.suppress(OSError):
                    conn.sendall(b"X")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)
        took = []
        for _ in range(6):
            began = time.monotonic()
            assert catalog.answers(timeout=10)
            took.append(time.monotonic() - began)
        assert max(took) < 5, took
    finally:
        stop.set()
        thread.join()
        for conn in slow:
            conn.close()


def test_kill_9_of_the_master_takes_the_workers_and_a_restart_works_at_once(tmp_path):
    # process handling does not depend on the database: SQLite only
    server = Server(tmp_path, f"sqlite:///{tmp_path}/catalog.sqlite").start()
    try:
        # A served, server-closed connection leaves the port in TIME_WAIT.
        catalog_status = server.raw(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0]
        assert catalog_status == 300
        workers = server.workers()
        assert len(workers) == 2, workers
        os.kill(server.proc.pid, signal.SIGKILL)  # the master only
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(pathlib.Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "orphan workers still serve"
            time.sleep(0.1)
        assert not server.answers(timeout=1)
        server.log.close()
        began = time.monotonic()
        server.start(within=15)
        assert time.monotonic() - began < 15
        server.raw(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        os.killpg(server.proc.pid, signal.SIGKILL)  # the whole server
        server.proc.wait(timeout=10)
        time.sleep(0.5)
        server.log.close()
        server.start(within=15)
    finally:
        server.stop()
