"""The catalog's REST API in process: routing, status codes, semantics, on SQLite."""

from __future__ import annotations

import pytest

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server
from tests.fakes.catalog import BACKUP, JOB, Client


@pytest.fixture()
def app(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    conf.set_override("max_body_size", 4096, server.GROUP)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


@pytest.fixture()
def client(app):
    return Client(app, {"X-User-Id": "alice"})


def test_versions_and_json_home(client):
    status, body = client.get("/")
    assert status == 300
    assert {v["id"] for v in body["versions"]} == {"v1", "v2"}
    status, body = client.get("/v2/", headers={"Accept": "application/json-home"})
    assert status == 200
    templates = {r["href-template"] for r in body["resources"].values()}
    assert "/v2/{project_id}/jobs/{job_id}/event" in templates
    assert "/v2/{project_id}/sessions/{session_id}/jobs/{job_id}" in templates
    status, body = client.get("/v1")
    assert status == 200 and body["version"]["id"] == "v1"


def test_backup_create_get_list_delete(client):
    status, body = client.post("/v2/p1/backups", BACKUP)
    assert status == 201
    backup_id = body["backup_id"]
    assert backup_id == "freezer_backups_web-1.example.org_etc_1700000000_0"
    status, doc = client.get(f"/v2/p1/backups/{backup_id}")
    assert status == 200
    assert doc["backup_metadata"] == BACKUP
    assert doc["user_id"] == "alice" and doc["project_id"] == "p1"
    status, body = client.get("/v2/p1/backups")
    assert status == 200 and [b["backup_id"] for b in body["backups"]] == [backup_id]
    assert client.delete(f"/v2/p1/backups/{backup_id}")[0] == 204
    assert client.delete(f"/v2/p1/backups/{backup_id}")[0] == 404
    assert client.get(f"/v2/p1/backups/{backup_id}")[0] == 404


def test_duplicate_backup_is_409(client):
    assert client.post("/v2/p1/backups", BACKUP)[0] == 201
    status, body = client.post("/v2/p1/backups", BACKUP)
    assert status == 409 and "already exists" in body["description"]


def test_post_without_user_identity_is_not_500(app):
    status, body = Client(app).post("/v2/p1/backups", BACKUP)
    assert status == 201
    doc = Client(app).get(f"/v2/p1/backups/{body['backup_id']}")[1]
    assert doc["user_id"] == "anonymous"


def test_v1_uses_the_default_project(client):
    status, body = client.post("/v1/backups", BACKUP)
    assert status == 201
    assert client.get(f"/v2/default/backups/{body['backup_id']}")[0] == 200
    assert client.get(f"/v2/other/backups/{body['backup_id']}")[0] == 404


def test_list_paging_is_stable_and_search_runs_in_sql(client):
    ids = []
    for i in range(25):
        meta = {**BACKUP, "time_stamp": 1_700_000_000 + i, "hostname": f"h{i % 3}.example"}
        ids.append(client.post("/v2/p/backups", meta)[1]["backup_id"])
    pages = [client.get(f"/v2/p/backups?limit=10&offset={o}")[1]["backups"] for o in (0, 10, 20)]
    assert [b["backup_id"] for page in pages for b in page] == ids
    status, body = client.request(
        "GET", "/v2/p/backups?limit=100", {"match": [{"hostname": "h1.example"}]}
    )
    assert status == 200
    assert [b["backup_id"] for b in body["backups"]] == [ids[i] for i in range(25) if i % 3 == 1]
    status, body = client.request(
        "GET", "/v2/p/backups?limit=100", {"match_not": [{"hostname": "h1.example"}]}
    )
    assert len(body["backups"]) == 25 - len([i for i in range(25) if i % 3 == 1])
    status, body = client.request("GET", "/v2/p/backups?limit=100", {"match": [{"_all": "H2.EXA"}]})
    assert len(body["backups"]) == len([i for i in range(25) if i % 3 == 2])


@pytest.mark.parametrize(
    "query", ["limit=x", "offset=-1", "limit=-5"], ids=["not-a-number", "neg-offset", "neg-limit"]
)
def test_bad_paging_is_400(client, query):
    status, body = client.get(f"/v2/p/backups?{query}")
    assert status == 400 and body["description"]


def test_invalid_inputs_are_4xx_with_a_message(client):
    cases = [
        (client.post("/v2/p/jobs", raw=b"{not json"), 400, "not valid JSON"),
        (client.post("/v2/p/jobs", raw=b"\xff\xfe"), 400, "not valid JSON"),
        (client.post("/v2/p/jobs", [1, 2]), 400, "must be a JSON object"),
        (client.post("/v2/p/jobs", {**JOB, "bogus": 1}), 400, "unknown field(s) 'bogus'"),
        (client.post("/v2/p/jobs", {**JOB, "client_id": "a b"}), 400, "client_id"),
        (client.post("/v2/p/jobs", {"client_id": "x"}), 400, "job_actions"),
        (client.post("/v2/p/backups", {**BACKUP, "time_stamp": "yesterday"}), 400, "time_stamp"),
        (client.post("/v2/p/backups", raw=b"x" * 5000), 413, "too large"),
        (client.post("/v2/p/backups"), 400, "JSON body is required"),
        (client.get("/v2/p/backups/bad%20id"), 400, "invalid backup id"),
        (client.get("/v2/p/backups/" + "x" * 300), 400, "invalid backup id"),
        (client.get("/v2/bad$project/backups"), 400, "invalid project id"),
        (client.get("/v2/p/nothing"), 404, "no such resource"),
        (client.get("/v3/p/backups"), 404, "no such resource"),
        (client.put("/v2/p/backups"), 405, "not allowed"),
        (client.request("GET", "/v2/p/backups", {"match": "x"}), 400, "match"),
        (client.request("GET", "/v2/p/backups", {"match": [{"a'b": 1}]}), 400, "search field"),
        (client.post("/v2/p/jobs/j1/event", {"start": None, "stop": None}), 400, "job event"),
        (client.post("/v2/p/jobs/nope/event", {"start": None}), 404, "not found"),
        (client.post("/v2/p/sessions/nope/action", {"go": {}}), 400, "session action"),
        (client.post("/v2/p/backups", raw=b'{"x": NaN}'), 400, "NaN is not a JSON value"),
        (client.post("/v2/p/jobs", raw=b"[" * 3000), 400, "nested too deeply"),
        (client.get(f"/v2/p/backups?offset={10**30}"), 400, "too large"),
        (client.request("GET", "/v2/p/backups", {"match": [{"a": 10**30}]}), 400, "beyond 64 bits"),
        (client.request("GET", "/v2/p/backups", raw=b"[1]"), 400, "must be a JSON object"),
        (client.patch("/v2/p/clients/c1", {"x": 1}), 400, "cannot be changed"),
    ]
    for (status, body), want_status, want_text in cases:
        assert (status, want_text in body["description"]) == (want_status, True), body


@pytest.mark.parametrize(
    ("schedule", "text"),
    [
        ({"schedule_date": "2030-02-30T00:00:00"}, "not a date"),
        ({"schedule_interval": "every day"}, "schedule_interval"),
        ({"schedule_date": "2030-01-01T00:00:00", "schedule_interval": "1 days"}, "exclude"),
        (
            {
                "schedule_start_date": "2030-01-02T00:00:00",
                "schedule_end_date": "2030-01-01T00:00:00",
            },
            "after",
        ),
        ({"schedule_hour": "25"}, "outside 0..23"),
        ({"schedule_minute": "0-61"}, "outside 0..59"),
        ({"schedule_month": "1;2"}, "schedule_month"),
        ({"when": "now"}, "unknown field(s) 'when'"),
    ],
)
def test_job_schedule_is_validated(client, schedule, text):
    status, body = client.post("/v2/p/jobs", {**JOB, "job_schedule": schedule})
    assert status == 400 and text in body["description"]


def test_job_defaults_and_action_defaults_merge(client):
    status, body = client.post("/v2/p/jobs", JOB)
    assert status == 201
    job = client.get(f"/v2/p/jobs/{body['job_id']}")[1]
    actions = [a["freezer_action"] for a in job["job_actions"]]
    assert actions[0] == {
        "action": "backup",
        "path_to_backup": "/etc",
        "container": "freezer_backups",
        "mode": "fs",
    }
    assert actions[1]["container"] == "own"  # the action's own value wins
    assert "action_defaults" not in job
    # As freezer-api: no status, event or result, so a scheduler starts it at once.
    assert not {"status", "event", "result"} & set(job["job_schedule"])
    assert job["job_schedule"]["time_started"] == -1
    assert job["user_id"] == "alice"


def test_patch_without_schedule_keeps_the_schedule(client):
    job_id = client.post("/v2/p/jobs", JOB)[1]["job_id"]
    status, body = client.patch(f"/v2/p/jobs/{job_id}", {"description": "changed"})
    assert status == 200 and body["version"] == 2
    job = client.get(f"/v2/p/jobs/{job_id}")[1]
    assert job["description"] == "changed"
    assert job["job_schedule"]["schedule_interval"] == "1 days"
    # A partial schedule merges into the stored one.
    client.patch(f"/v2/p/jobs/{job_id}", {"job_schedule": {"schedule_hour": "3"}})
    job = client.get(f"/v2/p/jobs/{job_id}")[1]
    assert job["job_schedule"]["schedule_hour"] == "3"
    assert job["job_schedule"]["schedule_start_date"] == "2030-01-01T02:00:00"
    assert client.patch("/v2/p/jobs/nope", {"description": "x"})[0] == 404
    assert client.patch(f"/v2/p/jobs/{job_id}", {"job_id": "other"})[0] == 400


def test_post_to_an_item_creates_or_replaces(client):
    status, body = client.post("/v2/p/jobs/myjob", JOB)
    assert (status, body["job_id"]) == (201, "myjob")
    status, body = client.post("/v2/p/jobs/myjob", {**JOB, "description": "v2"})
    assert status == 201 and body["version"] == 2
    assert client.get("/v2/p/jobs/myjob")[1]["description"] == "v2"
    assert client.post("/v2/p/jobs", {**JOB, "job_id": "myjob"})[0] == 409


def test_job_events_and_status_transitions(client):
    job_id = client.post("/v2/p/jobs", JOB)[1]["job_id"]

    def event(name):
        status, body = client.post(f"/v2/p/jobs/{job_id}/event", {name: None})
        assert status == 202
        return body["result"], client.get(f"/v2/p/jobs/{job_id}")[1]["job_schedule"]

    client.patch(
        f"/v2/p/jobs/{job_id}", {"job_schedule": {"status": "completed", "result": "fail"}}
    )
    result, schedule = event("start")
    # freezer-api's rules: start clears status and result for the scheduler.
    assert result == "success"
    assert (schedule["event"], schedule["status"], schedule["result"]) == ("start", "", "")
    assert event("start")[0] == "start already requested"
    client.patch(f"/v2/p/jobs/{job_id}", {"job_schedule": {"status": "running"}})
    result, schedule = event("abort")
    assert (result, schedule["event"], schedule["status"]) == ("success", "abort", "running")
    assert event("abort")[0] == "abort already requested"
    result, schedule = event("stop")
    assert (result, schedule["event"]) == ("success", "stop")
    result, schedule = event("remove")
    assert (result, schedule["event"]) == ("success", "remove")


def test_sessions_run_and_aggregate(client):
    jobs = [client.post("/v2/p/jobs", JOB)[1]["job_id"] for _ in range(2)]
    status, body = client.post("/v2/p/sessions", {"description": "s", "hold_off": 0})
    assert status == 201
    sid = body["session_id"]
    for job_id in jobs:
        assert client.put(f"/v2/p/sessions/{sid}/jobs/{job_id}")[0] == 204
    session = client.get(f"/v2/p/sessions/{sid}")[1]
    assert set(session["jobs"]) == set(jobs) and session["session_tag"] == 0
    assert client.get(f"/v2/p/jobs/{jobs[0]}")[1]["session_id"] == sid

    def action(name, job_id, tag, **extra):
        return client.post(
            f"/v2/p/sessions/{sid}/action", {name: {"job_id": job_id, "current_tag": tag, **extra}}
        )

    status, body = action("start", jobs[0], 0)
    assert (status, body) == (202, {"result": "success", "session_tag": 1})
    # Another node, still at tag 0, is out of sync once the hold-off has passed.
    assert action("start", jobs[1], 0)[1] == {"result": "out of sync", "session_tag": 1}
    assert action("start", jobs[1], 5)[0] == 400
    assert action("end", jobs[0], 1, result="success")[0] == 202
    assert client.get(f"/v2/p/sessions/{sid}")[1]["status"] == "running"
    assert action("end", jobs[1], 1, result="fail")[0] == 202
    session = client.get(f"/v2/p/sessions/{sid}")[1]
    assert (session["status"], session["result"]) == ("completed", "fail")
    assert client.delete(f"/v2/p/sessions/{sid}/jobs/{jobs[0]}")[0] == 204
    assert client.delete(f"/v2/p/sessions/{sid}/jobs/{jobs[0]}")[0] == 404
    assert client.put(f"/v2/p/sessions/{sid}/jobs/nope")[0] == 404
    assert client.put(f"/v2/p/sessions/nope/jobs/{jobs[0]}")[0] == 404


def test_session_start_joins_within_hold_off(client):
    jobs = [client.post("/v2/p/jobs", JOB)[1]["job_id"] for _ in range(2)]
    sid = client.post("/v2/p/sessions", {"hold_off": 3600})[1]["session_id"]
    for job_id in jobs:
        client.put(f"/v2/p/sessions/{sid}/jobs/{job_id}")
    first = client.post(
        f"/v2/p/sessions/{sid}/action", {"start": {"job_id": jobs[0], "current_tag": 0}}
    )
    second = client.post(
        f"/v2/p/sessions/{sid}/action", {"start": {"job_id": jobs[1], "current_tag": 0}}
    )
    assert first[1] == second[1] == {"result": "success", "session_tag": 1}


def test_clients_register_and_conflict(client):
    status, body = client.post("/v2/p/clients", {"client_id": "demo_h1.example", "hostname": "h1"})
    assert (status, body) == (201, {"client_id": "demo_h1.example"})
    assert client.post("/v2/p/clients", {"client_id": "demo_h1.example"})[0] == 409
    doc = client.get("/v2/p/clients/demo_h1.example")[1]
    assert doc["client"]["hostname"] == "h1" and doc["uuid"]
    assert client.get("/v2/p/clients")[1]["clients"][0]["client_id"] == "demo_h1.example"
    assert client.post("/v2/p/clients", {"hostname": "h1"})[0] == 400


def test_actions_crud(client):
    status, body = client.post("/v2/p/actions", {"freezer_action": {"action": "backup"}})
    assert status == 201
    aid = body["action_id"]
    assert client.patch(f"/v2/p/actions/{aid}", {"max_retries": 2})[0] == 200
    doc = client.get(f"/v2/p/actions/{aid}")[1]
    assert doc["max_retries"] == 2 and doc["freezer_action"] == {"action": "backup"}
    assert client.get("/v2/p/actions")[1]["actions"][0]["action_id"] == aid
    assert client.delete(f"/v2/p/actions/{aid}")[0] == 204


def test_projects_are_isolated(client):
    backup_id = client.post("/v2/a/backups", BACKUP)[1]["backup_id"]
    job_id = client.post("/v2/a/jobs", JOB)[1]["job_id"]
    sid = client.post("/v2/a/sessions", {})[1]["session_id"]
    assert client.get("/v2/b/backups")[1] == {"backups": []}
    assert client.get(f"/v2/b/backups/{backup_id}")[0] == 404
    assert client.delete(f"/v2/b/backups/{backup_id}")[0] == 404
    assert client.patch(f"/v2/b/jobs/{job_id}", {"description": "x"})[0] == 404
    assert client.post(f"/v2/b/jobs/{job_id}/event", {"start": None})[0] == 404
    assert client.put(f"/v2/b/sessions/{sid}/jobs/{job_id}")[0] == 404
    assert (
        client.post(
            f"/v2/b/sessions/{sid}/action", {"start": {"job_id": job_id, "current_tag": 0}}
        )[0]
        == 404
    )
    assert client.get(f"/v2/a/jobs/{job_id}")[1]["description"] == "nightly etc"


def test_keystone_mode_takes_identity_from_the_token_headers(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.app.auth = "keystone"  # the headers keystonemiddleware would have set
    wsgi.service.catalog.sync()
    anonymous = Client(wsgi)
    assert anonymous.get("/v2/p1/backups")[0] == 401
    assert anonymous.get("/")[0] == 300
    confirmed = Client(
        wsgi, {"X-Identity-Status": "Confirmed", "X-Project-Id": "p1", "X-User-Id": "u1"}
    )
    assert confirmed.post("/v1/backups", BACKUP)[0] == 201
    assert len(confirmed.get("/v2/p1/backups")[1]["backups"]) == 1
    assert confirmed.get("/v2/p2/backups")[0] == 403
    forged = Client(wsgi, {"X-Identity-Status": "Invalid", "X-Project-Id": "p1", "X-User-Id": "u"})
    assert forged.get("/v1/backups")[0] == 401
    wsgi.service.catalog.close()
