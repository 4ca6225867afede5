"""Sessions across hosts: two agents, one session, against stowkit's own catalog.

The catalog is the real WSGI application (no-auth, SQLite in tmp) called in
process; the agents' CatalogClient sends their requests to it instead of a
socket.  One fake clock drives both the agents and the catalog (its session
``time_start`` and ``hold_off`` checks), so "the same moment" is exact.
"""

from __future__ import annotations

import datetime as dt
import json
import types
from typing import Any

import pytest

from stowkit.corelib import config
from stowkit.corelib.agent import actions, claims, engine, sessions
from stowkit.corelib.catalogapi import server
from stowkit.corelib.catalogapi import service as catalog_service
from stowkit.corelib.catalogclient import CatalogClient
from stowkit.corelib.errors import BackendUnavailable
from tests.fakes.catalog import wsgi_call

T0 = 1_800_000_000
PROJECT = "demo"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InProcessCatalog(CatalogClient):
    """CatalogClient whose requests go to a WSGI app (its request building and answers kept)."""

    def __init__(self, app: Any, user: str = "agent") -> None:
        super().__init__("http://catalog.test", PROJECT, lambda: {"X-User-Id": user})
        self.app = app

    def _call(self, method, path, body=None, extra=None):
        data = b"" if body is None else json.dumps(body).encode()
        headers = {**self.headers(), **(extra or {})}
        path = f"/v2/{self.project}/{path}"
        return wsgi_call(self.app, method, path, data, headers, "application/json")


@pytest.fixture()
def clock(monkeypatch):
    clock = Clock()
    # the catalog's own time (session time_start, hold_off, job time_created)
    monkeypatch.setattr(catalog_service, "time", types.SimpleNamespace(time=clock))
    return clock


@pytest.fixture()
def app(tmp_path, clock):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    server.register_opts(conf)
    wsgi = server.build_app(conf, auth="noauth")
    wsgi.service.catalog.sync()
    yield wsgi
    wsgi.service.catalog.close()


class Snapshots:
    """Fake actions of one host: when each ran (the fake clock), failing when told."""

    def __init__(self, clock: Clock, fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.at: list[float] = []

    def __call__(self, ctx, action):
        self.at.append(self.clock())
        if self.fail:
            raise BackendUnavailable("the volume is gone")
        return actions.Outcome("snapshot taken")


def iso(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat()


class Site:
    """One catalog, a session, and an agent per client."""

    def __init__(self, app: Any, clock: Clock) -> None:
        self.app = app
        self.clock = clock
        self.api = InProcessCatalog(app, "operator")
        self.agents: dict[str, engine.Agent] = {}
        self.actions: dict[str, Snapshots] = {}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, answer, _ = self.api._call(method, path, body)
        return status, answer

    def session(self, schedule: dict[str, Any] | None = None, hold_off: int = 30) -> str:
        body = {"description": "app", "hold_off": hold_off, "schedule": schedule or {}}
        status, answer = self.call("POST", "sessions", body)
        assert status == 201, answer
        return answer["session_id"]

    def member(self, session_id: str, client: str, fail: bool = False, **schedule) -> str:
        body = {
            "client_id": client,
            "description": f"snapshot on {client}",
            "job_actions": [{"freezer_action": {"action": "fake"}}],
            "job_schedule": schedule,
        }
        status, answer = self.call("POST", "jobs", body)
        assert status == 201, answer
        job_id = answer["job_id"]
        status, answer = self.call("PUT", f"sessions/{session_id}/jobs/{job_id}")
        assert status in (200, 204), answer
        self.actions[client] = Snapshots(self.clock, fail)
        self.agents[client] = engine.Agent(
            InProcessCatalog(self.app, f"agent-{client}"),
            client,
            f"host-{client}",
            lambda: actions.Context(hostname="h"),
            poll_interval=1,
            clock=self.clock,
            pid=100 + len(self.agents),
            run_action=self.actions[client],
        )
        return job_id

    def tick(self) -> None:
        for agent in self.agents.values():
            agent.poll_once()
            agent.wait_runs(10)

    def get(self, kind: str, doc_id: str) -> dict[str, Any]:
        status, answer = self.call("GET", f"{kind}/{doc_id}")
        assert status == 200, answer
        return answer


def test_two_agents_start_their_jobs_at_the_session_slot_and_the_result_aggregates(app, clock):
    site = Site(app, clock)
    sid = site.session({"schedule_date": iso(T0 + 60)})
    j1, j2 = site.member(sid, "c1"), site.member(sid, "c2")
    site.tick()
    assert site.actions["c1"].at == site.actions["c2"].at == []  # not yet: the slot is ahead
    assert site.get("sessions", sid)["status"] != "running"
    clock.now = T0 + 60
    site.tick()
    assert site.actions["c1"].at == [T0 + 60] and site.actions["c2"].at == [T0 + 60]
    session = site.get("sessions", sid)
    assert session["session_tag"] == 1  # one run, opened by the first, joined by the other
    assert session["time_start"] == T0 + 60
    assert session["status"] == "completed" and session["result"] == "success"
    assert {j["result"] for j in session["jobs"].values()} == {"success"}
    for job_id in (j1, j2):
        job = site.get("jobs", job_id)
        assert job["session_tag"] == 1
        assert job["job_schedule"]["result"] == "success"
        assert job["job_schedule"]["status"] == "completed"


def test_a_failed_member_makes_the_session_fail(app, clock):
    site = Site(app, clock)
    sid = site.session({"schedule_date": iso(T0 + 5)})
    site.member(sid, "c1")
    j2 = site.member(sid, "c2", fail=True)
    clock.now = T0 + 5
    site.tick()
    session = site.get("sessions", sid)
    assert session["status"] == "completed" and session["result"] == "fail"
    assert session["jobs"][j2]["result"] == "fail"
    assert site.get("jobs", j2)["job_schedule"]["result"] == "fail"


def test_members_without_a_schedule_wait_for_the_session_then_join_its_run(app, clock):
    site = Site(app, clock)
    sid = site.session(hold_off=30)
    j1, j2 = site.member(sid, "c1"), site.member(sid, "c2")
    site.tick()
    site.tick()
    # plain jobs would have run at once; members wait for their session
    assert site.actions["c1"].at == site.actions["c2"].at == []
    assert site.get("jobs", j1)["job_schedule"]["status"] == "scheduled"
    clock.now = T0 + 100
    # what `freezer session-start --session-id S --job-id J1 --job-tag 0` sends
    status, answer = site.call(
        "POST", f"sessions/{sid}/action", {"start": {"job_id": j1, "current_tag": 0}}
    )
    assert status == 202 and answer["result"] == "success", answer
    clock.now = T0 + 101
    site.tick()
    assert site.actions["c1"].at == [T0 + 101] and site.actions["c2"].at == [T0 + 101]
    session = site.get("sessions", sid)
    assert session["session_tag"] == 1
    assert session["status"] == "completed" and session["result"] == "success"
    # still members: the next start runs them again
    assert site.get("jobs", j2)["job_schedule"]["status"] == "scheduled"
    clock.now = T0 + 200
    site.call("POST", f"sessions/{sid}/action", {"start": {"job_id": j2, "current_tag": 1}})
    site.tick()
    assert site.actions["c1"].at == [T0 + 101, T0 + 200]
    assert site.get("sessions", sid)["session_tag"] == 2


def test_a_run_seen_after_hold_off_is_ended_as_failed_for_the_late_member(app, clock):
    site = Site(app, clock)
    sid = site.session(hold_off=10)
    j1, j2 = site.member(sid, "c1"), site.member(sid, "c2")
    site.tick()
    site.call("POST", f"sessions/{sid}/action", {"start": {"job_id": j1, "current_tag": 0}})
    clock.now = T0 + 1
    site.agents["c1"].poll_once()
    site.agents["c1"].wait_runs(10)
    clock.now = T0 + 11  # c2's agent looks only after hold_off
    site.agents["c2"].poll_once()
    site.agents["c2"].wait_runs(10)
    assert site.actions["c2"].at == []
    session = site.get("sessions", sid)
    assert session["jobs"][j2]["result"] == "fail"
    assert session["status"] == "completed" and session["result"] == "fail"
    site.tick()  # ended once: nothing more happens
    assert site.actions["c2"].at == [] and site.get("sessions", sid)["session_tag"] == 1


def test_a_member_whose_agent_died_mid_run_is_ended_failed_and_not_run_again(app, clock):
    site = Site(app, clock)
    sid = site.session(hold_off=60)
    j1 = site.member(sid, "c1")
    site.member(sid, "c2")
    site.tick()
    site.call("POST", f"sessions/{sid}/action", {"start": {"job_id": j1, "current_tag": 0}})
    # c1's first agent claimed and started its run, then died (pid gone)
    first = site.agents["c1"]
    session = site.get("sessions", sid)
    job = site.get("jobs", j1)
    step = claims.decide(job, clock(), first.me, first.pid, first.dead, session)
    assert step.run
    status, _, _ = site.api._call("PATCH", f"jobs/{j1}", {"job_schedule": step.patch})
    assert status == 200
    site.api.session_action(sid, "start", j1, sessions.tag(session))
    clock.now = T0 + 2
    second = engine.Agent(
        InProcessCatalog(app, "agent-c1"),
        "c1",
        "host-c1",
        lambda: actions.Context(hostname="h"),
        clock=clock,
        pid=first.pid,  # same host and pid, another process
        run_action=site.actions["c1"],
    )
    for _ in range(3):
        second.poll_once()
        second.wait_runs(10)
    assert site.actions["c1"].at == []  # at most once: the lost run is not repeated
    assert site.get("jobs", j1)["job_schedule"]["result"] == "fail"
    assert site.get("sessions", sid)["jobs"][j1]["result"] == "fail"


def test_schedule_view_takes_the_sessions_trigger_fields():
    job = {"schedule_interval": "1 days", "status": "scheduled", "claim": {"run": 2}}
    view = sessions.schedule_view(job, {"schedule": {"schedule_date": "2030-01-01T00:00:00"}})
    assert view == {
        "schedule_date": "2030-01-01T00:00:00",
        "status": "scheduled",
        "claim": {"run": 2},
    }
    assert sessions.schedule_view(job, {"schedule": {}}) == job
