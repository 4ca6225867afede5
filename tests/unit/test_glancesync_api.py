"""GlanceSync's REST service in process, on the embedded defaults (local store, SQLite)."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest

from stowkit.cli.app import main
from stowkit.corelib import config, registry
from stowkit.corelib.errors import Conflict, NotFound
from stowkit.corelib.imagesync import api
from stowkit.corelib.imagesync.tasks import FAILED, INTERRUPTED, SYNCED, SYNCING, TaskRunner


class Client:
    def __init__(self, app: Any, headers: dict[str, str] | None = None) -> None:
        self.app, self.headers = app, headers or {}

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "wsgi.input": io.BytesIO(b""),
            "wsgi.url_scheme": "http",
            "HTTP_HOST": "glancesync.test:8080",
        }
        for name, value in {**self.headers, **(headers or {})}.items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        seen: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            seen["status"] = int(status.split()[0])
            seen["headers"] = dict(response_headers)

        body = b"".join(self.app(environ, start_response))
        return seen["status"], (json.loads(body) if body else None), seen["headers"]


@pytest.fixture
def env(tmp_path):
    state = tmp_path / "state"
    for region in ("One", "Two", "Three"):
        (state / "images" / region).mkdir(parents=True)
    conf_file = tmp_path / "stowkit.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {state}\n"
        f"[image_sync]\nconfig_file = {tmp_path / 'glancesync.conf'}\n"
    )
    (tmp_path / "glancesync.conf").write_text("[main]\nmaster_region = One\n")
    conf = config.load_conf([str(conf_file)])
    store = registry.load("image", conf)
    store.create_image("One", "base", io.BytesIO(b"x" * 100), visibility="public")
    store.create_image("One", "small", io.BytesIO(b"y" * 10), visibility="public")
    tasks = registry.load("imagetask", conf)
    tasks.sync()
    return {"conf": conf, "conf_file": conf_file, "store": store, "tasks": tasks}


def noauth(env) -> tuple[Client, api.GlanceSyncApp]:
    wsgi, app = api.build_app(env["conf"], env["store"], env["tasks"], auth="noauth")
    return Client(wsgi), app


def keystone(env, headers: dict[str, str]) -> Client:
    # The app as it sits behind keystonemiddleware (delay_auth_decision): the
    # middleware's headers are set by hand here; the functional tests use it for real.
    app = api.GlanceSyncApp(
        lambda: api.imagesync.build(env["conf"], env["store"]),
        TaskRunner(env["tasks"], lambda region: (True, "done")),
        auth="keystone",
    )
    return Client(app, headers)


def wait(client: Client, region: str, task_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = client.request("GET", f"/regions/{region}/tasks/{task_id}")
        assert status == 200, body
        if body["status"] != SYNCING or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_info_document(env):
    client, _ = noauth(env)
    status, body, headers = client.request("GET", "/")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(body) == {"id", "owner", "status", "version", "updated", "runningfrom", "href"}
    assert body["status"] == "SUPPORTED" and body["href"] == "http://glancesync.test:8080/"
    assert body["id"] == "v1"


def test_info_needs_no_token_even_with_keystone(env):
    status, body, _ = keystone(env, {}).request("GET", "/")
    assert status == 200 and body["status"] == "SUPPORTED"


def test_region_status_and_filter(env):
    client, _ = noauth(env)
    status, body, _ = client.request("GET", "/regions/Two")
    assert status == 200
    assert [(i["name"], i["status"], i["message"]) for i in body["images"]] == [
        ("small", "pending_upload", None),
        ("base", "pending_upload", None),
    ]
    status, body, _ = client.request("GET", "/regions/Two?image=base")
    assert [i["name"] for i in body["images"]] == ["base"]
    # The master region is reported like any other, as GlanceSync does.
    status, body, _ = client.request("GET", "/regions/One")
    assert status == 200 and {i["status"] for i in body["images"]} == {"ok"}


def test_error_checksum_has_a_message(env):
    env["store"].create_image("Two", "base", io.BytesIO(b"z" * 100), visibility="public")
    client, _ = noauth(env)
    _, body, _ = client.request("GET", "/regions/Two?image=base")
    (image,) = body["images"]
    assert image["status"] == "error_checksum" and "different checksum" in image["message"]


def test_post_syncs_the_region_and_the_task_can_be_deleted(env):
    client, _ = noauth(env)
    status, body, _ = client.request("POST", "/regions/Two")
    assert status == 200 and set(body) == {"taskId"}
    task = wait(client, "Two", body["taskId"])
    assert task["status"] == SYNCED and "change(s) made" in task["message"], task
    _, body2, _ = client.request("GET", "/regions/Two")
    assert {i["status"] for i in body2["images"]} == {"ok"}
    # Not the task of another region.
    assert client.request("GET", f"/regions/Three/tasks/{body['taskId']}")[0] == 404
    status, deleted, _ = client.request("DELETE", f"/regions/Two/tasks/{body['taskId']}")
    assert (status, deleted) == (200, None)
    status, err, _ = client.request("GET", f"/regions/Two/tasks/{body['taskId']}")
    assert status == 404 and err["error"]["code"] == 404


def test_one_running_task_per_region(env):
    gate = threading.Event()

    def slow(region: str) -> tuple[bool, str]:
        gate.wait(10)
        return True, "ok"

    app = api.GlanceSyncApp(
        lambda: api.imagesync.build(env["conf"], env["store"]),
        TaskRunner(env["tasks"], slow),
        auth="noauth",
    )
    client = Client(app)
    first = client.request("POST", "/regions/Two")[1]["taskId"]
    assert client.request("POST", "/regions/Two")[1]["taskId"] == first
    other = client.request("POST", "/regions/Three")[1]["taskId"]
    assert other != first
    # A running task cannot be deleted (GlanceSync: 400).
    status, err, _ = client.request("DELETE", f"/regions/Two/tasks/{first}")
    assert status == 400 and "syncing" in err["error"]["message"]
    gate.set()
    assert wait(client, "Two", first)["status"] == SYNCED
    again = client.request("POST", "/regions/Two")[1]["taskId"]
    assert again != first


def test_a_failing_sync_ends_failed_with_its_message(env):
    def broken(region: str) -> tuple[bool, str]:
        raise RuntimeError("glance went away")

    client = Client(
        api.GlanceSyncApp(
            lambda: api.imagesync.build(env["conf"], env["store"]),
            TaskRunner(env["tasks"], broken),
            auth="noauth",
        )
    )
    task_id = client.request("POST", "/regions/Two")[1]["taskId"]
    task = wait(client, "Two", task_id)
    assert task["status"] == FAILED and "glance went away" in task["message"]
    assert client.request("DELETE", f"/regions/Two/tasks/{task_id}")[0] == 200


@pytest.mark.parametrize(
    "method,path,code",
    [
        ("GET", "/regions/Nowhere", 410),
        ("POST", "/regions/Nowhere", 410),
        ("GET", "/regions/Nowhere/tasks/x", 410),
        ("GET", "/regions/nosuch:Two", 410),
        ("GET", "/regions/Two/tasks/no-such-task", 404),
        ("DELETE", "/regions/Two/tasks/no-such-task", 404),
        ("GET", "/images", 404),
        ("GET", "/regions/Two/other/x", 404),
        ("PUT", "/regions/Two", 405),
        ("POST", "/", 405),
        ("POST", "/regions/Two/tasks/x", 405),
        ("GET", "/regions/Two?color=red", 400),
        ("GET", "/regions/Two?image=", 400),
        ("GET", "/regions/bad%20name", 400),
        ("GET", "/regions/master:", 400),
    ],
)
def test_errors(env, method, path, code):
    client, _ = noauth(env)
    path = path.replace("%20", " ")
    status, body, headers = client.request(method, path)
    assert status == code, body
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    if code == 405:
        assert "Allow" in headers


def test_tokens_and_roles(env):
    member = {"X-Auth-Token": "t", "X-Identity-Status": "Confirmed", "X-Roles": "member,reader"}
    admin = {**member, "X-Roles": "reader,Admin"}
    assert keystone(env, {}).request("GET", "/regions/Two")[0] == 401
    bad = {"X-Auth-Token": "t", "X-Identity-Status": "Invalid"}
    status, body, _ = keystone(env, bad).request("GET", "/regions/Two")
    assert status == 404 and "token" in body["error"]["message"]
    assert keystone(env, member).request("GET", "/regions/Two")[0] == 200
    status, body, _ = keystone(env, member).request("POST", "/regions/Two")
    assert status == 401 and "admin" in body["error"]["message"]
    status, body, _ = keystone(env, admin).request("POST", "/regions/Two")
    assert status == 200
    task_id = body["taskId"]
    client = keystone(env, admin)
    assert wait(client, "Two", task_id)["status"] == SYNCED
    assert keystone(env, member).request("DELETE", f"/regions/Two/tasks/{task_id}")[0] == 401
    assert client.request("DELETE", f"/regions/Two/tasks/{task_id}")[0] == 200


def test_a_restarted_service_fails_what_was_syncing(env):
    tasks = env["tasks"]
    task, created = tasks.start("Two", "someone")
    assert created and tasks.get(task.task_id).status == SYNCING
    assert api.start(tasks) == 1
    after = tasks.get(task.task_id)
    assert after.status == FAILED and after.message == INTERRUPTED
    # The region is free again.
    assert tasks.start("Two", "someone")[1] is True


def test_runner_shutdown_fails_its_unfinished_tasks(env):
    gate = threading.Event()

    def late(region: str) -> tuple[bool, str]:
        gate.wait(10)
        return True, "late"

    runner = TaskRunner(env["tasks"], late)
    task = runner.submit("Two", "u")
    assert runner.shutdown("stopping") == 1
    gate.set()
    time.sleep(0.2)
    # The late end of the sync does not overwrite the recorded failure.
    assert env["tasks"].get(task.task_id).status == FAILED


def test_sql_store_rules(env):
    tasks = env["tasks"]
    with pytest.raises(NotFound):
        tasks.get("nope")
    with pytest.raises(NotFound):
        tasks.delete("nope")
    task, _ = tasks.start("Three", "u")
    with pytest.raises(Conflict):
        tasks.delete(task.task_id)
    tasks.finish(task.task_id, SYNCED, "fine")
    tasks.finish(task.task_id, FAILED, "too late")  # a finished task is left alone
    assert tasks.get(task.task_id).status == SYNCED
    tasks.delete(task.task_id)


def test_concurrent_starts_make_one_task(env):
    tasks = env["tasks"]
    results: list[tuple[str, bool]] = []

    def start() -> None:
        task, created = tasks.start("Two", "u")
        results.append((task.task_id, created))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({task_id for task_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_serve_command_is_registered(env, capsys):
    assert main(["--config-file", str(env["conf_file"]), "image", "serve", "--help"]) == 0
    assert "--no-auth" in capsys.readouterr().out


def test_the_server_takes_threads_and_timeouts_from_its_options(env, monkeypatch):
    """[image_sync_api] threads, client_timeout and request_timeout reach the server;
    their defaults are the ones the service always had (8 threads, 30 s and 30 s)."""
    from stowkit.corelib import wsgiserve
    from stowkit.corelib.web import serving

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(wsgiserve, "serve", lambda *args, **kw: seen.append(kw))
    conf = env["conf"]
    api.register_opts(conf)
    serving.serve(conf, api.GROUP, object(), "127.0.0.1", 8080, 1, name=api.SERVER_NAME)
    conf.set_override("threads", 3, api.GROUP)
    conf.set_override("request_timeout", 5, api.GROUP)
    serving.serve(conf, api.GROUP, object(), "127.0.0.1", 8080, 1, name=api.SERVER_NAME)
    timing = [(s["threads"], s["client_timeout"], s["request_timeout"]) for s in seen]
    assert timing == [(8, 30, 30), (3, 30, 5)]
    assert seen[0]["name"] == "stowkit-glancesync"
