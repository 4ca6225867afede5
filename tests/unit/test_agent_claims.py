"""The catalog's claim mechanism (ETag on GET, If-Match on PATCH) and the agent's HTTP client.

The real catalog app on SQLite, served in process by wsgiref on a free port.
"""

from __future__ import annotations

import threading
import wsgiref.simple_server
from typing import Any

import pytest

from stowkit.corelib import config
from stowkit.corelib.agent import actions, engine
from stowkit.corelib.catalogapi import server
from stowkit.corelib.catalogclient import CatalogClient, ClaimLost, noauth_headers
from tests.fakes.catalog import Client


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def app(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


@pytest.fixture()
def url(app):
    httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    httpd.daemon_threads = True  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def headers_of(app, method: str, path: str, body: bytes = b"", **extra: str):
    import io

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "catalog.test",
        "HTTP_X_USER_ID": "u",
        **{"HTTP_" + k.upper(): v for k, v in extra.items()},
    }
    seen: list[Any] = []
    b"".join(app(environ, lambda status, hdrs: seen.append((status, dict(hdrs)))))
    return int(seen[0][0].split()[0]), seen[0][1]


JOB = {"client_id": "p_host", "job_actions": [], "job_schedule": {}}


def test_get_gives_the_version_as_etag_and_patch_honours_if_match(app):
    client = Client(app, {"X-User-Id": "u"})
    job_id = client.post("/v2/p/jobs", JOB)[1]["job_id"]
    status, headers = headers_of(app, "GET", f"/v2/p/jobs/{job_id}")
    assert status == 200 and headers["ETag"] == '"1"'
    claim = b'{"job_schedule": {"status": "running", "claim": {"run": 1, "owner": "a 1 t"}}}'
    status, headers = headers_of(app, "PATCH", f"/v2/p/jobs/{job_id}", claim, if_match='"1"')
    assert status == 200 and headers["ETag"] == '"2"'
    # the second claim on version 1 loses, and changes nothing
    other = b'{"job_schedule": {"claim": {"run": 1, "owner": "b 2 t"}}}'
    status, _ = headers_of(app, "PATCH", f"/v2/p/jobs/{job_id}", other, if_match='"1"')
    assert status == 412
    shown = client.get(f"/v2/p/jobs/{job_id}")[1]["job_schedule"]
    assert shown["claim"]["owner"] == "a 1 t" and shown["status"] == "running"
    # without If-Match a PATCH merges as before (freezer-scheduler's writes)
    assert client.patch(f"/v2/p/jobs/{job_id}", {"job_schedule": {"status": "completed"}})[0] == 200
    status, _ = headers_of(app, "PATCH", f"/v2/p/jobs/{job_id}", other, if_match="W/x")
    assert status == 400


def test_claim_fields_are_checked(app):
    client = Client(app, {"X-User-Id": "u"})
    job_id = client.post("/v2/p/jobs", JOB)[1]["job_id"]
    bad = {"job_schedule": {"claim": {"run": -1}}}
    assert client.patch(f"/v2/p/jobs/{job_id}", bad)[0] == 400
    assert client.patch(f"/v2/p/jobs/{job_id}", {"job_schedule": {"claim": {"x": 1}}})[0] == 400


def test_http_client_claims_with_if_match(app, url):
    cat = CatalogClient(url, "p", noauth_headers("agent"))
    cat.register_client({"client_id": "p_host", "hostname": "host"})
    cat.register_client({"client_id": "p_host", "hostname": "host"})  # again: fine
    job_id = Client(app, {"X-User-Id": "u"}).post("/v2/p/jobs", JOB)[1]["job_id"]
    assert [j["job_id"] for j in cat.poll_jobs("p_host")] == [job_id]
    doc, version = cat.get_job(job_id)
    assert cat.patch_job(job_id, {"job_schedule": {"status": "scheduled"}}, version) == version + 1
    with pytest.raises(ClaimLost):
        cat.patch_job(job_id, {"job_schedule": {"status": "running"}}, version)
    cat.patch_job(job_id, {"job_schedule": {"status": "completed"}}, None)
    assert cat.poll_jobs("p_host") == []  # freezer-scheduler's search leaves completed jobs out
    backup = {"container": "v", "hostname": "host", "backup_name": "v@x", "time_stamp": 5}
    backup_id = cat.add_backup(backup)
    assert [b["backup_id"] for b in cat.find_backups([{"container": "v"}])] == [backup_id]


def test_agents_racing_through_the_real_catalog_run_each_slot_once(app, url):
    client = Client(app, {"X-User-Id": "u"})
    job_id = client.post("/v2/p/jobs", {**JOB, "job_actions": [{"freezer_action": {"n": 1}}]})[1][
        "job_id"
    ]
    calls: list[Any] = []
    lock = threading.Lock()

    def act(ctx, action):
        with lock:
            calls.append(ctx.hostname)
        return actions.Outcome("ok")

    agents = [
        engine.Agent(
            CatalogClient(url, "p", noauth_headers("agent")),
            "p_host",
            "host",
            lambda: actions.Context(hostname="host"),
            poll_interval=1,
            pid=pid,
            alive=lambda pid: True,
            run_action=act,
        )
        for pid in (1, 2, 3, 4)
    ]
    barrier = threading.Barrier(len(agents))

    def go(agent):
        barrier.wait()
        agent.poll_once()
        agent.wait_runs(30)

    threads = [threading.Thread(target=go, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1
    sched = client.get(f"/v2/p/jobs/{job_id}")[1]["job_schedule"]
    assert sched["status"] == "completed" and sched["result"] == "success"
    assert sched["claim"]["run"] == 1
