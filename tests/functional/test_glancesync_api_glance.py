"""GlanceSync's REST service on the harness: real Keystone tokens, real Glance regions.

``stowkit image serve`` runs as a process behind keystonemiddleware, on SQLite;
the sync user is a fresh project's admin, so only this module's images take
part (other tests' images are other tenants').  The region whose Glance goes
away mid-run is RegionTwo seen through a TCP relay that this module owns and
cuts, so the shared Glance servers keep running for everyone else.  The task
store is also run on the harness PostgreSQL.
"""

from __future__ import annotations

import io
import json
import os
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

from stowkit.corelib import config as core_config
from stowkit.corelib import registry
from stowkit.corelib.imagesync import api
from stowkit.corelib.imagesync.tasks import FAILED, INTERRUPTED, SYNCED, SYNCING
from stowkit.plugins.glance.store import GlanceImageStore
from tests.commands import STOWKIT
from tests.fakes import keystone_admin
from tests.fakes.net import free_port
from tests.fakes.postgres import scratch_database

REGION = "RegionTwo"


@pytest.fixture(scope="module")
def stack(service, tmp_path_factory):
    keystone = service("keystone")
    service("glance")
    name = f"skapi-{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    project = keystone_admin.make_admin(keystone["admin"], name, password)
    work = tmp_path_factory.mktemp("glancesync-api")
    svc = keystone["service"]
    conf_file = work / "stowkit.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {work}\n"
        "[image]\nbackend = glance\n"
        f"[image_glance]\nauth_url = {keystone['auth_url']}\nusername = {name}\n"
        f"password = {password}\nproject_name = {name}\n"
        f"[image_sync]\nconfig_file = {work / 'glancesync.conf'}\n"
        "[image_sync_api]\nauth_strategy = keystone\n"
        "[keystone_authtoken]\n"
        f"www_authenticate_uri = {keystone['auth_url']}\nauth_url = {keystone['auth_url']}\n"
        f"auth_type = password\nusername = {svc['username']}\npassword = {svc['password']}\n"
        f"project_name = {svc['project_name']}\nuser_domain_name = {svc['user_domain_name']}\n"
        f"project_domain_name = {svc['project_domain_name']}\n"
    )
    (work / "glancesync.conf").write_text("[main]\nmaster_region = RegionOne\n\n[master]\n")
    conf = core_config.load_conf([str(conf_file)])
    store = GlanceImageStore(conf, "image_glance")
    admin = {
        "auth_url": keystone["auth_url"],
        "username": name,
        "password": password,
        "project_name": name,
    }
    info = {
        "conf_file": conf_file,
        "conf": conf,
        "store": store,
        "work": work,
        "project": project,
        "admin_token": keystone_admin.token(admin),
        "member_token": keystone_admin.token(keystone["member"]),
        "name": name,
    }
    try:
        yield info
    finally:
        for region in ("RegionOne", REGION):
            try:
                images = store.list_images(region)
            except Exception:
                continue
            for image in images:
                if image.owner == project:
                    try:
                        store.delete_image(region, image.id)
                    except Exception:
                        pass


def _image(stack, name: str, size: int) -> None:
    data = os.urandom(size)
    stack["store"].create_image(
        "RegionOne",
        f"{stack['name']}-{name}",
        io.BytesIO(data),
        visibility="public",
        disk_format="raw",
        container_format="bare",
        size=size,
    )


def _start_server(stack) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(stack["work"] / "server.log", "ab")
    proc = subprocess.Popen(
        [*STOWKIT, "--config-file", str(stack["conf_file"]), "image", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).read()
            return proc, url
        except OSError:
            assert proc.poll() is None, (stack["work"] / "server.log").read_text()
            assert time.monotonic() < deadline, "GlanceSync API not ready"
            time.sleep(0.2)


def _stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(stack):
    proc, url = _start_server(stack)
    stack["server"] = proc
    yield url
    if stack["server"].poll() is None:
        _stop_server(stack["server"])


def call(url: str, method: str, path: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    if token is not None:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    return status, json.loads(payload) if payload else None


def wait_task(url, token, task_id, timeout=180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = call(url, "GET", f"/regions/{REGION}/tasks/{task_id}", token)
        assert status == 200, body
        if body["status"] != SYNCING:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.3)


def test_info_with_and_without_a_token(stack, server):
    for token in (None, stack["member_token"]):
        status, body = call(server, "GET", "/", token)
        assert status == 200 and body["status"] == "SUPPORTED"
        assert set(body) == {"id", "owner", "status", "version", "updated", "runningfrom", "href"}


def test_tokens_keystone_refuses(stack, server):
    status, body = call(server, "GET", f"/regions/{REGION}", None)
    assert status == 401 and body["error"]["code"] == 401
    status, body = call(server, "GET", f"/regions/{REGION}", "not-a-token-" + uuid.uuid4().hex)
    assert status == 404 and body["error"]["code"] == 404


def test_errors_of_every_kind(stack, server):
    admin = stack["admin_token"]
    assert call(server, "GET", "/regions/NoSuchRegion", admin)[0] == 410
    assert call(server, "POST", "/regions/NoSuchRegion", admin)[0] == 410
    assert call(server, "GET", f"/regions/{REGION}?colour=red", admin)[0] == 400
    status, body = call(server, "PUT", f"/regions/{REGION}", admin)
    assert status == 405 and body["error"]["code"] == 405
    status, body = call(server, "GET", f"/regions/{REGION}/tasks/{uuid.uuid4()}", admin)
    assert status == 404 and body["error"]["code"] == 404
    assert call(server, "DELETE", f"/regions/{REGION}/tasks/{uuid.uuid4()}", admin)[0] == 404


def test_sync_task_reaches_synced_then_is_deleted(stack, server):
    _image(stack, "small", 1 << 20)
    member, admin = stack["member_token"], stack["admin_token"]
    status, body = call(server, "GET", f"/regions/{REGION}?image={stack['name']}-small", member)
    assert status == 200
    assert [(i["name"], i["status"]) for i in body["images"]] == [
        (f"{stack['name']}-small", "pending_upload")
    ]
    # A member may look but not start a sync.
    status, body = call(server, "POST", f"/regions/{REGION}", member)
    assert status == 401 and "admin" in body["error"]["message"]
    status, body = call(server, "POST", f"/regions/{REGION}", admin)
    assert status == 200, body
    task_id = body["taskId"]
    again = call(server, "POST", f"/regions/{REGION}", admin)[1]["taskId"]
    current = call(server, "GET", f"/regions/{REGION}/tasks/{task_id}", admin)[1]
    if current["status"] == SYNCING:  # while it runs, a second POST gets the same task
        assert again == task_id
    done = wait_task(server, member, task_id)
    assert done["status"] == SYNCED, done
    status, body = call(server, "GET", f"/regions/{REGION}?image={stack['name']}-small", member)
    assert [i["status"] for i in body["images"]] == ["ok"]
    assert call(server, "DELETE", f"/regions/{REGION}/tasks/{task_id}", member)[0] == 401
    assert call(server, "DELETE", f"/regions/{REGION}/tasks/{task_id}", admin) == (200, None)
    assert call(server, "GET", f"/regions/{REGION}/tasks/{task_id}", admin)[0] == 404


def test_a_task_cut_off_by_a_restart_is_failed(stack, server):
    """SIGKILL while syncing: the restarted service reports the task failed, with why."""
    _image(stack, "big", 48 << 20)
    admin = stack["admin_token"]
    task_id = call(server, "POST", f"/regions/{REGION}", admin)[1]["taskId"]
    status, body = call(server, "GET", f"/regions/{REGION}/tasks/{task_id}", admin)
    # 48 MiB through two Glance APIs takes far longer than this one GET.
    assert body["status"] == SYNCING, body
    _stop_server(stack["server"], signal.SIGKILL)
    proc, url = _start_server(stack)
    stack["server"] = proc
    try:
        status, body = call(url, "GET", f"/regions/{REGION}/tasks/{task_id}", admin)
        assert status == 200 and body["status"] == FAILED, body
        assert body["message"] == INTERRUPTED
        assert call(url, "DELETE", f"/regions/{REGION}/tasks/{task_id}", admin) == (200, None)
    finally:
        _stop_server(proc)


class Relay:
    """A TCP relay to one Glance that can be cut: then that region is down for us only."""

    def __init__(self, target: str, cut_after: int) -> None:
        host, port = target.split("//", 1)[1].rstrip("/").split(":")
        self.target = (host, int(port))
        self.cut_after, self.sent = cut_after, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or self.cut.is_set():
                    break
                dst.sendall(data)
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.cut_after
                    if over:
                        self.close()
                        break
        except OSError:
            pass

    def close(self) -> None:
        """Glance 'stops': open connections are reset, new ones refused."""
        self.cut.set()
        with self.lock:
            socks, self.socks = self.socks, []
        for sock in [self.listener, *socks]:
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.close()
            except OSError:
                pass


def test_a_region_whose_glance_goes_away_mid_run_fails(stack):
    """In process, the same app and keystonemiddleware; RegionTwo reached through a relay."""
    _image(stack, "cut", 16 << 20)
    conf = stack["conf"]
    store = GlanceImageStore(conf, "image_glance")
    endpoints = store.endpoints()
    relay = Relay(endpoints[REGION], cut_after=4 << 20)  # cut during the upload
    endpoints[REGION] = relay.url
    tasks_conf = core_config.load_conf([str(stack["conf_file"])])
    tasks_conf.set_override("state_dir", str(stack["work"] / "inprocess"))
    tasks = registry.load("imagetask", tasks_conf)
    tasks.sync()
    wsgi, app = api.build_app(conf, store, tasks)

    def request(method: str, path: str) -> tuple[int, Any]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "HTTP_X_AUTH_TOKEN": stack["admin_token"],
        }
        seen = {}

        def start_response(status, headers, exc_info=None):
            seen["status"] = int(status.split()[0])

        body = b"".join(wsgi(environ, start_response))
        return seen["status"], json.loads(body) if body else None

    try:
        status, body = request("POST", f"/regions/{REGION}")
        assert status == 200, body
        deadline = time.monotonic() + 180
        while True:
            status, task = request("GET", f"/regions/{REGION}/tasks/{body['taskId']}")
            assert status == 200, task
            if task["status"] != SYNCING:
                break
            assert time.monotonic() < deadline, task
            time.sleep(0.3)
        assert relay.cut.is_set()
        assert task["status"] == FAILED and REGION in task["message"], task
        assert request("DELETE", f"/regions/{REGION}/tasks/{body['taskId']}") == (200, None)
    finally:
        relay.close()
        tasks.close()


@pytest.fixture
def pg_tasks(service):
    with scratch_database(service("postgres"), "stowkit_tasks") as url:
        conf = core_config.load_conf([])
        conf.set_override("state_dir", "/nonexistent")
        store = registry.load("imagetask", conf, connection=url)
        store.sync()
        yield store
        store.close()


def test_task_store_on_postgresql(pg_tasks):
    results: list[tuple[str, bool]] = []

    def start() -> None:
        task, created = pg_tasks.start(REGION, "u")
        results.append((task.task_id, created))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({t for t, _ in results}) == 1 and sum(c for _, c in results) == 1
    task_id = results[0][0]
    assert pg_tasks.interrupt() == 1
    assert pg_tasks.get(task_id).status == FAILED
    other, created = pg_tasks.start(REGION, "u")
    assert created
    pg_tasks.finish(other.task_id, SYNCED, "ok")
    pg_tasks.delete(other.task_id)
    pg_tasks.delete(task_id)
