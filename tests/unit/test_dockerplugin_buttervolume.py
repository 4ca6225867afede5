"""buttervolume 3.13's extension routes on the plugin socket, with its request shapes.

Each request below is what buttervolume's cli.py sends (method, path, JSON
body) and each answer is checked for the keys its CLI reads (``Snapshot``,
``Snapshots``, ``Schedule``, ``VolumeBackup``, ``VolumeCloned``, ``Err``).
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stowkit.corelib.dockerplugin.app import PluginApp
from stowkit.corelib.dockerplugin.server import PluginServer
from stowkit.corelib.schedule.filestore import ScheduleStore
from tests.fakes.docker_plugin import UnixHTTPConnection
from tests.fakes.volumes import FakeDriver

#: every route buttervolume 3.13's plugin.py serves besides Docker's own
BUTTERVOLUME_ROUTES = {
    "/VolumeDriver.Volume.Sync",
    "/VolumeDriver.Snapshot.Send",
    "/VolumeDriver.Snapshot",
    "/VolumeDriver.Snapshot.List",
    "/VolumeDriver.Snapshot.Remove",
    "/VolumeDriver.Schedule",
    "/VolumeDriver.Schedule.List",
    "/VolumeDriver.Schedule.Pause",
    "/VolumeDriver.Schedule.Resume",
    "/VolumeDriver.Snapshot.Restore",
    "/VolumeDriver.Clone",
    "/VolumeDriver.Snapshots.Purge",
}


@pytest.fixture
def app(tmp_path):
    driver = FakeDriver()
    driver.create_volume("v1")
    return PluginApp(driver, ScheduleStore(str(tmp_path / "schedule.json")))


def call(app, path, body=None):
    status, payload = app.handle(path, json.dumps(body).encode() if body is not None else b"")
    assert status == 200
    return payload


def test_every_buttervolume_route_is_served(app):
    assert BUTTERVOLUME_ROUTES <= set(app.routes)


def test_snapshot_list_remove(app):
    snap = call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})
    assert snap["Err"] == "" and snap["Snapshot"].startswith("v1@")
    name = snap["Snapshot"]
    assert call(app, "/VolumeDriver.Snapshot.List") == {"Err": "", "Snapshots": [name]}
    assert call(app, "/VolumeDriver.Snapshot.List/v1")["Snapshots"] == [name]
    assert call(app, "/VolumeDriver.Snapshot.Remove", {"Name": name}) == {"Err": ""}
    assert call(app, "/VolumeDriver.Snapshot.List/v1")["Snapshots"] == []
    assert "not found" in call(app, "/VolumeDriver.Snapshot.Remove", {"Name": name})["Err"]
    assert "not found" in call(app, "/VolumeDriver.Snapshot", {"Name": "nope"})["Err"]


def test_restore_and_clone_answer_buttervolumes_keys(app):
    name = call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})["Snapshot"]
    got = call(app, "/VolumeDriver.Snapshot.Restore", {"Name": name, "Target": None})
    assert got["Err"] == "" and got["VolumeBackup"].startswith("v1@")
    # a fresh target: no backup, and buttervolume's CLI then prints nothing
    assert call(app, "/VolumeDriver.Snapshot.Restore", {"Name": name, "Target": "v2"}) == {
        "Err": ""
    }
    assert call(app, "/VolumeDriver.Clone", {"Name": "v1", "Target": "v3"}) == {
        "Err": "",
        "VolumeCloned": "v3",
    }
    # buttervolume answered a 500 here; stowkit says what is missing
    assert "Target" in call(app, "/VolumeDriver.Clone", {"Name": "v1", "Target": None})["Err"]


def test_send_sync_purge(app):
    name = call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})["Snapshot"]
    sent = call(app, "/VolumeDriver.Snapshot.Send", {"Name": name, "Host": "h1"})
    assert sent["Err"] == "" and sent["Mode"] == "full" and sent["Parent"] is None
    assert ("send", name, "h1") in app.driver.calls
    assert call(app, "/VolumeDriver.Volume.Sync", {"Volumes": ["v1"], "Hosts": ["h1", "h2"]}) == {
        "Err": ""
    }
    assert ("sync", "v1", ("h1", "h2")) in app.driver.calls
    app.driver.unreachable.add("down")
    err = call(app, "/VolumeDriver.Volume.Sync", {"Volumes": ["v1"], "Hosts": ["down"]})["Err"]
    assert "down" in err and "\n" not in err
    body = {"Name": "v1", "Pattern": "1h:1d", "Dryrun": True}
    dry = call(app, "/VolumeDriver.Snapshots.Purge", body)
    assert dry["Err"] == "" and ("purge", "v1", "1h:1d", True) in app.driver.calls
    body["Dryrun"] = False
    assert call(app, "/VolumeDriver.Snapshots.Purge", body)["Err"] == ""
    assert ("purge", "v1", "1h:1d", False) in app.driver.calls


def test_schedule_routes(app):
    def schedule(timer, action="snapshot", name="v1"):
        return call(app, "/VolumeDriver.Schedule", {"Name": name, "Action": action, "Timer": timer})

    assert schedule("60") == {"Err": ""}
    assert schedule("1440", "replicate:h1") == {"Err": ""}
    assert schedule("pause", "replicate:h1") == {"Err": ""}
    assert call(app, "/VolumeDriver.Schedule.List") == {
        "Err": "",
        "Schedule": [
            {"Name": "v1", "Action": "snapshot", "Timer": "60", "Active": "True"},
            {"Name": "v1", "Action": "replicate:h1", "Timer": "1440", "Active": "False"},
        ],
    }
    assert call(app, "/VolumeDriver.Schedule.Pause") == {"Err": ""}
    paused = {"Err": "Schedule is globally paused"}
    assert call(app, "/VolumeDriver.Schedule.List") == paused
    assert schedule("5") == paused
    assert call(app, "/VolumeDriver.Schedule.Resume") == {"Err": ""}
    assert schedule("delete") == {"Err": ""}
    assert schedule("0", "replicate:h1") == {"Err": ""}
    assert call(app, "/VolumeDriver.Schedule.List") == {"Err": "", "Schedule": []}
    assert "interval" in schedule("often")["Err"]  # buttervolume ignored it silently
    assert schedule(30)["Err"] == ""  # a JSON number is minutes too


def test_schedule_routes_without_a_store():
    app = PluginApp(FakeDriver())
    assert "no schedule" in call(app, "/VolumeDriver.Schedule.List")["Err"]


def test_get_status(app):
    status = call(app, "/VolumeDriver.Get", {"Name": "v1"})["Volume"]["Status"]
    assert status == {"mounts": 0, "snapshots": 0, "newest_snapshot": None, "replication": {}}
    call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})
    newest = call(app, "/VolumeDriver.Snapshot", {"Name": "v1"})["Snapshot"]
    call(app, "/VolumeDriver.Mount", {"Name": "v1", "ID": "c1"})
    status = call(app, "/VolumeDriver.Get", {"Name": "v1"})["Volume"]["Status"]
    assert status["snapshots"] == 2 and status["newest_snapshot"] == newest
    assert status["mounts"] == 1
    assert call(app, "/VolumeDriver.Capabilities") == {"Capabilities": {"Scope": "local"}}


def test_buttervolume_requests_through_the_socket(tmp_path):
    """GET without a body for the lists, POST with a JSON body for the rest."""
    driver = FakeDriver()
    driver.create_volume("v1")
    path = str(tmp_path / "p.sock")
    server = PluginServer(path, PluginApp(driver, ScheduleStore(str(tmp_path / "s.json"))))
    server.start()
    try:
        conn = UnixHTTPConnection(path)
        conn.request("POST", "/VolumeDriver.Snapshot", body=json.dumps({"Name": "v1"}))
        snap = json.loads(conn.getresponse().read())["Snapshot"]
        conn.request("GET", "/VolumeDriver.Snapshot.List/v1")
        assert json.loads(conn.getresponse().read()) == {"Err": "", "Snapshots": [snap]}
        conn.request("POST", "/VolumeDriver.Schedule.Pause")  # no body at all
        assert json.loads(conn.getresponse().read()) == {"Err": ""}
        conn.request("GET", "/VolumeDriver.Schedule.List")
        assert json.loads(conn.getresponse().read())["Err"] == "Schedule is globally paused"
        conn.close()
    finally:
        server.stop()


# -- any JSON body: an answer, never an internal error -------------------------------------

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_names = st.sampled_from(["v1", "v1@2026-01-01T00-00-01.000000", "../x", "", "a b", "h1"])
_bodies = st.dictionaries(
    st.sampled_from(["Name", "Target", "Host", "Hosts", "Volumes", "Pattern", "Dryrun", "Timer",
                     "Action", "Test"]),
    _values | _names | st.lists(_names, max_size=3),
    max_size=6,
)  # fmt: skip


@settings(
    max_examples=int(os.environ.get("STOWKIT_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(route=st.sampled_from(sorted(BUTTERVOLUME_ROUTES)), body=_bodies)
def test_any_body_gets_an_answer_not_an_internal_error(tmp_path, route, body):
    driver = FakeDriver()
    driver.create_volume("v1")
    driver.create_snapshot("v1")
    app = PluginApp(driver, ScheduleStore(str(tmp_path / "fuzz-schedule.json")))
    status, payload = app.handle(route, json.dumps(body).encode())
    assert status == 200 and isinstance(payload.get("Err"), str)
    assert "internal error" not in payload["Err"], (route, body, payload)
