"""The Docker plugin protocol over an in-memory VolumeDriver, through a real unix socket."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import threading

import pytest

from stowkit.corelib.dockerplugin.app import CONTENT_TYPE, PluginApp
from stowkit.corelib.dockerplugin.server import PluginServer
from stowkit.corelib.errors import (
    AlreadyExists,
    BackendUnavailable,
    InvalidArgument,
)
from tests.fakes.docker_plugin import UnixHTTPConnection, exchange
from tests.fakes.volumes import FakeDriver

# -- the app, called directly -------------------------------------------------------


def call(app: PluginApp, path: str, body: dict | None = None) -> dict:
    status, payload = app.handle(path, json.dumps(body or {}).encode())
    assert status == 200, payload
    return payload


@pytest.fixture
def app():
    return PluginApp(FakeDriver())


def test_activate_and_capabilities(app):
    assert call(app, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
    assert call(app, "/VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}


def test_create_get_list_path_remove(app):
    assert call(app, "/VolumeDriver.Create", {"Name": "v1", "Opts": {}}) == {"Err": ""}
    got = call(app, "/VolumeDriver.Get", {"Name": "v1"})
    assert got["Err"] == ""
    assert got["Volume"]["Name"] == "v1"
    assert got["Volume"]["Mountpoint"] == "/fake/volumes/v1"
    listed = call(app, "/VolumeDriver.List")
    assert listed == {
        "Volumes": [
            {"Name": "v1", "Mountpoint": "/fake/volumes/v1", "CreatedAt": STAMP},
        ],
        "Err": "",
    }
    assert call(app, "/VolumeDriver.Path", {"Name": "v1"})["Mountpoint"] == "/fake/volumes/v1"
    assert call(app, "/VolumeDriver.Remove", {"Name": "v1"}) == {"Err": ""}
    assert call(app, "/VolumeDriver.List")["Volumes"] == []


STAMP = "2026-01-02T03:04:05.678000Z"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def test_get_reports_created_at_in_rfc3339_cheaply(app):
    call(app, "/VolumeDriver.Create", {"Name": "v1"})

    def expensive(*args, **kwargs):
        raise AssertionError("Get must not count snapshots or measure sizes")

    app.driver.get_volume = expensive  # Get asks volume_created, not get_volume
    got = call(app, "/VolumeDriver.Get", {"Name": "v1"})["Volume"]
    # what `docker volume inspect` shows; Go parses it as time.Time (RFC 3339)
    assert got["CreatedAt"] == STAMP and RFC3339.fullmatch(got["CreatedAt"])
    assert dt.datetime.fromisoformat(got["CreatedAt"]) == dt.datetime(
        2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC
    )


def test_created_at_left_out_when_unknown(app):
    # Docker fails a Get whose CreatedAt is "" (not a time): omit it instead.
    call(app, "/VolumeDriver.Create", {"Name": "v1"})
    app.driver.volumes["v1"]["created"] = None
    assert "CreatedAt" not in call(app, "/VolumeDriver.Get", {"Name": "v1"})["Volume"]
    assert "CreatedAt" not in call(app, "/VolumeDriver.List")["Volumes"][0]


def test_rfc3339_is_utc_with_z():
    from stowkit.corelib.dockerplugin.app import rfc3339

    paris = dt.timezone(dt.timedelta(hours=1))
    assert rfc3339(dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=paris)) == "2026-05-01T11:00:00Z"


def test_create_passes_opts_as_strings(app):
    call(
        app,
        "/VolumeDriver.Create",
        {"Name": "v1", "Opts": {"compression": "zstd", "copyonwrite": True}},
    )
    assert app.driver.calls[-1] == ("create", "v1", {"compression": "zstd", "copyonwrite": "True"})


def test_create_refuses_an_option_the_backend_has_no_capability_for():
    class Plain(FakeDriver):
        capabilities = frozenset()
        group = "volume_plain"

    plain = PluginApp(Plain())
    answer = call(plain, "/VolumeDriver.Create", {"Name": "v1", "Opts": {"compression": "zstd"}})
    assert answer["Err"] == "the volume_plain backend does not support compression"
    answer = call(plain, "/VolumeDriver.Create", {"Name": "v1", "Opts": {"copyonwrite": "false"}})
    assert answer["Err"] == "the volume_plain backend does not support nocow"
    assert plain.driver.calls == []  # refused before the backend is asked
    assert call(plain, "/VolumeDriver.Create", {"Name": "v1"}) == {"Err": ""}


def test_create_of_an_existing_volume_succeeds(app):
    # Idempotent, as Docker's local driver and buttervolume 3.13 answer.
    assert call(app, "/VolumeDriver.Create", {"Name": "v1"}) == {"Err": ""}
    assert call(app, "/VolumeDriver.Create", {"Name": "v1"}) == {"Err": ""}
    assert [c for c in app.driver.calls if c[0] == "create"] == [("create", "v1", {})] * 2
    # options are still checked first
    bad = call(app, "/VolumeDriver.Create", {"Name": "v1", "Opts": {"size": "1G"}})
    assert "unknown volume option" in bad["Err"]


def test_create_over_something_that_is_not_a_volume_fails():
    class Taken(FakeDriver):
        def create_volume(self, name, options=None):
            raise AlreadyExists(f"volume {name} already exists")

    answer = call(PluginApp(Taken()), "/VolumeDriver.Create", {"Name": "v1"})
    assert "exists and is not a volume" in answer["Err"]


def test_errors_are_err_strings(app):
    assert "not found" in call(app, "/VolumeDriver.Get", {"Name": "nope"})["Err"]
    call(app, "/VolumeDriver.Create", {"Name": "v1"})
    assert (
        "unknown volume option"
        in call(app, "/VolumeDriver.Create", {"Name": "v2", "Opts": {"size": "1G"}})["Err"]
    )
    assert (
        "must be a JSON object"
        in call(app, "/VolumeDriver.Create", {"Name": "v3", "Opts": []})["Err"]
    )


@pytest.mark.parametrize("name", ["../x", "x;touch /tmp/p", "", "a b", "/abs", "x" * 300, None, 5])
@pytest.mark.parametrize(
    "path",
    ["/VolumeDriver.Create", "/VolumeDriver.Get", "/VolumeDriver.Mount", "/VolumeDriver.Remove"],
)
def test_hostile_names_refused_before_the_driver(app, path, name):
    payload = call(app, path, {"Name": name, "ID": "abc"})
    assert payload["Err"].startswith("invalid volume name")
    assert app.driver.calls == []


def test_mount_counts_per_id(app):
    call(app, "/VolumeDriver.Create", {"Name": "v1"})
    m = call(app, "/VolumeDriver.Mount", {"Name": "v1", "ID": "a"})
    assert m == {"Mountpoint": "/fake/volumes/v1", "Err": ""}
    call(app, "/VolumeDriver.Mount", {"Name": "v1", "ID": "a"})  # same ID: counts once
    call(app, "/VolumeDriver.Mount", {"Name": "v1", "ID": "b"})
    assert call(app, "/VolumeDriver.Get", {"Name": "v1"})["Volume"]["Status"]["mounts"] == 2
    call(app, "/VolumeDriver.Unmount", {"Name": "v1", "ID": "a"})
    assert "mounted" in call(app, "/VolumeDriver.Remove", {"Name": "v1"})["Err"]
    call(app, "/VolumeDriver.Unmount", {"Name": "v1", "ID": "b"})
    assert call(app, "/VolumeDriver.Remove", {"Name": "v1"}) == {"Err": ""}


def test_mount_needs_an_id(app):
    call(app, "/VolumeDriver.Create", {"Name": "v1"})
    assert "needs an ID" in call(app, "/VolumeDriver.Mount", {"Name": "v1"})["Err"]


def test_unknown_endpoint_and_bad_json(app):
    status, payload = app.handle("/VolumeDriver.Explode", b"{}")
    assert status == 404 and "unknown endpoint" in payload["Err"]
    status, payload = app.handle("/VolumeDriver.Get", b"{not json")
    assert status == 200 and payload["Err"].startswith("invalid JSON")
    status, payload = app.handle("/VolumeDriver.Get", b"[1]")
    assert "JSON object" in payload["Err"]


def test_a_bug_in_the_driver_is_an_err_not_a_crash(app):
    def boom(name):
        raise RuntimeError("disk on fire")

    app.driver.volume_path = boom
    payload = call(app, "/VolumeDriver.Path", {"Name": "v1"})
    assert "internal error" in payload["Err"] and "disk on fire" in payload["Err"]


def test_buttervolume_snapshot_extensions(app):
    call(app, "/VolumeDriver.Create", {"Name": "v1"})
    snap = call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})["Snapshot"]
    assert snap.startswith("v1@")
    assert call(app, "/VolumeDriver.Snapshot.List", {"Name": "v1"})["Snapshots"] == [snap]
    assert call(app, "/VolumeDriver.Snapshot.List")["Snapshots"] == [snap]
    assert call(app, "/VolumeDriver.Snapshot.List/v1")["Snapshots"] == [snap]
    assert call(app, "/VolumeDriver.Snapshot.List/v2")["Snapshots"] == []
    assert "invalid volume name" in call(app, "/VolumeDriver.Snapshot.List/..%2Fx")["Err"]


# -- through the unix socket ------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    path = str(tmp_path / "plugins" / "test.sock")
    server = PluginServer(path, PluginApp(FakeDriver()))
    server.start()
    yield path, server
    server.stop()


def post(conn, path, body=None):
    conn.request("POST", path, body=json.dumps(body or {}), headers={"Accept": CONTENT_TYPE})
    resp = conn.getresponse()
    return resp.status, resp.getheader("Content-Type"), json.loads(resp.read())


def test_socket_keeps_the_connection_alive(served):
    path, _ = served
    assert oct(os.stat(path).st_mode & 0o777) == "0o660"
    conn = UnixHTTPConnection(path)
    status, ctype, body = post(conn, "/Plugin.Activate")
    assert (status, ctype, body) == (200, CONTENT_TYPE, {"Implements": ["VolumeDriver"]})
    for i in range(5):  # several requests on one connection, as dockerd does
        assert post(conn, "/VolumeDriver.Create", {"Name": f"v{i}"})[2] == {"Err": ""}
    assert len(post(conn, "/VolumeDriver.List")[2]["Volumes"]) == 5
    conn.close()


def test_concurrent_clients(served):
    path, _ = served
    errors = []

    def worker(n):
        try:
            conn = UnixHTTPConnection(path)
            for i in range(10):
                assert post(conn, "/VolumeDriver.Create", {"Name": f"w{n}-{i}"})[2] == {"Err": ""}
            conn.close()
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = UnixHTTPConnection(path)
    assert len(post(conn, "/VolumeDriver.List")[2]["Volumes"]) == 40


def test_stop_removes_the_socket_and_a_live_socket_is_not_stolen(tmp_path):
    path = str(tmp_path / "p.sock")
    server = PluginServer(path, PluginApp(FakeDriver()))
    server.start()
    with pytest.raises(BackendUnavailable, match="already serves"):
        PluginServer(path, PluginApp(FakeDriver()))
    server.stop()
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "p.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens
    server = PluginServer(path, PluginApp(FakeDriver()))
    server.start()
    conn = UnixHTTPConnection(path)
    assert post(conn, "/Plugin.Activate")[0] == 200
    conn.close()
    server.stop()


def test_a_regular_file_is_never_removed(tmp_path):
    path = tmp_path / "p.sock"
    path.write_text("precious")
    with pytest.raises(InvalidArgument, match="not a socket"):
        PluginServer(str(path), PluginApp(FakeDriver()))
    assert path.read_text() == "precious"


def test_a_socket_that_cannot_be_made_names_the_path_and_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the socket's directory should be
    with pytest.raises(
        BackendUnavailable, match=r"cannot listen on .*file/p\.sock: Not a directory"
    ):
        PluginServer(str(blocker / "p.sock"), PluginApp(FakeDriver()))


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET /" + b"a" * 300_000 + b" HTTP/1.1\r\n\r\n", 414),
        (
            b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"
            + b"x" * 2_000_000,
            413,
        ),
    ],
    ids=["long-uri", "large-body"],
)
def test_a_refused_request_is_answered_not_reset(served, data, status):
    """The server reads what it refused before closing: closing with it unread resets the
    connection, and the client loses the answer (or its send fails) instead of reading why."""
    path, _ = served
    for _ in range(5):
        answer = exchange(path, data)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert int(head.split()[1]) == status, head
        assert json.loads(body)["Err"].startswith(f"HTTP {status}")
