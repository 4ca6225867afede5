"""``stowkit agent`` logging in to the harness Keystone, against stowkit's catalog behind it.

The catalog is ``stowkit catalog serve`` with ``auth_strategy = keystone``
(keystonemiddleware validating the harness Keystone's tokens); the agent
logs in with the harness member's password and runs a job snapshotting a
volume on the harness btrfs.  Then two agents (two client ids, one per
harness btrfs filesystem) run the two jobs of one session: both start at the
session's slot.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from typing import Any

import pytest

from stowkit.corelib.errors import ConfigError
from tests.commands import STOWKIT
from tests.fakes.harness import REPO
from tests.fakes.keystone_catalog import Api, catalog_server, freezer_runner
from tests.fakes.processes import stop_group, wait_for


@pytest.fixture(scope="module")
def keystone(service) -> dict[str, Any]:
    return service("keystone")


@pytest.fixture(scope="module")
def catalog(keystone, tmp_path_factory):
    work = tmp_path_factory.mktemp("agent-keystone-catalog")
    with catalog_server(work, f"sqlite:///{work}/catalog.sqlite", keystone) as url:
        yield url


@pytest.fixture(scope="module")
def api(catalog, keystone) -> Api:
    return Api(catalog, keystone["member"])


def v2(api: Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return api.call(method, f"/v2/{api.project}/{path}", body)


def agent_conf(
    tmp_path, host, catalog: str, member: dict[str, Any], client_id: str, extra: str = ""
):
    conf = tmp_path / f"{client_id}.conf"
    conf.write_text(
        host.config_file.read_text()
        + f"""
[DEFAULT]
state_dir = {tmp_path / client_id}
[agent]
catalog_url = {catalog}
client_id = {client_id}
hostname = {client_id}.example.org
poll_interval = 0.5
auth_type = password
auth_url = {member["auth_url"]}
username = {member["username"]}
password = {member["password"]}
project_name = {member["project_name"]}
user_domain_name = {member["user_domain_name"]}
project_domain_name = {member["project_domain_name"]}
{extra}"""
    )
    (tmp_path / client_id).mkdir()
    return conf


def clean_env() -> dict[str, str]:
    # the agent's credentials are its configuration's, not the caller's OS_*
    return {k: v for k, v in os.environ.items() if not k.startswith("OS_")}


def stowkit(conf, *args: str) -> subprocess.CompletedProcess:
    """``stowkit --config-file CONF ARGS``, with the configuration's credentials only."""
    return subprocess.run(
        [*STOWKIT, "--config-file", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=clean_env(),
    )


def create_job(api: Api, client_id: str, volume: str, schedule: dict[str, Any]) -> str:
    body = {  # what `freezer job-create --file F --client C` posts
        "description": f"snapshot {volume} on {client_id}",
        "client_id": client_id,
        "job_actions": [
            {"freezer_action": {"action": "stowkit-volume-snapshot", "volume": volume}}
        ],
        "job_schedule": schedule,
    }
    status, answer = v2(api, "POST", "jobs", body)
    assert status == 201, answer
    return answer["job_id"]


def job(api: Api, job_id: str) -> dict[str, Any]:
    status, body = v2(api, "GET", f"jobs/{job_id}")
    assert status == 200, body
    return body


def test_agent_logs_in_as_the_member_and_runs_a_snapshot_job(
    service,
    hosts,
    api,
    catalog,
    keystone,
    tmp_path,
):
    a, _ = hosts
    a.driver.create_volume("data")
    member = keystone["member"]
    conf = agent_conf(tmp_path, a, catalog, member, "kagent-a")
    # the job made with the real freezer CLI, as its users make jobs
    freezer = freezer_runner(service("freezerclient")["bin"], member, catalog)
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "description": "snapshot data",
                "job_actions": [
                    {"freezer_action": {"action": "stowkit-volume-snapshot", "volume": "data"}}
                ],
                "job_schedule": {},
            }
        )
    )
    job_id = freezer("job-create", "--file", str(spec), "--client", "kagent-a")["Job ID"]
    run = stowkit(conf, "agent", "--once")
    assert run.returncode == 0, run.stderr
    doc = job(api, job_id)
    assert doc["job_schedule"]["result"] == "success", doc["job_schedule"]
    assert doc["job_schedule"]["status"] == "completed"
    shown = freezer("job-show", job_id)  # what its users see
    assert (shown["Status"], shown["Result"]) == ("completed", "success")
    (snap,) = a.driver.list_snapshots("data")
    status, answer = v2(api, "GET", "backups?limit=100", {"match": [{"container": "data"}]})
    assert status == 200, answer
    (backup,) = [
        b for b in answer["backups"] if b["backup_metadata"]["hostname"] == "kagent-a.example.org"
    ]
    assert backup["backup_metadata"]["backup_name"] == snap.name
    # recorded as the member, in the member's project: the token's, not a header's
    assert backup["user_id"] == member["user_id"]
    assert backup["project_id"] == member["project_id"]
    status, answer = v2(api, "GET", "clients/kagent-a")
    assert status == 200, answer


def test_agent_with_a_wrong_password_exits_with_one_line(hosts, catalog, keystone, tmp_path):
    a, _ = hosts
    member = {**keystone["member"], "password": "not-the-password"}
    conf = agent_conf(tmp_path, a, catalog, member, "kagent-bad")
    run = stowkit(conf, "agent", "--once")
    assert run.returncode == ConfigError.exit_code, (run.returncode, run.stderr)
    assert "Keystone refused" in run.stderr and "Traceback" not in run.stderr


def test_commands_reach_the_keystone_catalog_as_the_agent_does(
    hosts,
    api,
    catalog,
    keystone,
    tmp_path,
):
    """`schedule` with `store = catalog` and `volume pull` log in as the agent logs in: the
    member's token, its project, the catalog the token names; without the token the catalog
    answers 401, and these commands could not work behind Keystone."""
    a, _ = hosts
    a.driver.create_volume("data")
    member = keystone["member"]
    conf = agent_conf(tmp_path, a, catalog, member, "kcmd-a", "[scheduler]\nstore = catalog\n")

    added = stowkit(conf, "schedule", "add", "data", "snapshot", "60")
    assert added.returncode == 0, added.stderr
    status, answer = v2(api, "GET", "jobs?limit=100", {"match": [{"client_id": "kcmd-a"}]})
    assert status == 200, answer
    (job_doc,) = [j for j in answer["jobs"] if j["client_id"] == "kcmd-a"]
    assert job_doc["project_id"] == member["project_id"] and job_doc["user_id"] == member["user_id"]
    listed = stowkit(conf, "schedule", "list", "-f", "value", "-c", "volume", "-c", "action")
    assert listed.returncode == 0 and listed.stdout.split() == ["data", "snapshot"], listed
    # volume pull reads the member's backups: a copy recorded on another host, which the
    # pull names (it cannot be reached: the point is that the catalog answered)
    snap = a.driver.create_snapshot("data")
    status, _ = v2(
        api,
        "POST",
        "backups",
        {
            "action": "stowkit-volume-snapshot",
            "container": "data",
            "hostname": "elsewhere.invalid",
            "backup_name": snap.name,
            "time_stamp": int(snap.created.timestamp()),
            "curr_backup_level": 0,
        },
    )
    assert status == 201
    pulled = stowkit(conf, "volume", "pull", "data", "--force", "--dry-run")
    assert pulled.returncode == 9, pulled.stderr  # elsewhere.invalid cannot be reached
    assert "elsewhere.invalid" in pulled.stderr and "401" not in pulled.stderr
    refused = stowkit(conf, "volume", "pull", "data", "--project", "other")
    assert refused.returncode == 3 and "the project is the token's" in refused.stderr
    assert stowkit(conf, "schedule", "remove", "data", "snapshot").returncode == 0
    # no credentials at all: the catalog's 401 is configuration to fix, one line, exit 10
    bare = tmp_path / "bare.conf"
    bare.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path / 'bare'}\n[agent]\ncatalog_url = {catalog}\n"
        "[scheduler]\nstore = catalog\n"
    )
    denied = stowkit(bare, "schedule", "list")
    assert denied.returncode == ConfigError.exit_code, denied.stderr
    assert "refused this host's credentials" in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1


def test_two_agents_of_one_session_snapshot_at_the_same_moment(
    hosts,
    api,
    catalog,
    keystone,
    tmp_path,
):
    member = keystone["member"]
    a, b = hosts
    for host in (a, b):
        host.driver.create_volume("app")
    far = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    status, answer = v2(
        api,
        "POST",
        "sessions",
        {
            "description": "app on two hosts",
            "hold_off": 60,
            "schedule": {"schedule_date": far.isoformat()},
        },
    )
    assert status == 201, answer
    session_id = answer["session_id"]
    jobs = {}
    for client in ("ksess-a", "ksess-b"):
        jobs[client] = create_job(api, client, "app", {})
        status, answer = v2(api, "PUT", f"sessions/{session_id}/jobs/{jobs[client]}")
        assert status in (200, 204), answer
    procs = []
    try:
        for host, client in ((a, "ksess-a"), (b, "ksess-b")):
            conf = agent_conf(tmp_path, host, catalog, member, client)
            log = open(tmp_path / f"{client}.log", "wb")
            procs.append(
                subprocess.Popen(
                    [*STOWKIT, "--config-file", str(conf), "agent"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=REPO,
                    env=clean_env(),
                )
            )
            log.close()
        # Both agents have seen their job (and wait for the session's slot) ...
        wait_for(
            "both jobs scheduled",
            lambda: all(
                job(api, j)["job_schedule"].get("status") == "scheduled" for j in jobs.values()
            ),
            120.0,
            procs=procs,
        )
        # ... then the session's start is set a few seconds ahead.
        slot = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=4)
        status, answer = v2(
            api,
            "PATCH",
            f"sessions/{session_id}",
            {"schedule": {"schedule_date": slot.isoformat()}},
        )
        assert status == 200, answer

        def done():
            status, session = v2(api, "GET", f"sessions/{session_id}")
            assert status == 200, session
            return session if session["status"] == "completed" else None

        session = wait_for("the session's run to end", done, 120.0, procs=procs)
    finally:
        for proc in procs:
            stop_group(proc)
    logs = "\n".join((tmp_path / f"{c}.log").read_text() for c in jobs)
    assert session["result"] == "success", (session, logs)
    assert session["session_tag"] == 1, session  # one run: opened by one, joined by the other
    assert {j["result"] for j in session["jobs"].values()} == {"success"}
    (snap_a,) = a.driver.list_snapshots("app")
    (snap_b,) = b.driver.list_snapshots("app")
    # taken at the session's start, not before, and at the same moment on both hosts
    for snap in (snap_a, snap_b):
        assert snap.created.timestamp() >= slot.timestamp() - 0.01, (snap, slot)
    assert abs(snap_a.created.timestamp() - snap_b.created.timestamp()) <= 1.0, (snap_a, snap_b)
    for job_id in jobs.values():
        doc = job(api, job_id)
        assert doc["session_tag"] == 1 and doc["job_schedule"]["result"] == "success", doc


@pytest.fixture(scope="module")
def trusting_catalog(keystone, tmp_path_factory):
    work = tmp_path_factory.mktemp("agent-keystone-trusts")
    extra = "[centralized_scheduler]\nenforce_trusts = true\n"
    with catalog_server(work, f"sqlite:///{work}/catalog.sqlite", keystone, extra) as url:
        yield url


def test_central_agent_runs_a_users_job_with_its_trust(
    hosts,
    trusting_catalog,
    keystone,
    tmp_path,
):
    member, svc = keystone["member"], keystone["service"]
    a, _ = hosts
    a.driver.create_volume("data")
    api = Api(trusting_catalog, member)
    job_id = create_job(api, "central-agent", "data", {})
    assert job(api, job_id)["user_credentials"]["trust_id"]
    # the agent logs in as the service user, in the service project
    conf = agent_conf(tmp_path, a, trusting_catalog, svc, "central-agent", "central = true\n")
    run = stowkit(conf, "agent", "--once")
    assert run.returncode == 0, run.stderr
    doc = job(api, job_id)
    assert doc["job_schedule"]["result"] == "success", (doc["job_schedule"], run.stderr)
    (snap,) = a.driver.list_snapshots("data")
    status, answer = v2(api, "GET", "backups?limit=100", {"match": [{"container": "data"}]})
    assert status == 200, answer
    (backup,) = answer["backups"]
    # in the user's project, written by the trustee through the trust
    assert backup["backup_metadata"]["backup_name"] == snap.name
    assert backup["project_id"] == member["project_id"]
    assert backup["user_id"] == svc["user_id"]
