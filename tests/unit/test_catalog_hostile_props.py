"""Property-based tests (hypothesis) of the catalog API on SQLite, in process.

Hostile documents, searches, session bodies and Content-Length headers; the
properties: the answer is a 2xx or a 4xx (never a 5xx), and whatever was
stored keeps every later list and search answering with valid JSON.  The
budget is small and fixed (``max_examples``, no deadline, no example
database); a failure prints hypothesis' shrunk, smallest reproducing input
and the JSON text that was sent.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server
from tests.fakes.hostile_json import encode, hostile, texts

BUDGET = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BACKUP = {"container": "c", "hostname": "h.example.org", "backup_name": "etc"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    conf = config.load_conf(
        overrides=[(None, "state_dir", str(tmp_path_factory.mktemp("catalog")))]
    )
    server.register_opts(conf)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


def call(app: Any, method: str, path: str, data: bytes = b"", length: str | None = None) -> Any:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "limit=1000",
        "CONTENT_LENGTH": str(len(data)) if length is None and data else (length or ""),
        "wsgi.input": io.BytesIO(data),
        "HTTP_X_USER_ID": "fuzz",
    }
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return int(seen[0].split()[0]), body


def strict(body: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"served {name}, which is not JSON")

    return json.loads(body, parse_constant=refuse)


def everything_still_answers(app: Any, project: str) -> None:
    for kind in ("backups", "jobs", "sessions", "actions"):
        status, body = call(app, "GET", f"/v2/{project}/{kind}")
        assert status == 200, body
        strict(body)
        for search in (
            {"match": [{"backup_name": "etc"}]},
            {"match_not": [{"status": "completed"}]},
            {"match": [{"_all": "x"}]},
            {"match": [{"backup_metadata.extra": 1}]},
        ):
            status, body = call(app, "GET", f"/v2/{project}/{kind}", json.dumps(search).encode())
            assert status == 200, (search, body)
            strict(body)


_seq = iter(range(10**9))


@BUDGET
@given(value=hostile, as_key=st.booleans())
def test_hostile_documents_are_stored_searchable_or_refused(app, value, as_key):
    extra = {"extra": value}
    if as_key and isinstance(value, str):
        extra = {value: 1}
    # A project of its own per example: a replayed example meets no leftovers.
    project = f"p{next(_seq)}"
    doc = {**BACKUP, "time_stamp": 1, **extra}
    text = encode(doc)
    note(f"sent: {text[:2000]}")
    status, body = call(
        app, "POST", f"/v2/{project}/backups", text.encode("utf-8", "surrogatepass")
    )
    assert status in (201, 400, 413), body
    job = {"client_id": "c_h.example.org", "job_actions": [{"freezer_action": extra}]}
    status, body = call(
        app, "POST", f"/v2/{project}/jobs", encode(job).encode("utf-8", "surrogatepass")
    )
    assert status in (201, 400, 413), body
    everything_still_answers(app, project)


terms = st.dictionaries(st.one_of(texts, st.sampled_from(["_all", "a.b", "status"])), hostile)
searches = st.one_of(
    hostile,
    st.fixed_dictionaries(
        {}, optional={"match": st.lists(terms, max_size=40), "match_not": st.lists(terms)}
    ),
)


@BUDGET
@given(search=searches)
def test_hostile_searches_are_answered_or_refused(app, search):
    text = encode(search)
    note(f"sent: {text[:2000]}")
    status, body = call(app, "GET", "/v2/fuzz/jobs", text.encode("utf-8", "surrogatepass"))
    assert status in (200, 400, 413), body
    if status == 200:
        strict(body)


@BUDGET
@given(jobs=hostile, action=st.sampled_from(["start", "end"]), tag=hostile)
def test_hostile_sessions_never_give_5xx(app, jobs, action, tag):
    session_id = f"s{next(_seq)}"
    text = encode({"session_id": session_id, "jobs": jobs})
    note(f"sent: {text[:2000]}")
    status, body = call(app, "POST", "/v2/fuzz/sessions", text.encode("utf-8", "surrogatepass"))
    assert status in (201, 400, 413), body
    for tag_value in (0, tag):
        act = encode({action: {"job_id": "j1", "current_tag": tag_value}})
        status, body = call(
            app,
            "POST",
            f"/v2/fuzz/sessions/{session_id}/action",
            act.encode("utf-8", "surrogatepass"),
        )
        assert status in (202, 400, 404), (act, body)


@BUDGET
@given(
    length=st.one_of(st.text(max_size=12), st.integers(-(2**70), 2**70).map(str)),
    data=st.binary(max_size=64),
)
def test_any_content_length_is_a_4xx_or_served(app, length, data):
    status, body = call(app, "POST", "/v2/fuzz/actions", data, length)
    assert status in (201, 400, 408, 413), body
