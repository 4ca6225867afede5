"""What freezer 19's agent and scheduler send, and what freezer-api 19 answers.

Each test is one difference issue 14 lists between stowkit's catalog and
freezer-api 19, checked in process on SQLite (the functional tests repeat the
search on PostgreSQL).
"""

from __future__ import annotations

import json

import pytest

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server
from tests.fakes.catalog import JOB, Client

#: A backup document as freezer-agent 19 posts it with its default options:
#: "" for every option it was not given.
AGENT_BACKUP = {
    "action": "backup",
    "always_level": "",
    "backup_media": "fs",
    "backup_name": "etc",
    "container": "/var/lib/freezer/store",
    "curr_backup_level": 0,
    "engine_name": "tar",
    "hostname": "web-1.example.org",
    "level": 0,
    "max_level": "",
    "mode": "fs",
    "path_to_backup": "/etc",
    "restart_always_level": "",
    "storage": "local",
    "time_stamp": 1_700_000_000,
    "job_id": "j1",
}
#: freezer-scheduler's poll for its jobs.
POLL = {"match_not": [{"status": "completed"}], "match": [{"client_id": JOB["client_id"]}]}


@pytest.fixture()
def app(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


@pytest.fixture()
def client(app):
    return Client(app, {"X-User-Id": "alice"})


@pytest.fixture()
def admin(app):
    return Client(app, {"X-User-Id": "root", "X-Roles": "reader,Admin"})


def _job(client, project="p", **schedule):
    body = {**JOB, "job_schedule": schedule}
    status, answer = client.post(f"/v2/{project}/jobs", body)
    assert status == 201, answer
    return answer["job_id"]


# -- backups ---------------------------------------------------------------------------
def test_agent_backup_with_empty_options_is_stored_as_sent(client):
    status, body = client.post("/v2/p/backups", AGENT_BACKUP)
    assert status == 201, body
    doc = client.get(f"/v2/p/backups/{body['backup_id']}")[1]
    assert doc["backup_metadata"] == AGENT_BACKUP
    assert doc["backup_metadata"]["max_level"] == ""


def test_empty_level_falls_back_for_the_backup_id(client):
    body = {**AGENT_BACKUP, "curr_backup_level": "", "level": 2}
    assert client.post("/v2/p/backups", body)[1]["backup_id"].endswith("_1700000000_2")
    body = {**AGENT_BACKUP, "time_stamp": 1, "curr_backup_level": "", "level": ""}
    assert client.post("/v2/p/backups", body)[1]["backup_id"].endswith("_1_0")


def test_long_container_backups_keep_distinct_ids(client):
    """freezer-agent's local storage names its container by a path, which may be long.

    An id cut at 255 characters lost the time stamp: every later backup of the
    same path collided with the first (409) and freezer-scheduler's upload of
    it failed, so the run left no backup document.
    """
    container = "/srv/" + "d" * 300
    ids = []
    for stamp in (1_700_000_000, 1_700_000_060):
        status, body = client.post(
            "/v2/p/backups", {**AGENT_BACKUP, "container": container, "time_stamp": stamp}
        )
        assert status == 201, body
        ids.append(body["backup_id"])
        assert len(body["backup_id"]) <= 255
        assert client.get(f"/v2/p/backups/{body['backup_id']}")[0] == 200
    assert ids[0] != ids[1]
    # Still made of the metadata: the same backup posted again is a 409.
    body = {**AGENT_BACKUP, "container": container, "time_stamp": 1_700_000_000}
    assert client.post("/v2/p/backups", body)[0] == 409


def test_backup_listing_fields_are_freezer_apis(client):
    client.post("/v2/p/backups", AGENT_BACKUP)
    (listed,) = client.get("/v2/p/backups")[1]["backups"]
    assert set(listed) == {"backup_id", "project_id", "user_id", "status", "backup_metadata"}
    assert listed["status"] == "available"
    # A status given by the agent is the backup's, not part of its metadata.
    body = {**AGENT_BACKUP, "time_stamp": 2, "status": "creating"}
    backup_id = client.post("/v2/p/backups", body)[1]["backup_id"]
    doc = client.get(f"/v2/p/backups/{backup_id}")[1]
    assert doc["status"] == "creating" and "status" not in doc["backup_metadata"]
    assert client.patch(f"/v2/p/backups/{backup_id}", {"status": "available"})[0] == 200
    assert client.get(f"/v2/p/backups/{backup_id}")[1]["status"] == "available"
    assert client.patch(f"/v2/p/backups/{backup_id}", {"status": "lost"})[0] == 400
    assert client.post("/v2/p/backups", {**body, "time_stamp": 3, "status": "lost"})[0] == 400


# -- search ----------------------------------------------------------------------------
def test_scheduler_poll_skips_completed_jobs(client):
    done = _job(client, schedule_date="2030-01-01T00:00:00", status="completed")
    waiting = _job(client, schedule_interval="1 days")
    status, body = client.request("GET", "/v2/p/jobs?limit=100", POLL)
    assert status == 200
    assert [j["job_id"] for j in body["jobs"]] == [waiting]
    assert done != waiting


def test_match_finds_a_key_at_any_depth(app):
    catalog = app.service.catalog
    docs = {
        "a": {"top": 1, "inner": {"deep": {"k": "x"}}},
        "b": {"list": [{"k": "y"}, {"other": {"k": "x"}}]},
        "c": {"k": ["x"], "n": "1"},
        "d": {"flag": True, "n": 1, "obj": {"o": {"z": [1, 2]}}},
    }
    for doc_id, doc in docs.items():
        catalog.create("p", "actions", doc_id, doc)

    def ids(match=(), match_not=()):
        found = catalog.search("p", "actions", 10, 0, list(match), list(match_not))
        return sorted(next(k for k, v in docs.items() if v == d) for d in found)

    assert ids([{"k": "x"}]) == ["a", "b"]  # in objects, and in objects inside lists
    assert ids([{"k": "y"}]) == ["b"]
    assert ids(match_not=[{"k": "x"}]) == ["c", "d"]
    assert ids([{"n": 1}]) == ["d"] and ids([{"n": "1"}]) == ["c"]  # types count
    assert ids([{"flag": True}]) == ["d"] and ids([{"flag": 1}]) == []
    assert ids([{"o": {"z": [1, 2]}}]) == ["d"]
    assert ids([{"inner.deep.k": "x"}]) == ["a"]  # a dotted field is an exact path
    assert ids([{"deep.k": "x"}]) == []


def test_backup_search_reaches_into_backup_metadata(client):
    client.post("/v2/p/backups", AGENT_BACKUP)
    search = {"match": [{"backup_name": "etc"}, {"status": "available"}]}
    assert len(client.request("GET", "/v2/p/backups", search)[1]["backups"]) == 1


# -- jobs ------------------------------------------------------------------------------
def test_new_job_has_no_status_so_the_scheduler_starts_it(client):
    job_id = _job(client, schedule_interval="10 seconds")
    schedule = client.get(f"/v2/p/jobs/{job_id}")[1]["job_schedule"]
    assert "status" not in schedule and "event" not in schedule
    assert schedule["time_created"] > 0 and schedule["time_ended"] == -1
    # ... and the scheduler's poll finds it.
    body = client.request("GET", "/v2/p/jobs", POLL)[1]
    assert [j["job_id"] for j in body["jobs"]] == [job_id]


def test_job_events_follow_freezer_api(client):
    job_id = _job(client, status="completed", result="success", event="stop")

    def event(name):
        status, body = client.post(f"/v2/p/jobs/{job_id}/event", {name: None})
        assert status == 202
        return body["result"], client.get(f"/v2/p/jobs/{job_id}")[1]["job_schedule"]

    result, schedule = event("start")
    assert (result, schedule["event"], schedule["status"], schedule["result"]) == (
        "success",
        "start",
        "",
        "",
    )
    # abort is recorded whatever the status; the scheduler acts on it.
    result, schedule = event("abort")
    assert (result, schedule["event"], schedule["status"]) == ("success", "abort", "")
    assert event("abort")[0] == "abort already requested"
    client.patch(f"/v2/p/jobs/{job_id}", {"job_schedule": {"status": "removed"}})
    assert event("start")[0] == "success"  # freezer-api has no "removed" lock


def test_user_credentials_are_accepted_and_never_taken_from_a_client(client):
    body = {**JOB, "user_credentials": {"trust_id": "t", "trustor_user_id": "u"}}
    job_id = client.post("/v2/p/jobs", body)[1]["job_id"]
    assert "user_credentials" not in client.get(f"/v2/p/jobs/{job_id}")[1]
    assert client.patch(f"/v2/p/jobs/{job_id}", {"user_credentials": {"trust_id": "x"}})[0] == 200
    assert "user_credentials" not in client.get(f"/v2/p/jobs/{job_id}")[1]


def test_nullable_job_fields_as_freezer_api(client):
    body = {**JOB, "session_id": None, "session_name": None, "description": None}
    job_id = client.post("/v2/p/jobs", body)[1]["job_id"]
    job = client.get(f"/v2/p/jobs/{job_id}")[1]
    assert (job["session_id"], job["description"]) == ("", "")


def test_all_projects_is_for_admins(client, admin):
    mine = _job(client, "p")
    theirs = _job(client, "q")
    everyone = "/v2/p/jobs?all_projects=True&limit=100"
    assert [j["job_id"] for j in admin.get(everyone)[1]["jobs"]] == [mine, theirs]
    assert [j["job_id"] for j in admin.get("/v2/p/jobs?all_projects=False")[1]["jobs"]] == [mine]
    assert [j["job_id"] for j in client.get(everyone)[1]["jobs"]] == [mine]
    assert admin.get(f"/v2/p/jobs/{theirs}?all_projects=true")[1]["job_id"] == theirs
    assert client.get(f"/v2/p/jobs/{theirs}?all_projects=true")[0] == 404
    assert admin.get(f"/v2/p/jobs/{theirs}")[0] == 404  # only when asked
    assert client.get("/v2/p/jobs?all_projects=maybe")[0] == 400


# -- clients ---------------------------------------------------------------------------
def test_central_clients_are_admin_only(client, admin):
    central = {"client_id": "central_sched", "hostname": "sched", "is_central": True}
    status, body = client.post("/v2/p/clients", central)
    assert status == 403, body
    assert "admin" in body["description"]
    assert client.get("/v2/p/clients/central_sched")[0] == 404
    assert admin.post("/v2/p/clients", central)[0] == 201
    plain = {"client_id": "plain_host", "hostname": "host", "is_central": False}
    assert client.post("/v2/p/clients", plain)[0] == 201


# -- sessions --------------------------------------------------------------------------
def test_session_jobs_may_be_a_list_of_objects(client):
    body = {"description": "s", "jobs": [{"job_id": "j1", "client_id": "c1"}, {"j2": {}}]}
    status, answer = client.post("/v2/p/sessions", body)
    assert status == 201, answer
    doc = client.get(f"/v2/p/sessions/{answer['session_id']}")[1]
    assert set(doc["jobs"]) == {"j1", "j2"}
    assert doc["jobs"]["j1"]["client_id"] == "c1" and doc["jobs"]["j2"]["time_started"] == -1
    patch = {"jobs": [{"job_id": "j4"}]}
    assert client.patch(f"/v2/p/sessions/{answer['session_id']}", patch)[0] == 200
    assert list(client.get(f"/v2/p/sessions/{answer['session_id']}")[1]["jobs"]) == ["j4"]
    assert client.post("/v2/p/sessions", {"jobs": [{"x": 1}]})[0] == 400
    assert client.post("/v2/p/sessions", {"jobs": [1]})[0] == 400
    assert client.post("/v2/p/sessions", {"jobs": {"j3": {}}})[0] == 201


# -- JSON-home -------------------------------------------------------------------------
def test_v2_serves_freezer_apis_json_home_whatever_the_accept(app):
    seen = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/v2",
        "HTTP_ACCEPT": "application/json",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "catalog.test",
    }
    body = json.loads(b"".join(app(environ, lambda status, headers: seen.append(headers))))
    assert dict(seen[0])["Content-Type"] == "application/json-home"
    resources = body["resources"]
    assert resources["rel/backups"] == {
        "href-template": "/v2/{project_id}/backups/{backup_id}",
        "href-vars": {"project_id": "param/project_id", "backup_id": "param/backup_id"},
        "hints": {"allow": ["GET"], "formats": {"application/json": {}}},
    }
    assert resources["rel/jobs"]["href-template"] == (
        "/v2/{project_id}/jobs{?all_projects,offset,limit}"
    )
    assert resources["rel/job"]["href-vars"] == {
        "project_id": "param/project_id",
        "job_id": "param/job_id",
    }
    assert [k for k in seen[0] if k[0] == "Content-Type"] == [
        ("Content-Type", "application/json-home")
    ]
