"""stowkit agent's engine against a fake catalog: schedules, events, retries, claims.

Time is a fake clock; runs use fake actions recorded in a list, so each
test says exactly which runs happened.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from typing import Any

import pytest

from stowkit.corelib.agent import actions, claims, engine, runner, triggers
from stowkit.corelib.errors import BackendUnavailable, InvalidArgument
from tests.fakes.agent_catalog import T0, FakeCatalog


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """Fake actions: records (job_id, action n, run) and fails as told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[Any, int] = {}  # action n -> failures left
        self.gate: threading.Event | None = None

    def __call__(self, ctx, action):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((action.get("n"), action.get("action")))
        left = self.fail.get(action.get("n"), 0)
        if left:
            self.fail[action.get("n")] = left - 1
            raise BackendUnavailable(f"action {action.get('n')} broke")
        return actions.Outcome(f"did {action.get('n')}", [{"container": "v", "n": action.get("n")}])


def make_agent(cat, clock, rec, pid=100, **kw) -> engine.Agent:
    return engine.Agent(
        cat,
        "p_host",
        kw.pop("hostname", "host"),
        lambda: actions.Context(hostname="host"),
        poll_interval=1,
        claim_timeout=kw.pop("claim_timeout", 60),
        clock=clock,
        alive=kw.pop("alive", lambda pid: True),
        pid=pid,
        run_action=rec,
        **kw,
    )


def tick(agent: engine.Agent) -> None:
    agent.poll_once()
    agent.wait_runs(10)


# -- triggers --------------------------------------------------------------------------------


def local(*args) -> int:
    return int(dt.datetime(*args).timestamp())


def test_interval_first_run_one_interval_after_scheduling_then_each_interval():
    trig = triggers.parse_schedule({"schedule_interval": "10 minutes"})
    assert trig.due(T0, None, T0) == T0 + 600
    assert trig.due(T0, T0 + 600, T0 + 601) == T0 + 1200
    # missed slots while no agent ran: one run, the latest slot reached
    assert trig.due(T0, T0 + 600, T0 + 3700) == T0 + 3600


def test_interval_with_start_date_runs_on_start_plus_k_intervals_until_end():
    start = local(2030, 1, 1, 2, 0, 0)
    sched = {
        "schedule_interval": "1 days",
        "schedule_start_date": "2030-01-01T02:00:00",
        "schedule_end_date": "2030-01-03T01:00:00",
    }
    trig = triggers.parse_schedule(sched)
    assert trig.due(T0, None, start - 5000) == start
    assert trig.due(T0, start, start + 10) == start + 86400
    assert trig.due(T0, start + 86400, start + 86401) is None  # next slot past the end


def test_continuous_is_every_second_and_bad_intervals_are_refused():
    assert triggers.parse_interval("continuous") == 1
    assert triggers.parse_interval("2 weeks") == 2 * 604800
    assert triggers.parse_interval("1 hour") == 3600
    for bad in ("0 seconds", "5 fortnights", "soon"):
        with pytest.raises(InvalidArgument):
            triggers.parse_interval(bad)


def test_date_runs_once_and_no_schedule_runs_at_once():
    trig = triggers.parse_schedule({"schedule_date": "2030-01-01T02:00:00"})
    assert trig.one_shot and trig.due(T0, None, T0) == local(2030, 1, 1, 2, 0, 0)
    assert trig.due(T0, local(2030, 1, 1, 2, 0, 0), T0) is None
    now = triggers.parse_schedule({})
    assert now.kind == "now" and now.due(T0, None, T0) == T0 and now.due(T0, T0, T0) is None


def test_cron_fields_default_as_apscheduler():
    # hour given: minute and second default to 0, day and month to *
    trig = triggers.parse_schedule({"schedule_hour": "3"})
    after = local(2030, 5, 6, 12, 0, 0)
    assert trig.cron.next_after(after) == local(2030, 5, 7, 3, 0, 0)
    # day_of_week 0 is Monday (APScheduler), names too; 2030-05-06 is a Monday
    mon = triggers.parse_schedule({"schedule_day_of_week": "mon", "schedule_hour": "1"})
    assert mon.cron.next_after(after) == local(2030, 5, 13, 1, 0, 0)
    assert triggers.parse_schedule({"schedule_day_of_week": "0", "schedule_hour": "1"}).cron == (
        mon.cron
    )
    step = triggers.parse_schedule({"schedule_minute": "*/15"})
    assert step.cron.next_after(local(2030, 5, 6, 12, 7, 30)) == local(2030, 5, 6, 12, 15, 0)
    monthly = triggers.parse_schedule({"schedule_month": "feb", "schedule_day": "29"})
    assert monthly.cron.next_after(after) == local(2032, 2, 29, 0, 0, 0)
    listed = triggers.parse_schedule({"schedule_hour": "1-3,22", "schedule_minute": "30"})
    assert listed.cron.next_after(local(2030, 5, 6, 3, 31, 0)) == local(2030, 5, 6, 22, 30, 0)


def test_cron_missed_slots_coalesce_and_start_date_bounds():
    trig = triggers.parse_schedule({"schedule_minute": "*"})
    assert trig.due(T0, T0 - 600, T0) == T0  # ten missed minutes: one run now
    later = triggers.parse_schedule(
        {"schedule_minute": "0", "schedule_start_date": "2031-01-01T00:30:00"}
    )
    assert later.due(T0, None, T0) == local(2031, 1, 1, 1, 0, 0)


def test_bad_cron_fields_are_refused():
    for field, text in (("hour", "25"), ("minute", "5-1"), ("day_of_week", "funday")):
        with pytest.raises(InvalidArgument):
            triggers.parse_cron_field(field, text)


# -- schedules through the engine ---------------------------------------------------------


def test_new_job_without_schedule_runs_once_and_completes():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", n_actions=2)
    agent = make_agent(cat, clock, rec)
    tick(agent)
    sched = cat.schedule("j")
    assert rec.calls == [(0, "fake"), (1, "fake")]
    assert sched["status"] == "completed" and sched["result"] == "success"
    assert sched["time_started"] == T0 and sched["time_ended"] == T0
    assert sched["current_pid"] == 100 and sched["claim"]["run"] == 1
    assert [b["n"] for b in cat.backups] == [0, 1]
    clock.now += 1000
    tick(agent)
    assert len(rec.calls) == 2


def test_interval_job_runs_each_interval_and_reports_scheduled():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "5 seconds"})
    agent = make_agent(cat, clock, rec)
    tick(agent)
    assert rec.calls == [] and cat.schedule("j")["status"] == "scheduled"
    for step in range(1, 4):
        clock.now = T0 + 5 * step
        tick(agent)
        assert len(rec.calls) == step
        assert cat.schedule("j")["status"] == "scheduled"
        assert cat.schedule("j")["claim"]["due"] == T0 + 5 * step
    clock.now += 1  # not due yet
    tick(agent)
    assert len(rec.calls) == 3


def test_end_date_completes_an_interval_job():
    cat, clock, rec = FakeCatalog(), Clock(local(2030, 1, 1, 0, 0, 0)), Recorder()
    cat.add(
        "j",
        {
            "schedule_interval": "1 hours",
            "schedule_start_date": "2030-01-01T00:00:00",
            "schedule_end_date": "2030-01-01T01:30:00",
        },
    )
    agent = make_agent(cat, clock, rec)
    for hour in range(4):
        clock.now = local(2030, 1, 1, hour, 0, 0)
        tick(agent)
    assert len(rec.calls) == 2 and cat.schedule("j")["status"] == "completed"


def test_date_in_the_future_waits_then_runs_once():
    cat, clock, rec = FakeCatalog(), Clock(local(2030, 1, 1, 0, 0, 0)), Recorder()
    cat.add("j", {"schedule_date": "2030-01-01T00:10:00"})
    agent = make_agent(cat, clock, rec)
    tick(agent)
    assert rec.calls == [] and cat.schedule("j")["status"] == "scheduled"
    clock.now = local(2030, 1, 1, 0, 10, 0)
    tick(agent)
    clock.now += 3600
    tick(agent)
    assert len(rec.calls) == 1 and cat.schedule("j")["status"] == "completed"


def test_unparsable_schedule_stops_the_job_with_a_failure():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_hour": "99"})
    tick(make_agent(cat, clock, rec))
    assert rec.calls == []
    assert cat.schedule("j")["status"] == "stop" and cat.schedule("j")["result"] == "fail"


@pytest.mark.parametrize(
    "schedule",
    [
        {"schedule_date": "0001-01-01T00:00:00"},
        {"schedule_start_date": "0001-01-01T00:00:00", "schedule_interval": "1 hours"},
    ],
    ids=["date", "start-date"],
)
def test_a_year_one_schedule_fails_its_job_and_the_next_job_still_runs(schedule):
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("bad", schedule)
    cat.add("good", {"schedule_interval": "5 seconds"})
    agent = make_agent(cat, clock, rec)
    tick(agent)
    assert cat.schedule("bad")["status"] == "stop" and cat.schedule("bad")["result"] == "fail"
    clock.now += 5
    tick(agent)
    assert len(rec.calls) == 1 and cat.schedule("good")["status"] == "scheduled"


def test_a_job_that_breaks_the_agent_is_passed_over_and_the_others_run(monkeypatch):
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("bad", {"schedule_interval": "5 seconds"})
    cat.add("good", {"schedule_interval": "5 seconds"})
    agent = make_agent(cat, clock, rec)
    real = agent._look

    def look(catalog, job_id, job):
        if job_id == "bad":
            raise OverflowError("a bug a job found")
        return real(catalog, job_id, job)

    monkeypatch.setattr(agent, "_look", look)
    tick(agent)
    clock.now += 5
    tick(agent)
    assert len(rec.calls) == 1 and cat.schedule("good")["status"] == "scheduled"


# -- events --------------------------------------------------------------------------------


def test_stop_then_start_event():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "5 seconds"})
    agent = make_agent(cat, clock, rec)
    tick(agent)
    cat.event("j", "stop")
    tick(agent)
    assert cat.schedule("j")["status"] == "stop" and cat.schedule("j")["event"] == ""
    clock.now += 60
    tick(agent)
    assert rec.calls == []
    cat.event("j", "start")
    tick(agent)  # rescheduled from now: first run one interval later
    assert cat.schedule("j")["status"] == "scheduled" and rec.calls == []
    clock.now += 5
    tick(agent)
    assert len(rec.calls) == 1


def test_start_event_reruns_a_completed_one_shot_job():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j")
    agent = make_agent(cat, clock, rec)
    tick(agent)
    cat.event("j", "start")
    tick(agent)
    assert len(rec.calls) == 2 and cat.schedule("j")["claim"]["run"] == 2
    assert cat.schedule("j")["status"] == "completed"


def test_abort_during_a_run_stops_it_between_actions():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", n_actions=3)
    rec.gate = threading.Event()
    agent = make_agent(cat, clock, rec)
    agent.poll_once()  # claimed; the first action waits at the gate
    assert cat.schedule("j")["status"] == "running"
    cat.event("j", "abort")
    agent.poll_once()  # the loop passes the abort to the run
    rec.gate.set()
    agent.wait_runs(10)
    sched = cat.schedule("j")
    assert len(rec.calls) == 1
    assert sched["result"] == "aborted" and sched["status"] == "stop" and sched["event"] == ""


def test_stop_during_a_run_lets_it_finish_then_stops():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "continuous"}, n_actions=2)
    rec.gate = threading.Event()
    agent = make_agent(cat, clock, rec)
    agent.poll_once()
    clock.now += 1
    agent.poll_once()
    cat.event("j", "stop")
    agent.poll_once()
    rec.gate.set()
    agent.wait_runs(10)
    sched = cat.schedule("j")
    assert len(rec.calls) == 2 and sched["result"] == "success" and sched["status"] == "stop"
    clock.now += 10
    tick(agent)
    assert len(rec.calls) == 2


def test_remove_event():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "5 seconds"})
    cat.event("j", "remove")
    agent = make_agent(cat, clock, rec)
    tick(agent)
    clock.now += 100
    tick(agent)
    assert rec.calls == [] and cat.schedule("j")["status"] == "removed"


# -- actions: order, mandatory, retries ----------------------------------------------------------


def job_with(*specs: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_id": "j",
        "job_actions": [
            {"freezer_action": {"action": "fake", "n": i}, **spec} for i, spec in enumerate(specs)
        ],
    }


def test_retries_are_attempts_with_the_interval_between():
    rec = Recorder()
    rec.fail = {0: 2}
    ctx = actions.Context(hostname="h")
    waits = []
    ctx.cancel.wait = lambda t: waits.append(t) or False  # type: ignore[method-assign]
    recorded: list = []
    result, _ = runner.run_job(
        job_with({"max_retries": 3, "max_retries_interval": 7}), ctx, recorded.append, rec
    )
    assert result == "success" and len(rec.calls) == 3 and waits == [7, 7]
    rec2 = Recorder()
    rec2.fail = {0: 5}
    result, message = runner.run_job(
        job_with({"max_retries": 2, "max_retries_interval": 0}), ctx, recorded.append, rec2
    )
    assert result == "fail" and len(rec2.calls) == 2 and "action 0 broke" in message


def test_after_a_failure_only_mandatory_actions_run():
    rec = Recorder()
    rec.fail = {0: 1}
    ctx = actions.Context(hostname="h")
    result, _ = runner.run_job(job_with({}, {}, {"mandatory": True}, {}), ctx, lambda m: "id", rec)
    assert result == "fail" and [c[0] for c in rec.calls] == [0, 2]


def test_a_failed_recording_fails_the_action_without_repeating_it():
    rec = Recorder()

    def record(meta):
        raise BackendUnavailable("catalog down")

    result, message = runner.run_job(
        job_with({"max_retries": 3}), actions.Context(hostname="h"), record, rec
    )
    assert result == "fail" and len(rec.calls) == 1 and "not recorded" in message


def test_unknown_action_and_missing_freezer_agent_say_so(tmp_path):
    ctx = actions.Context(hostname="h", freezer_agent=str(tmp_path / "no-such-freezer-agent"))
    result, message = runner.run_job(
        {"job_actions": [{"freezer_action": {"action": "teleport"}}]}, ctx, lambda m: ""
    )
    assert result == "fail" and "unknown action 'teleport'" in message
    result, message = runner.run_job(
        {"job_actions": [{"freezer_action": {"action": "backup", "mode": "fs"}}]}, ctx, lambda m: ""
    )
    assert result == "fail" and "is not on PATH" in message


def test_freezer_actions_go_to_freezer_agent_with_their_fields(tmp_path):
    script = tmp_path / "freezer-agent"
    out = tmp_path / "argv"
    script.write_text(f'#!/bin/sh\necho "$@" > {out}\n')
    script.chmod(0o755)
    ctx = actions.Context(hostname="h", freezer_agent=str(script))
    action = {"action": "backup", "mode": "fs", "path_to_backup": "/srv", "no_incremental": True}
    assert actions.run(ctx, action).message == "freezer-agent backup done"
    assert out.read_text().split() == [
        "--action",
        "backup",
        "--mode",
        "fs",
        "--no-incremental",
        "--path-to-backup",
        "/srv",
    ]


class FakeVolumes:
    def __init__(self):
        self.snapshots = 0

    def create_snapshot(self, volume):
        from stowkit.corelib.volume import Snapshot

        self.snapshots += 1
        when = dt.datetime(2030, 1, 1, 0, 0, self.snapshots, tzinfo=dt.UTC)
        name = f"{volume}@2030-01-01T00:00:0{self.snapshots}"
        return Snapshot(name, volume, when, f"/r/{name}")

    def volume_path(self, volume):
        return f"/r/{volume}"


def test_snapshot_action_makes_the_library_call_and_a_backup_document():
    vols = FakeVolumes()
    ctx = actions.Context(hostname="web-1", volumes=lambda: vols)
    outcome = actions.run(ctx, {"action": "stowkit-volume-snapshot", "volume": "data"})
    (meta,) = outcome.backups
    assert meta["container"] == "data" and meta["hostname"] == "web-1"
    assert meta["backup_name"] == "data@2030-01-01T00:00:01"
    assert meta["time_stamp"] == int(dt.datetime(2030, 1, 1, 0, 0, 1, tzinfo=dt.UTC).timestamp())
    assert meta["curr_backup_level"] == 0
    with pytest.raises(InvalidArgument, match="freezer_action.volume"):
        actions.run(ctx, {"action": "stowkit-volume-snapshot"})


# -- at most once ----------------------------------------------------------------------------


def test_two_agents_racing_on_one_version_run_the_job_once():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j")
    a = make_agent(cat, clock, rec, pid=100)
    b = make_agent(cat, clock, rec, pid=200)

    # b decides on the same version as a, and a's claim lands first
    def a_first():
        a.poll_once()

    cat.before_write = a_first
    b.poll_once()
    a.wait_runs(10)
    b.wait_runs(10)
    tick(b)
    tick(a)
    assert len(rec.calls) == 1 and cat.schedule("j")["claim"]["run"] == 1


def test_agents_sharing_a_client_id_share_the_slots_of_an_interval_job():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "10 seconds"})
    agents = [make_agent(cat, clock, rec, pid=p) for p in (100, 200, 300)]
    for second in range(0, 61):
        clock.now = T0 + second
        for agent in agents:
            tick(agent)
    assert len(rec.calls) == 6
    assert cat.schedule("j")["claim"]["run"] == 6


def test_other_agent_running_is_left_alone_while_its_heartbeat_is_fresh():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j", {"schedule_interval": "5 seconds"})
    cat.schedule("j").update(
        status="running",
        claim={"run": 4, "due": T0, "since": T0 - 20, "owner": "other 7 x", "heartbeat": T0},
    )
    agent = make_agent(cat, clock, rec, claim_timeout=60)
    clock.now = T0 + 30
    tick(agent)
    assert rec.calls == [] and cat.schedule("j")["status"] == "running"
    clock.now = T0 + 61  # no heartbeat for longer than claim_timeout: lost
    tick(agent)
    sched = cat.schedule("j")
    assert sched["result"] == "fail" and sched["status"] == "scheduled"
    assert sched["claim"]["run"] == 4 and rec.calls == []
    clock.now = T0 + 65  # the next slot after the lost one runs, once
    tick(agent)
    assert len(rec.calls) == 1 and cat.schedule("j")["claim"]["run"] == 5


def test_killed_agent_restarted_runs_nothing_twice():
    """The claim state a SIGKILLed agent leaves: its run is marked lost, never rerun."""
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("once")
    cat.add("every", {"schedule_interval": "10 seconds"})
    rec.gate = threading.Event()
    first = make_agent(cat, clock, rec, pid=100)
    first.poll_once()  # "once" claimed, "every" scheduled
    clock.now = T0 + 10
    first.poll_once()  # both claimed, both hang in their first action: then "killed"
    assert {cat.schedule(j)["status"] for j in ("once", "every")} == {"running"}
    killed_runs = {j: cat.schedule(j)["claim"]["run"] for j in ("once", "every")}
    first.run_action = lambda ctx, a: pytest.fail("a dead agent runs nothing")

    # The restarted agent: same host, new pid; pid 100 is gone.
    second = make_agent(cat, clock, Recorder(), pid=101, alive=lambda pid: pid != 100)
    rec2 = second.run_action
    tick(second)
    for job_id in ("once", "every"):
        sched = cat.schedule(job_id)
        assert sched["result"] == "fail" and sched["claim"]["run"] == killed_runs[job_id]
    assert cat.schedule("once")["status"] == "completed"
    assert cat.schedule("every")["status"] == "scheduled"
    assert rec2.calls == []
    clock.now = T0 + 15
    tick(second)
    assert rec2.calls == []
    clock.now = T0 + 20  # the next slot: run 2, never slot T0+10 again
    tick(second)
    assert rec2.calls == [(0, "fake")]
    assert cat.schedule("every")["claim"] == {
        **cat.schedule("every")["claim"],
        "run": 2,
        "due": T0 + 20,
    }
    rec.gate.set()  # the "dead" agent's threads end: the claim is not theirs any more
    first.wait_runs(10)
    assert cat.schedule("every")["claim"]["run"] == 2
    assert cat.schedule("once")["status"] == "completed"


def test_restart_with_the_same_pid_is_told_apart_by_the_token():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j")
    cat.schedule("j").update(
        status="running",
        claim={"run": 1, "due": T0, "since": T0, "owner": "host 100 oldtoken", "heartbeat": T0},
    )
    tick(make_agent(cat, clock, rec, pid=100))
    assert rec.calls == [] and cat.schedule("j")["result"] == "fail"


def test_a_run_declared_lost_does_not_overwrite_the_next_claim():
    cat, clock, rec = FakeCatalog(), Clock(), Recorder()
    cat.add("j")
    agent = make_agent(cat, clock, rec)
    rec.gate = threading.Event()
    agent.poll_once()
    cat.schedule("j")["claim"]["owner"] = "elsewhere 1 t"  # another agent took over meanwhile
    before = copy.deepcopy(cat.schedule("j"))
    rec.gate.set()
    agent.wait_runs(10)
    assert cat.schedule("j") == before


def test_decide_is_pure_and_claims_carry_the_slot():
    job = {
        "job_schedule": {
            "schedule_interval": "1 minutes",
            "status": "scheduled",
            "claim": {"run": 3, "due": T0, "since": T0 - 180},
        }
    }
    step = claims.decide(job, T0 + 60, "me 1 t", 1, lambda o, h: False)
    assert step.run and step.patch["claim"] == {
        "run": 4,
        "due": T0 + 60,
        "since": T0 - 180,
        "owner": "me 1 t",
        "heartbeat": T0 + 60,
    }
    assert job["job_schedule"]["claim"]["run"] == 3
