"""The Docker plugin against hostile clients: races, bursts, bad HTTP, deep JSON.

The btrfs driver's Mount/Remove/Create ordering is checked here on plain
directories (subvolume calls faked): what is tested is the order of lock and
existence check, which does not depend on btrfs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

from stowkit.corelib import config, registry
from stowkit.corelib.dockerplugin.app import PluginApp
from stowkit.corelib.dockerplugin.server import BACKLOG, PluginServer
from stowkit.corelib.errors import Conflict, NotFound
from stowkit.plugins.btrfs import state, subvol
from tests.fakes.docker_plugin import ProtocolDriver, exchange, raw_post, split_answer


@pytest.fixture
def fake_btrfs(monkeypatch):
    """Subvolumes as plain directories."""
    monkeypatch.setattr(subvol, "require_bindings", lambda: None)
    monkeypatch.setattr(subvol, "is_subvolume", os.path.isdir)
    monkeypatch.setattr(subvol, "create", os.mkdir)
    monkeypatch.setattr(subvol, "delete", shutil.rmtree)
    monkeypatch.setattr(subvol, "mark_created", lambda path, when: None)
    monkeypatch.setattr(subvol, "created", lambda path: None)
    monkeypatch.setattr(subvol, "set_nocow", lambda path: None)
    monkeypatch.setattr(subvol, "set_compression", lambda path, algo: None)
    monkeypatch.setattr(subvol, "rename", lambda src, dst, flags: os.rename(src, dst))

    class _Util:
        class BtrfsUtilError(Exception):
            pass

        @staticmethod
        def subvolume_id(path):
            return 5

    monkeypatch.setattr(subvol, "btrfsutil", _Util)


@pytest.fixture
def driver(tmp_path, fake_btrfs):
    conf = config.load_conf()
    return registry.load("volume", conf, "btrfs", root=str(tmp_path / "root"))


def _pause_mount_after_check(driver, monkeypatch, removed: threading.Event, wait: float):
    """Hold the mounting thread just after it saw the volume exist."""
    checked = threading.Event()
    real = driver._existing_volume

    def existing(name):
        path = real(name)
        if threading.current_thread().name == "mounter":
            checked.set()
            removed.wait(wait)  # Remove runs now, unless the lock keeps it out
        return path

    monkeypatch.setattr(driver, "_existing_volume", existing)
    return checked


def test_mount_racing_remove_leaves_no_stale_record(driver, monkeypatch):
    driver.create_volume("v1")
    removed = threading.Event()
    checked = _pause_mount_after_check(driver, monkeypatch, removed, wait=0.5)
    outcome: dict[str, object] = {}

    def mounter():
        try:
            outcome["mount"] = driver.mount("v1", "m1")
        except NotFound as exc:
            outcome["mount"] = exc

    thread = threading.Thread(target=mounter, name="mounter")
    thread.start()
    assert checked.wait(5)
    try:
        driver.delete_volume("v1")
        outcome["remove"] = "ok"
    except Conflict as exc:
        outcome["remove"] = exc
    removed.set()
    thread.join(5)

    gone = not os.path.isdir(os.path.join(driver.volumes_dir, "v1"))
    if gone:
        # Remove won: Mount must not have handed out the deleted volume's path,
        # and no ID may be recorded for it.
        assert isinstance(outcome["mount"], NotFound), outcome
        assert driver.mounts("v1") == []
    else:
        # Mount won: the volume is there, mounted, and Remove was refused.
        assert isinstance(outcome["remove"], Conflict), outcome
        assert driver.mounts("v1") == ["m1"]
    # Either way a volume made afresh under the name is not "mounted".
    if gone:
        driver.create_volume("v1")
        assert driver.mounts("v1") == []
        driver.delete_volume("v1")


def test_remove_checks_existence_under_the_lock(driver, monkeypatch):
    driver.create_volume("v2")
    seen = []
    real_lock = driver.layout.state_lock
    real_existing = driver._existing_volume
    held = threading.local()

    def lock(name):
        cm = real_lock(name)

        class _Track:
            def __enter__(self):
                cm.__enter__()
                held.on = True

            def __exit__(self, *exc):
                held.on = False
                return cm.__exit__(*exc)

        return _Track()

    def existing(name):
        seen.append(getattr(held, "on", False))
        return real_existing(name)

    monkeypatch.setattr(driver.layout, "state_lock", lock)
    monkeypatch.setattr(driver, "_existing_volume", existing)
    driver.mount("v2", "m1")
    driver.unmount("v2", "m1")
    driver.clear_mounts("v2")
    driver.delete_volume("v2")
    assert seen and all(seen), seen


def test_create_drops_a_stale_mount_record(driver):
    driver.mounts("nothere")  # sets the layout up
    state.write_mounts(driver._dir(".mounts", "v3"), driver._boot, ["old-id"])
    driver.create_volume("v3")
    assert driver.mounts("v3") == []
    driver.delete_volume("v3")


# -- the socket ---------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    srv = PluginServer(str(tmp_path / "p.sock"), PluginApp(ProtocolDriver()))
    srv.start()
    yield srv
    srv.stop()


def _err(answer: bytes) -> tuple[int, str]:
    status, headers, body = split_answer(answer)
    assert headers.get("content-type", "").endswith("json"), headers
    payload = json.loads(body)
    assert isinstance(payload, dict) and isinstance(payload.get("Err"), str), payload
    return status, payload["Err"]


def test_deep_json_gets_an_answer(server):
    deep = b"[" * 100_000 + b"]" * 100_000
    status, err = _err(exchange(server.socket_path, raw_post("/VolumeDriver.Get", deep)))
    assert status == 200
    assert "nested too deeply" in err


def test_deep_json_inside_a_field_gets_an_answer(server):
    body = b'{"Name": "v", "Opts": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}"
    status, err = _err(exchange(server.socket_path, raw_post("/VolumeDriver.Create", body)))
    assert status == 200 and err


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"GET /x FTP/1.0\r\n\r\n", 400),
        (b"PUT /VolumeDriver.List HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 501),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 120 + b"\r\n", 431),
        (b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /Nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404),
    ],
)
def test_http_level_errors_are_json(server, raw, status):
    got, err = _err(exchange(server.socket_path, raw))
    assert got == status
    assert err and "\n" not in err and "<" not in err


def test_header_bound_is_the_servers_own(server, monkeypatch):
    import http.client

    monkeypatch.setattr(http.client, "_MAXHEADERS", 1000)  # as swiftclient does (256)
    raw = b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 300 + b"\r\n"
    assert _err(exchange(server.socket_path, raw))[0] == 431


def test_backlog_fits_a_burst(tmp_path):
    assert BACKLOG >= 128
    # Not serving: nothing is accepted, so every connect has to wait in the
    # backlog; a unix socket refuses a non-blocking connect past it (EAGAIN).
    srv = PluginServer(str(tmp_path / "q.sock"), PluginApp(ProtocolDriver()))
    socks = []
    try:
        for _ in range(128):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            socks.append(s)
            s.setblocking(False)
            s.connect(srv.socket_path)
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_burst_of_clients_all_answered(server):
    results: list[bytes] = []
    lock = threading.Lock()

    def client():
        for _ in range(3):
            answer = exchange(server.socket_path, raw_post("/Plugin.Activate", b""))
            with lock:
                results.append(answer)

    threads = [threading.Thread(target=client) for _ in range(50)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert time.monotonic() - start < 30
    assert len(results) == 150
    assert all(split_answer(a)[0] == 200 for a in results)
