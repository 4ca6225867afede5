"""The catalog served for real, behind keystonemiddleware, on SQLite and PostgreSQL.

The unmodified ``freezer`` CLI (python-freezerclient from PyPI, in its own
venv) logs in to the harness Keystone and drives stowkit's server; raw HTTP
with real tokens checks project isolation and bad input.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import subprocess
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.fakes.catalog import BACKUP
from tests.fakes.keystone_catalog import Api

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_freezer_cli_against_stowkit(freezer, keystone, catalog_url, tmp_path):
    member = keystone["member"]
    host = f"host-{uuid.uuid4().hex[:8]}.example.org"
    client_id = f"{member['project_id']}_{host}"
    (tmp_path / "client.json").write_text(json.dumps({"client_id": client_id, "hostname": host}))
    shown = freezer("client-register", "--file", str(tmp_path / "client.json"))
    assert client_id in json.dumps(shown)

    job = {
        "description": "nightly etc",
        "job_actions": [{"freezer_action": {"action": "backup", "path_to_backup": "/etc"}}],
        "action_defaults": {"container": "freezer_backups", "mode": "fs"},
        "job_schedule": {"schedule_interval": "1 days"},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    created = freezer("job-create", "--file", str(tmp_path / "job.json"), "--client", client_id)
    job_id = created["Job ID"]
    listed = freezer("job-list")
    assert job_id in [row["Job ID"] for row in listed]
    # --client sends a search body with the GET: the filter runs in the server.
    assert [row["Job ID"] for row in freezer("job-list", "--client", client_id)] == [job_id]
    nobody = freezer("job-list", "--client", f"{member['project_id']}_nobody.example")
    assert [row["Job ID"] for row in nobody if row["Job ID"]] == []  # it prints one empty row
    shown = freezer("job-show", job_id)
    assert shown["Client ID"] == client_id
    assert shown["Interval"] == "1 days" or "1 days" in json.dumps(shown)
    assert "freezer_backups" in shown["Actions"]  # action_defaults merged

    # As with freezer-api, a new job has no status: the scheduler starts it by itself.
    assert freezer("job-show", job_id)["Status"] == ""
    assert freezer("job-start", job_id, fmt=False) is not None
    shown = freezer("job-show", job_id)
    assert shown["Event"] == "start" and shown["Status"] == ""
    freezer("job-stop", job_id, fmt=False)
    assert freezer("job-show", job_id)["Event"] == "stop"

    api = Api(catalog_url, member)
    assert (
        api.call("POST", f"/v2/{api.project}/actions", {"freezer_action": {"action": "info"}})[0]
        == 201
    )
    assert any(row["Action"] == "info" for row in freezer("action-list"))

    (tmp_path / "session.json").write_text(json.dumps({"description": "s1", "hold_off": 0}))
    session = freezer("session-create", "--file", str(tmp_path / "session.json"))
    session_id = session["Session ID"]
    freezer("session-add-job", "--session-id", session_id, "--job-id", job_id, fmt=False)
    freezer(
        "session-start", "--session-id", session_id, "--job-id", job_id, "--job-tag", "0", fmt=False
    )
    shown = freezer("session-show", session_id)
    assert shown["Session tag"] == 1 and shown["Status"] == "running"
    # freezer's CLI has no session-end command: its library call is what the agent uses.
    end = subprocess.run(
        [
            freezer.python,
            "-c",
            "import os, json, sys\n"
            "from keystoneauth1 import session, identity\n"
            "from freezerclient.v2 import client\n"
            "auth = identity.v3.Password(auth_url=os.environ['OS_AUTH_URL'],"
            " username=os.environ['OS_USERNAME'], password=os.environ['OS_PASSWORD'],"
            " project_name=os.environ['OS_PROJECT_NAME'], user_domain_name='Default',"
            " project_domain_name='Default')\n"
            "c = client.Client(session=session.Session(auth=auth),"
            " endpoint=os.environ['OS_BACKUP_URL'])\n"
            "print(json.dumps(c.sessions.end_session(sys.argv[1], sys.argv[2], 1, 'success')))\n",
            session_id,
            job_id,
        ],
        env=freezer.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert end.returncode == 0, end.stderr
    assert json.loads(end.stdout) == {"result": "success", "session_tag": 1}
    shown = freezer("session-show", session_id)
    assert (shown["Status"], shown["Result"]) == ("completed", "success")

    status, body = api.call("POST", f"/v2/{api.project}/backups", {**BACKUP, "hostname": host})
    assert status == 201
    # backup-list cannot print JSON (the client puts a datetime in it): read its CSV.
    text = freezer("backup-list", "--limit", "100", "-f", "csv", fmt=False)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert body["backup_id"] in [row["Backup ID"] for row in rows]
    assert host in [row["Hostname"] for row in rows]


def test_projects_cannot_touch_each_other(keystone, catalog_url):
    mine = Api(catalog_url, keystone["member"])
    theirs = Api(catalog_url, keystone["other"])
    p = mine.project
    tag = uuid.uuid4().hex[:8]
    backup_id = mine.call("POST", f"/v2/{p}/backups", {**BACKUP, "backup_name": tag})[1][
        "backup_id"
    ]
    job = {"job_actions": [], "client_id": f"h-{tag}", "description": "mine"}
    job_id = mine.call("POST", f"/v2/{p}/jobs", job)[1]["job_id"]
    session_id = mine.call("POST", f"/v2/{p}/sessions", {"description": "mine"})[1]["session_id"]
    client_id = mine.call("POST", f"/v2/{p}/clients", {"client_id": f"c-{tag}"})[1]["client_id"]
    action_id = mine.call("POST", f"/v2/{p}/actions", {"mode": "fs"})[1]["action_id"]
    docs = {
        "backups": backup_id,
        "jobs": job_id,
        "sessions": session_id,
        "clients": client_id,
        "actions": action_id,
    }
    q = theirs.project
    for kind, doc_id in docs.items():
        # Through their own project (v2 and v1): the documents do not exist.
        for prefix in (f"/v2/{q}", "/v1"):
            status, body = theirs.call("GET", f"{prefix}/{kind}?limit=1000")
            assert status == 200 and doc_id not in json.dumps(body), (kind, prefix)
            assert theirs.call("GET", f"{prefix}/{kind}/{doc_id}")[0] == 404
            assert theirs.call("DELETE", f"{prefix}/{kind}/{doc_id}")[0] == 404
            assert theirs.call("PATCH", f"{prefix}/{kind}/{doc_id}", {"description": "x"})[0] in (
                400,
                404,
            )
        # Naming the other project in the URL is refused outright.
        for method, body in (("GET", None), ("DELETE", None), ("PATCH", {"description": "x"})):
            assert theirs.call(method, f"/v2/{p}/{kind}/{doc_id}", body)[0] == 403
        assert theirs.call("GET", f"/v2/{p}/{kind}")[0] == 403
        assert theirs.call("POST", f"/v2/{p}/{kind}", {})[0] == 403
    assert theirs.call("POST", f"/v2/{q}/jobs/{job_id}/event", {"start": None})[0] == 404
    assert theirs.call("POST", f"/v2/{p}/jobs/{job_id}/event", {"start": None})[0] == 403
    assert theirs.call("POST", f"/v2/{q}/jobs/{job_id}", job)[0] == 201  # their own, separate
    start = {"start": {"job_id": job_id, "current_tag": 0}}
    assert theirs.call("POST", f"/v2/{q}/sessions/{session_id}/action", start)[0] == 404
    assert theirs.call("PUT", f"/v2/{q}/sessions/{session_id}/jobs/{job_id}")[0] == 404
    assert theirs.call("PUT", f"/v2/{p}/sessions/{session_id}/jobs/{job_id}")[0] == 403
    # Everything of ours is intact.
    for kind, doc_id in docs.items():
        status, body = mine.call("GET", f"/v2/{p}/{kind}/{doc_id}")
        assert status == 200, kind
    mine_job = mine.call("GET", f"/v2/{p}/jobs/{job_id}")[1]
    assert mine_job["description"] == "mine" and "event" not in mine_job["job_schedule"]
    assert theirs.call("GET", f"/v2/{q}/jobs/{job_id}")[1]["project_id"] == q


def test_requests_without_a_valid_token_are_401(catalog_url):
    req = urllib.request.Request(catalog_url + "/v1/backups")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    req = urllib.request.Request(catalog_url + "/v1/backups", headers={"X-Auth-Token": "bogus"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401


def test_bad_input_is_4xx_never_500(keystone, catalog_url):
    api = Api(catalog_url, keystone["member"])
    p = api.project
    job = {"job_actions": [], "client_id": "h1"}
    cases = [
        ("POST", f"/v2/{p}/jobs", None, b"{nope", 400),
        ("POST", f"/v2/{p}/jobs", None, b"\x00\xff", 400),
        ("POST", f"/v2/{p}/jobs", {**job, "surprise": True}, None, 400),
        ("POST", f"/v2/{p}/jobs", {**job, "job_schedule": {"schedule_hour": "99"}}, None, 400),
        ("POST", f"/v2/{p}/jobs", {**job, "job_actions": "all"}, None, 400),
        ("POST", f"/v2/{p}/sessions", {"session_tag": "one"}, None, 400),
        ("POST", f"/v2/{p}/backups", {"container": "c"}, None, 400),
        ("POST", f"/v2/{p}/backups", None, b"[" * 70000, 413),
        ("GET", f"/v2/{p}/backups/..%2F..", None, None, 400),
        ("GET", f"/v2/{p}/backups/{'x' * 400}", None, None, 400),
        ("GET", f"/v2/{p}/backups?limit=many", None, None, 400),
        ("DELETE", f"/v2/{p}/backups/missing-backup", None, None, 404),
        ("POST", f"/v2/{p}/jobs/missing/event", {"start": None}, None, 404),
        ("POST", f"/v2/{p}/jobs/missing/event", {"launch": None}, None, 400),
        ("POST", f"/v2/{p}/sessions/missing/action", {"start": {"job_id": "j"}}, None, 400),
        ("PUT", f"/v2/{p}/backups", None, None, 405),
        ("GET", f"/v2/{p}/widgets", None, None, 404),
    ]
    for method, path, body, raw, want in cases:
        status, answer = api.call(method, path, body, raw)
        assert status == want, (method, path, status, answer)
        assert isinstance(answer, dict) and answer.get("description"), answer


def test_concurrent_session_starts_open_one_run(keystone, catalog_url):
    """Several nodes start the same session at once: one run, one tag increment."""
    from concurrent.futures import ThreadPoolExecutor

    api = Api(catalog_url, keystone["member"])
    p = api.project
    jobs = [
        api.call("POST", f"/v2/{p}/jobs", {"job_actions": [], "client_id": f"node{i}"})[1]["job_id"]
        for i in range(6)
    ]
    sid = api.call("POST", f"/v2/{p}/sessions", {"hold_off": 0})[1]["session_id"]
    for job_id in jobs:
        assert api.call("PUT", f"/v2/{p}/sessions/{sid}/jobs/{job_id}")[0] == 204

    def start(job_id: str) -> tuple[int, Any]:
        return api.call(
            "POST",
            f"/v2/{p}/sessions/{sid}/action",
            {"start": {"job_id": job_id, "current_tag": 0}},
        )

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(start, jobs))
    assert {status for status, _ in answers} == {202}
    results = sorted(body["result"] for _, body in answers)
    assert results == ["out of sync"] * (len(jobs) - 1) + ["success"]
    assert api.call("GET", f"/v2/{p}/sessions/{sid}")[1]["session_tag"] == 1


#: freezer-agent 19's backup document with its default options ("" for options not given).
AGENT_BACKUP = {
    **BACKUP,
    "action": "backup",
    "always_level": "",
    "max_level": "",
    "restart_always_level": "",
    "storage": "local",
    "engine_name": "tar",
}


def test_freezer_agent_and_scheduler_documents(keystone, catalog_url):
    """What freezer-agent/-scheduler 19 send, on both databases (searches run in SQL)."""
    api = Api(catalog_url, keystone["member"])
    p = api.project
    tag = uuid.uuid4().hex[:8]
    status, body = api.call("POST", f"/v2/{p}/backups", {**AGENT_BACKUP, "backup_name": tag})
    assert status == 201, body
    found = api.call("GET", f"/v2/{p}/backups?limit=100", {"match": [{"backup_name": tag}]})[1]
    (listed,) = found["backups"]
    assert listed["status"] == "available" and listed["backup_metadata"]["max_level"] == ""

    client_id = f"{p}_sched-{tag}.example.org"
    job = {
        "job_actions": [],
        "client_id": client_id,
        "job_schedule": {"schedule_interval": "5 seconds"},
    }
    fresh = api.call("POST", f"/v2/{p}/jobs", job)[1]["job_id"]
    done = api.call("POST", f"/v2/{p}/jobs", job)[1]["job_id"]
    patch = {"job_schedule": {"status": "completed", "result": "success"}}
    assert api.call("PATCH", f"/v2/{p}/jobs/{done}", patch)[0] == 200
    poll = {"match_not": [{"status": "completed"}], "match": [{"client_id": client_id}]}
    status, body = api.call("GET", f"/v2/{p}/jobs?limit=100", poll)
    assert status == 200
    assert [j["job_id"] for j in body["jobs"]] == [fresh]
    assert "status" not in body["jobs"][0]["job_schedule"]

    session = {"description": tag, "jobs": [{"job_id": fresh, "client_id": client_id}]}
    status, body = api.call("POST", f"/v2/{p}/sessions", session)
    assert status == 201, body
    assert list(api.call("GET", f"/v2/{p}/sessions/{body['session_id']}")[1]["jobs"]) == [fresh]


def test_central_clients_and_all_projects_are_for_admins(keystone, catalog_url):
    member = Api(catalog_url, keystone["member"])
    admin = Api(catalog_url, keystone["admin"])
    tag = uuid.uuid4().hex[:8]
    central = {"client_id": f"central-{tag}", "hostname": "sched", "is_central": True}
    status, body = member.call("POST", f"/v2/{member.project}/clients", central)
    assert status == 403, body
    assert admin.call("POST", f"/v2/{admin.project}/clients", central)[0] == 201

    job = {"job_actions": [], "client_id": f"h-{tag}"}
    job_id = member.call("POST", f"/v2/{member.project}/jobs", job)[1]["job_id"]
    search = {"match": [{"client_id": f"h-{tag}"}]}
    everyone = f"/v2/{admin.project}/jobs?all_projects=True&limit=100"
    assert [j["job_id"] for j in admin.call("GET", everyone, search)[1]["jobs"]] == [job_id]
    own = f"/v2/{admin.project}/jobs?limit=100"
    assert admin.call("GET", own, search)[1]["jobs"] == []
    assert admin.call("GET", f"/v2/{admin.project}/jobs/{job_id}?all_projects=True")[0] == 200
    mine = f"/v2/{member.project}/jobs?all_projects=True&limit=100"
    assert [j["job_id"] for j in member.call("GET", mine, search)[1]["jobs"]] == [job_id]
    other = Api(catalog_url, keystone["other"])
    theirs = f"/v2/{other.project}/jobs?all_projects=True&limit=100"
    assert other.call("GET", theirs, search)[1]["jobs"] == []


def test_v2_json_home_as_freezer_api(catalog_url):
    req = urllib.request.Request(catalog_url + "/v2", headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"] == "application/json-home"
        home = json.loads(resp.read())
    backups = home["resources"]["rel/backups"]
    assert backups["href-template"] == "/v2/{project_id}/backups/{backup_id}"
    assert backups["href-vars"]["backup_id"] == "param/backup_id"
