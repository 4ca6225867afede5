"""The catalog API against hostile clients and bad data, in process on SQLite.

Each test names the fault of issue 15 it guards against; every one of them
failed before the fix (a 500, a 503, a body read past its limit, a stored
document that broke every later search).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from stowkit.corelib import config, wsgiserve
from stowkit.corelib.catalogapi import schemas, server
from stowkit.corelib.errors import BackendUnavailable
from stowkit.plugins.sql import catalog as sql_catalog

BACKUP = {
    "container": "c",
    "hostname": "h.example.org",
    "backup_name": "etc",
    "time_stamp": 1_700_000_000,
}
SECRET = "s3cr3t-stored-text"
LIMIT = 8192  # max_body_size of these tests


@pytest.fixture()
def app(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    conf.set_override("max_body_size", LIMIT, server.GROUP)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


def call(
    app: Any,
    method: str,
    path: str,
    stream: Any = None,
    length: str | None = None,
    **extra: Any,
) -> tuple[int, dict[str, str], bytes]:
    """One request with the environ spelled out (Content-Length as sent, any stream)."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": length or "",
        "wsgi.input": stream if stream is not None else io.BytesIO(b""),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "catalog.test",
        "HTTP_X_USER_ID": "alice",
        **extra,
    }
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", ""):
        environ["wsgi.input_terminated"] = True  # as cheroot and gunicorn say of a chunked body
    seen: list[Any] = []
    body = b"".join(app(environ, lambda status, headers: seen.append((status, headers))))
    status, headers = seen[0]
    return int(status.split()[0]), dict(headers), body


def post(app: Any, path: str, data: bytes, **extra: Any) -> tuple[int, Any]:
    status, _, body = call(app, "POST", path, io.BytesIO(data), str(len(data)), **extra)
    return status, json.loads(body) if body else None


def search(app: Any, path: str, terms: Any) -> tuple[int, Any]:
    data = json.dumps(terms).encode()
    status, _, body = call(app, "GET", path, io.BytesIO(data), str(len(data)))
    return status, json.loads(body, parse_constant=_strict)


def _strict(name: str) -> Any:
    raise AssertionError(f"the server sent {name}, which is not JSON")


class Stream(io.RawIOBase):
    """A request body stream that records how much was read and can stall."""

    def __init__(self, data: bytes, stall: bool = False) -> None:
        self.data, self.stall, self.taken = data, stall, 0

    def read(self, size: int = -1) -> bytes:
        if self.taken >= len(self.data) and self.stall:
            raise TimeoutError("timed out")  # what a socket read does after its timeout
        size = len(self.data) - self.taken if size is None or size < 0 else size
        piece = self.data[self.taken : self.taken + size]
        self.taken += len(piece)
        return piece


# -- the bounded reader ---------------------------------------------------------------
@pytest.mark.parametrize("length", ["-1", "+20", "1e3", "0x10", "1 0", "99999999999999999999999"])
def test_a_content_length_that_is_not_plain_digits_is_400_and_nothing_is_read(app, length):
    doc = json.dumps({**BACKUP, "pad": "x" * 20_000}).encode()  # far beyond the limit
    stream = Stream(doc)
    status, headers, _ = call(app, "POST", "/v2/p/backups", stream, length)
    assert status in (400, 413), (length, status)
    assert stream.taken == 0
    assert call(app, "GET", "/v2/p/backups")[2] == b'{"backups":[]}'


def test_a_chunked_body_is_counted_and_stops_at_the_limit(app):
    stream = Stream(b"x" * 20_000)
    status, _, _ = call(
        app, "POST", "/v2/p/backups", stream, None, HTTP_TRANSFER_ENCODING="chunked"
    )
    assert status == 413
    assert stream.taken <= LIMIT + 1


def test_a_short_body_is_400_and_a_stalled_one_408_never_500(app):
    data = json.dumps(BACKUP).encode()
    status, _, body = call(app, "POST", "/v2/p/backups", Stream(data[:10]), str(len(data)))
    assert status == 400 and b"ended after 10" in body
    stalled = Stream(data[:10], stall=True)
    status, _, body = call(app, "POST", "/v2/p/backups", stalled, str(len(data)))
    assert status == 408, body


def test_a_body_past_the_request_deadline_is_408(app):
    data = json.dumps(BACKUP).encode()
    late = {"stowkit.read_deadline": time.monotonic() - 1}
    status, _, _ = call(app, "POST", "/v2/p/backups", Stream(data), str(len(data)), **late)
    assert status == 408


def test_an_unread_or_refused_body_closes_the_connection(app):
    for method, path, data in (
        ("DELETE", "/v2/p/backups/nothing", b"12345"),  # a body no route reads
        ("POST", "/v2/p/backups", b"x" * (LIMIT + 1)),  # refused (413) unread
    ):
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_LENGTH": str(len(data)),
            "wsgi.input": io.BytesIO(data),
        }
        app(environ, lambda *a: None)
        assert environ.get("stowkit.close") is True, path


# -- documents the databases cannot store or search -------------------------------------
POISON = [
    b'"x": 1e400',
    b'"x": -1e400',
    b'"x": 123456789012345678901234567890',
    b'"x": "a\\u0000b"',
    b'"x\\u0000": 1',
    b'"x": "\\ud800"',
    b'"\\udfff": "y"',
    b'"x": "' + b"y" * (schemas.MAX_STRING + 1) + b'"',
]


@pytest.mark.parametrize("poison", POISON, ids=lambda p: p[:24].decode())
def test_a_document_the_database_cannot_search_is_refused(tmp_path, poison):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    app = server.build_app(conf, auth="noauth")
    app.service.catalog.sync()
    try:
        good = json.dumps({**BACKUP, "backup_name": "good"}).encode()
        assert post(app, "/v2/p/backups", good)[0] == 201
        bad = json.dumps(BACKUP).encode()[:-1] + b", " + poison + b"}"
        status, body = post(app, "/v2/p/backups", bad)
        assert status == 400, body
        status, body = search(app, "/v2/p/backups", {"match": [{"backup_name": "good"}]})
        assert status == 200 and len(body["backups"]) == 1
    finally:
        app.service.catalog.close()


def test_deep_nesting_is_400_not_a_recursion_error(app):
    deep: Any = {"leaf": 1}
    for _ in range(600):
        deep = {"n": deep}
    job = {"client_id": "c_h.example.org", "job_actions": [{"freezer_action": deep}]}
    status, body = post(app, "/v2/p/jobs", json.dumps(job).encode())
    assert status == 400 and "nested deeper" in body["description"]
    action = {"freezer_action": {"action": "backup", "deep": deep}}
    assert post(app, "/v2/p/actions", json.dumps(action).encode())[0] == 400
    # The limit is generous for real documents.
    ok: Any = 1
    for _ in range(schemas.MAX_DEPTH - 6):
        ok = {"n": ok}
    job = {"client_id": "c_h.example.org", "job_actions": [{"freezer_action": {"d": ok}}]}
    assert post(app, "/v2/p/jobs", json.dumps(job).encode())[0] == 201


def test_a_session_jobs_entry_that_is_not_an_object(app):
    status, body = post(app, "/v2/p/sessions", b'{"session_id": "s1", "jobs": {"j1": 5}}')
    assert status == 400 and "jobs" in body["description"]
    # A session stored before the schema refused it: start and end answer, no 500.
    app.service.catalog.create("p", "sessions", "s2", {"session_id": "s2", "jobs": {"j1": 5}})
    for action in ("start", "end"):
        body = json.dumps({action: {"job_id": "j1", "current_tag": 0}}).encode()
        status, answer = post(app, "/v2/p/sessions/s2/action", body)
        assert status == 202, answer


def test_an_overlong_project_header_is_400(app):
    data = json.dumps(BACKUP).encode()
    status, body = post(app, "/v1/backups", data, HTTP_X_PROJECT_ID="p" * 300)
    assert status == 400 and "invalid project id" in body["description"]
    status, body = post(app, "/v1/backups", data, HTTP_X_PROJECT_ID="p\n")
    assert status == 400


# -- searches ---------------------------------------------------------------------------
def test_searches_are_bounded_in_terms_and_size(app):
    many = {"match": [{f"f{i}": i} for i in range(schemas.MAX_SEARCH_TERMS + 1)]}
    status, body = search(app, "/v2/p/jobs", many)
    assert status == 400 and "terms" in body["description"]
    few = {"match": [{f"f{i}": i} for i in range(schemas.MAX_SEARCH_TERMS)]}
    assert search(app, "/v2/p/jobs", few)[0] == 200
    for term in ({"f": "x" * 2000}, {"_all": "x" * 2000}, {"f": ["x"] * 500}):
        status, body = search(app, "/v2/p/jobs", {"match_not": [term]})
        assert status == 400 and "longer than" in body["description"], body
    assert search(app, "/v2/p/jobs", {"match": [{"f": "a\u0000"}]})[0] == 400


def test_a_database_error_never_echoes_a_stored_document(app):
    catalog = app.service.catalog
    # A document poisoned before the checks existed (raw SQL: no API lets it in now).
    catalog._raw(
        "INSERT INTO catalog_documents (project_id, kind, doc_id, version, created_at,"
        " updated_at, body) VALUES (?, ?, ?, 1, 0, 0, ?)",
        ("p", "backups", "b", '{"secret": "' + SECRET + '", "x": Infinity}'),
        None,
        commit=True,
    )
    status, body = search(app, "/v2/p/backups", {"match": [{"x": 1}]})
    assert status == 500, body  # the stored data is at fault: not 503, not the client's
    assert SECRET not in json.dumps(body) and "Infinity" not in json.dumps(body)


class _PgError(Exception):
    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (_PgError("08006", "connection lost"), "unavailable"),
        (_PgError("53300", "too many connections"), "unavailable"),
        (_PgError("40001", "could not serialize"), "unavailable"),
        (_PgError("54001", "stack depth limit exceeded"), "limit"),
        (_PgError("57014", "canceling statement due to statement timeout"), "limit"),
        (_PgError("22P02", 'Token "Infinity" is invalid. JSON data, line 1: {"s'), "data"),
        (_PgError("22001", "value too long for type character varying(255)"), "data"),
        (Exception("database is locked"), "unavailable"),
        (Exception("unable to open database file"), "unavailable"),
        (Exception("malformed JSON"), "data"),
        (Exception("Expression tree is too large (maximum depth 1000)"), "limit"),
        (Exception("too many SQL variables"), "limit"),
        (_PgError("42P01", 'relation "catalog_documents" does not exist'), "schema"),
        (Exception("no such table: catalog_documents"), "schema"),
    ],
)
def test_database_errors_are_classified(error, verdict):
    assert sql_catalog.classify_db_error(error) == verdict


def test_only_an_unreachable_database_is_503(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    cat = sql_catalog.SqlCatalog(conf, "catalog_sql")
    limit = cat._db_error(_PgError("54001", "stack depth"), searching=True)
    data = cat._db_error(_PgError("22P02", f"JSON data: {SECRET}"), searching=True)
    write = cat._db_error(_PgError("22001", f"value too long {SECRET}"))
    down = cat._db_error(_PgError("08006", "server closed the connection"))
    assert (limit.http_status, data.http_status, write.http_status) == (400, 500, 400)
    assert down.http_status == 503
    assert all(SECRET not in e.message for e in (limit, data, write))


# -- HTTP details -----------------------------------------------------------------------
def test_head_has_the_headers_of_get_and_no_body(app):
    post(app, "/v2/p/backups", json.dumps(BACKUP).encode())
    for path in ("/", "/v2", "/v2/p/backups", "/v2/p/backups/c_h.example.org_etc_1700000000_0"):
        get_status, get_headers, get_body = call(app, "GET", path)
        status, headers, body = call(app, "HEAD", path)
        assert (status, body) == (get_status, b""), path
        assert headers["Content-Length"] == str(len(get_body)), path
    assert call(app, "HEAD", "/v2/p/nothing")[2] == b""


# -- the server process -----------------------------------------------------------------
def _time_wait_port() -> int:
    """A port whose only trace is a server-side connection in TIME_WAIT."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its end goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    return port


def test_port_check_passes_after_a_crash_and_fails_on_a_live_listener():
    wsgiserve.check_port("127.0.0.1", _time_wait_port())  # a crashed server's leftovers
    live = socket.socket()
    live.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    live.bind(("127.0.0.1", 0))
    live.listen(1)
    try:
        with pytest.raises(BackendUnavailable):
            wsgiserve.check_port("127.0.0.1", live.getsockname()[1])
    finally:
        live.close()


def test_a_worker_dies_with_its_master(tmp_path):
    """The master forks a worker that calls _die_with_parent, then is SIGKILLed."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from stowkit.corelib import wsgiserve
        master = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                wsgiserve._die_with_parent(master)
            except Exception:
                pass
            time.sleep(60)
            os._exit(0)
        open({str(tmp_path / "pid")!r}, "w").write(str(pid))
        time.sleep(0.5)
        os.kill(master, signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    worker = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail("the worker outlived its master")


def test_the_reaper_disconnects_a_request_past_its_deadline():
    reaper = wsgiserve.Reaper(0.2)
    ours, theirs = socket.socketpair()
    ours.settimeout(5)

    class Conn:
        socket = ours

    reaper.watch(Conn)
    assert reaper.reap() == 0
    assert reaper.reap(time.monotonic() + 1) == 1
    assert ours.recv(10) == b""  # a thread blocked here is released
    reaper.watch(Conn)
    reaper.forget(Conn)
    assert reaper.reap(time.monotonic() + 1) == 0
    ours.close()
    theirs.close()


def test_ids_from_a_body_are_checked_as_the_url_checks_them(app):
    job = {"job_id": "j1\n", "client_id": "c_h.example.org", "job_actions": []}
    status, body = post(app, "/v2/p/jobs", json.dumps(job).encode())
    assert status == 400 and "job_id" in body["description"]
    status, body = post(app, "/v2/p/clients", json.dumps({"client_id": "h.example.org\n"}).encode())
    assert status == 400, body


def test_a_stored_user_header_is_short_and_printable(app):
    data = json.dumps(BACKUP).encode()
    for user in ("u" * 300, "a\x00b", "a\x1bb"):
        status, body = post(app, "/v2/p/backups", data, HTTP_X_USER_ID=user)
        assert status == 400 and "X-User-Id" in body["description"], body
