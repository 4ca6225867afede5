"""``stowkit agent`` for real: ``catalog serve --no-auth`` on SQLite, volumes on harness btrfs.

Jobs are created over the catalog API with the body ``freezer job-create``
sends; the agent runs as its own process (SIGKILLed and restarted in one
test).  Waits have deadlines; no assertion is about how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from typing import Any

import pytest

from tests.commands import STOWKIT
from tests.fakes.btrfs_hosts import received
from tests.fakes.harness import REPO
from tests.fakes.net import free_port
from tests.fakes.processes import stop_group, wait_for

PROJECT = "demo"
HOSTNAME = "agent-host.example.org"
CLIENT_ID = f"{PROJECT}_{HOSTNAME}"


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/v2/{PROJECT}/{path}",
            data=data,
            method=method,
            headers={"X-User-Id": "tester", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = self.call("GET", f"jobs/{job_id}")
        assert status == 200, body
        return body

    def create_job(self, actions: list[dict], schedule: dict[str, Any]) -> str:
        # What `freezer job-create --file F --client C` posts.
        body = {
            "description": "agent test",
            "client_id": CLIENT_ID,
            "job_actions": actions,
            "job_schedule": schedule,
        }
        status, answer = self.call("POST", "jobs", body)
        assert status == 201, answer
        return answer["job_id"]

    def event(self, job_id: str, event: str) -> None:
        status, answer = self.call("POST", f"jobs/{job_id}/event", {event: None})
        assert status == 202, answer

    def backups(self, volume: str) -> list[dict[str, Any]]:
        search = {"match": [{"container": volume}]}
        return self.call("GET", "backups?limit=1000", search)[1]["backups"]


@contextlib.contextmanager
def agent_stack(a, tmp_path):
    """A no-auth catalog on SQLite and an agent factory for host ``a``; a volume ``data``."""
    conf = tmp_path / "stowkit.conf"
    port = free_port()
    conf.write_text(
        a.config_file.read_text()
        + f"""
[DEFAULT]
state_dir = {tmp_path}
[agent]
catalog_url = http://127.0.0.1:{port}
project = {PROJECT}
hostname = {HOSTNAME}
poll_interval = 0.5
claim_timeout = 600
"""
    )
    sync = subprocess.run(
        [*STOWKIT, "--config-file", str(conf), "catalog", "db-sync"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert sync.returncode == 0, sync.stderr
    procs: list[subprocess.Popen] = []

    def start(*argv: str, log: str) -> subprocess.Popen:
        out = open(tmp_path / log, "ab")
        proc = subprocess.Popen(
            [*STOWKIT, "--config-file", str(conf), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
        )
        out.close()
        procs.append(proc)
        return proc

    server = start("catalog", "serve", "--no-auth", "--port", str(port), log="catalog.log")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            urllib.request.urlopen(url + "/healthcheck", timeout=2)
            return True
        except OSError:
            return False

    wait_for("the catalog", healthy, proc=server)
    a.driver.create_volume("data")

    def agent() -> subprocess.Popen:
        return start("agent", log="agent.log")

    try:
        yield a, Api(url), agent, conf, tmp_path
    finally:
        for proc in procs:
            stop_group(proc)


@pytest.fixture
def stack(hosts, tmp_path):
    with agent_stack(hosts[0], tmp_path) as parts:
        yield parts


@pytest.fixture
def peer_stack(peers, tmp_path):
    a, b, host_b = peers
    with agent_stack(a, tmp_path) as parts:
        yield (*parts, b, host_b)


SNAPSHOT = {"freezer_action": {"action": "stowkit-volume-snapshot", "volume": "data"}}
#: An action that keeps a run busy: a bad purge pattern fails, and is retried after 30 s.
BUSY = {
    "freezer_action": {"action": "stowkit-volume-purge", "volume": "data", "pattern": "bad"},
    "max_retries": 20,
    "max_retries_interval": 30,
}
#: Runs after BUSY only because it is mandatory: it snapshots if the run goes on.
AFTER = {**SNAPSHOT, "mandatory": True}


def snapshots(a) -> list[str]:
    return sorted(s.name for s in a.driver.list_snapshots("data"))


def test_interval_job_snapshots_records_backups_and_stops(stack):
    a, api, agent, conf, _ = stack
    proc = agent()
    wait_for(
        "the client registration",
        lambda: api.call("GET", f"clients/{CLIENT_ID}")[0] == 200,
        proc=proc,
    )
    job_id = api.create_job([SNAPSHOT], {"schedule_interval": "2 seconds"})
    assert "status" not in api.job(job_id)["job_schedule"]  # as freezer-api: no status yet
    wait_for(
        "three runs",
        lambda: api.job(job_id)["job_schedule"].get("claim", {}).get("run", 0) >= 3,
        proc=proc,
    )
    shown = api.job(job_id)["job_schedule"]
    assert shown["status"] in ("scheduled", "running")
    wait_for("a finished run", lambda: api.job(job_id)["job_schedule"].get("result") == "success")
    shown = api.job(job_id)["job_schedule"]
    assert shown["time_started"] > 0 and shown["current_pid"] == proc.pid

    api.event(job_id, "stop")
    wait_for("the stop", lambda: api.job(job_id)["job_schedule"].get("status") == "stop", proc=proc)
    assert api.job(job_id)["job_schedule"]["event"] == ""
    stopped = api.job(job_id)["job_schedule"]["claim"]["run"]
    taken = snapshots(a)
    assert len(taken) == stopped
    # Proof the agent looked again since: a one-shot job of the same client ran.
    probe = api.create_job([{"freezer_action": {"action": "teleport"}}], {})
    wait_for("the probe", lambda: api.job(probe)["job_schedule"].get("status") == "completed")
    assert api.job(probe)["job_schedule"]["result"] == "fail"
    assert "unknown action 'teleport'" in api.job(probe)["job_schedule"]["claim"]["message"]
    assert api.job(job_id)["job_schedule"]["claim"]["run"] == stopped and snapshots(a) == taken

    # Every snapshot is one backup document, with the volume as container.
    backups = api.backups("data")
    assert sorted(b["backup_metadata"]["backup_name"] for b in backups) == taken
    meta = backups[0]["backup_metadata"]
    assert meta["hostname"] == HOSTNAME and meta["curr_backup_level"] == 0
    listed = subprocess.run(
        [
            *STOWKIT,
            "--config-file",
            str(conf),
            "catalog",
            "backup",
            "list",
            "--project",
            PROJECT,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == len(taken)

    # What a purge does for the snapshots it deleted: their records go too
    # (twice is fine: a record already gone is not an error).
    from stowkit.corelib.catalogclient import CatalogClient, noauth_headers

    catalog = CatalogClient(api.url, PROJECT, noauth_headers("tester"))
    gone = backups[0]["backup_id"]
    catalog.delete_backup(gone)
    catalog.delete_backup(gone)
    assert gone not in {b["backup_id"] for b in api.backups("data")}
    assert len(api.backups("data")) == len(taken) - 1


def test_abort_ends_a_run_and_skips_what_follows(stack):
    a, api, agent, _, _ = stack
    proc = agent()
    job_id = api.create_job([BUSY, AFTER], {})
    wait_for(
        "the run", lambda: api.job(job_id)["job_schedule"].get("status") == "running", proc=proc
    )
    api.event(job_id, "abort")
    wait_for(
        "the abort", lambda: api.job(job_id)["job_schedule"].get("result") == "aborted", proc=proc
    )
    shown = api.job(job_id)["job_schedule"]
    assert shown["status"] == "stop" and shown["time_ended"] >= shown["time_started"] > 0
    assert snapshots(a) == []  # the mandatory snapshot after the aborted action never ran


def test_agent_killed_mid_job_and_restarted_runs_nothing_twice(stack):
    a, api, agent, _, _ = stack
    first = agent()
    job_id = api.create_job([BUSY, AFTER], {})
    every = api.create_job([SNAPSHOT], {"schedule_interval": "continuous"})
    wait_for(
        "the run", lambda: api.job(job_id)["job_schedule"].get("status") == "running", proc=first
    )
    wait_for("a snapshot", lambda: snapshots(a), proc=first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    claimed = api.job(every)["job_schedule"]["claim"]["run"]
    before = snapshots(a)

    second = agent()
    wait_for(
        "the lost run",
        lambda: api.job(job_id)["job_schedule"].get("status") == "completed",
        proc=second,
    )
    shown = api.job(job_id)["job_schedule"]
    assert shown["result"] == "fail" and shown["claim"]["run"] == 1
    wait_for(
        "new runs",
        lambda: api.job(every)["job_schedule"]["claim"]["run"] >= claimed + 2,
        proc=second,
    )
    api.event(every, "stop")
    wait_for("the stop", lambda: api.job(every)["job_schedule"].get("status") == "stop")
    after = snapshots(a)
    assert set(before) <= set(after)
    # One snapshot per claimed run at most: a run interrupted by the kill may
    # have left none, none was made twice, and the one-shot job's mandatory
    # snapshot never ran.
    runs = api.job(every)["job_schedule"]["claim"]["run"]
    assert len(after) <= runs
    names = [b["backup_metadata"]["backup_name"] for b in api.backups("data")]
    assert len(names) == len(set(names))


def test_interval_job_replicates_to_another_host_incrementally(peer_stack):
    a, api, agent, _, _, b, host_b = peer_stack
    proc = agent()
    replicate = {
        "freezer_action": {"action": "stowkit-volume-replicate", "volume": "data", "host": host_b}
    }
    job_id = api.create_job([replicate], {"schedule_interval": "2 seconds"})
    wait_for(
        "two replications",
        lambda: len(api.backups("data")) >= 2,
        proc=proc,
    )
    api.event(job_id, "stop")
    wait_for("the stop", lambda: api.job(job_id)["job_schedule"].get("status") == "stop", proc=proc)
    shown = api.job(job_id)["job_schedule"]
    assert shown["result"] == "success" and shown["claim"]["run"] >= 2
    docs = sorted(api.backups("data"), key=lambda d: d["backup_metadata"]["time_stamp"])
    metas = [d["backup_metadata"] for d in docs]
    assert {m["action"] for m in metas} == {"stowkit-volume-replicate"}
    assert all(m["remote_host"] == host_b and m["hostname"] == HOSTNAME for m in metas)
    # every copy is on host b, and every one after the first went as a diff of the last
    assert [m["snapshot"] for m in metas] == received(b, "data")[: len(metas)]
    assert metas[0]["parent"] == "" and metas[0]["curr_backup_level"] == 0
    for before, after in zip(metas, metas[1:], strict=False):
        assert after["parent"] == before["snapshot"]
        assert after["curr_backup_level"] == before["curr_backup_level"] + 1
