"""Property-based fuzzing of the Docker plugin: the app, then raw bytes on the socket.

Budget: ``STOWKIT_FUZZ_EXAMPLES`` examples per property (default 150, the
socket ones a third of it); no example database is written.  A failure is
shrunk by hypothesis and printed as the smallest input that reproduces it
("Falsifying example: ...").
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.corelib.dockerplugin.app import PluginApp
from stowkit.corelib.dockerplugin.server import PluginServer
from tests.fakes.docker_plugin import ProtocolDriver, exchange, raw_post, split_answer

EXAMPLES = int(os.environ.get("STOWKIT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SOCKET_FUZZ = settings(FUZZ, max_examples=max(10, EXAMPLES // 3))

ENDPOINTS = [
    "/Plugin.Activate",
    "/VolumeDriver.Create",
    "/VolumeDriver.Remove",
    "/VolumeDriver.Mount",
    "/VolumeDriver.Unmount",
    "/VolumeDriver.Path",
    "/VolumeDriver.Get",
    "/VolumeDriver.List",
    "/VolumeDriver.Capabilities",
    "/VolumeDriver.Snapshot",
    "/VolumeDriver.Snapshot.List",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
names = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["v1", "../x", "", ".", "a/b", "x" * 300, "-rf", "v1\x00", "\ud800"]),
    json_values,
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={"Name": names, "ID": json_values | st.text(max_size=20), "Opts": json_values},
    ),
    json_values,
)


def _raw(value) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def app():
    return PluginApp(ProtocolDriver())


def _check_answer(status, payload):
    assert status in (200, 404)
    assert isinstance(payload, dict)
    assert isinstance(payload.get("Err", ""), str)
    assert "\n" not in payload.get("Err", "")
    json.dumps(payload)  # what the server sends must encode


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies)
def test_any_json_body_gets_a_json_answer(app, endpoint, body):
    status, payload = app.handle(endpoint, _raw(body))
    _check_answer(status, payload)
    if status == 200 and payload.get("Err"):
        assert "internal error" not in payload["Err"], payload


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS) | st.text(max_size=60), raw=st.binary(max_size=300))
def test_any_bytes_get_a_json_answer(app, endpoint, raw):
    status, payload = app.handle(endpoint, raw)
    _check_answer(status, payload)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = PluginServer(str(tmp_path_factory.mktemp("fz") / "p.sock"), PluginApp(ProtocolDriver()))
    srv.start()
    yield srv
    srv.stop()


def _answered_in_json(answer: bytes) -> None:
    status, headers, body = split_answer(answer)
    assert headers.get("content-type", "").endswith("json"), answer[:300]
    payload = json.loads(body)
    assert isinstance(payload, dict), payload
    if status != 200:
        assert isinstance(payload.get("Err"), str) and payload["Err"], payload


header_bytes = st.binary(max_size=80).filter(lambda b: b"\r\n\r\n" not in b)


@SOCKET_FUZZ
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD_", b"\x00", b""])
    | st.binary(max_size=8),
    target=st.sampled_from([e.encode() for e in ENDPOINTS]) | st.binary(max_size=40),
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/x", b""]),
    headers=st.lists(header_bytes, max_size=4),
)
def test_any_request_head_gets_a_json_answer(server, method, target, version, headers):
    line = b" ".join(p for p in (method, target, version) if p)
    raw = line + b"\r\n" + b"".join(h.replace(b"\r\n", b"") + b"\r\n" for h in headers)
    raw += b"Connection: close\r\n\r\n"
    answer = exchange(server.socket_path, raw)
    if not answer:
        # Nothing to answer: the first line held no word (no request at all).
        assert not raw.split(b"\n", 1)[0].split(), raw
        return
    _answered_in_json(answer)


@SOCKET_FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=st.binary(max_size=2000) | bodies.map(_raw))
def test_any_post_body_on_the_socket_gets_a_json_answer(server, endpoint, body):
    _answered_in_json(exchange(server.socket_path, raw_post(endpoint, body)))
