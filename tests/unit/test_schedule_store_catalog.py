"""``[scheduler] store = catalog``: the schedule commands on this host's catalog jobs.

The store talks to the real catalog app (SQLite, in process, through its WSGI
callable instead of a socket), so the job documents it writes pass the
catalog's own schema, and the agent's engine reads them back as it would.
"""

from __future__ import annotations

import pytest

from stowkit.cli.app import main
from stowkit.corelib import config, schedule
from stowkit.corelib.agent import engine
from stowkit.corelib.agent import options as agent_options
from stowkit.corelib.errors import InvalidArgument, NotFound
from stowkit.corelib.schedule.catalogstore import CatalogScheduleStore
from stowkit.corelib.schedule.filestore import ScheduleStore
from tests.fakes.catalog import CLIENT, served_catalog


@pytest.fixture()
def catalog(tmp_path):
    with served_catalog(tmp_path) as wsgi:
        yield wsgi


@pytest.fixture()
def store(catalog):
    return CatalogScheduleStore(catalog, CLIENT, "host-a")


def _only_job(catalog):
    (job,) = catalog.client_jobs(CLIENT)
    return job


def test_add_writes_the_job_the_agent_runs(store, catalog):
    job = store.add("data", "replicate:backup-1", 90)
    assert (job.volume, job.action, job.minutes, job.active) == (
        "data",
        "replicate:backup-1",
        90,
        True,
    )
    doc = _only_job(catalog)
    assert doc["client_id"] == CLIENT
    assert doc["job_actions"] == [
        {
            "freezer_action": {
                "action": "stowkit-volume-replicate",
                "volume": "data",
                "host": "backup-1",
            },
            "max_retries": 1,
        }
    ]
    assert doc["job_schedule"]["schedule_interval"] == "90 minutes"
    # the host is registered as the agent registers it
    status, body, _ = catalog._call("GET", f"clients/{CLIENT}")
    assert status == 200 and body["client"]["hostname"] == "host-a"


def test_round_trip_add_list_pause_resume_remove(store, catalog):
    store.add("data", "snapshot", 60)
    store.add("data", "purge:4h:1d", 0.5)  # 30 seconds: the catalog counts seconds
    store.add("logs", "synchronize:h1,h2", 5, active=False)
    rows = {(j.volume, j.action): j for j in store.load().jobs}
    assert set(rows) == {
        ("data", "snapshot"),
        ("data", "purge:4h:1d"),
        ("logs", "synchronize:h1,h2"),
    }
    assert rows["data", "purge:4h:1d"].minutes == 0.5
    assert not rows["logs", "synchronize:h1,h2"].active
    sync_doc = next(j for j in catalog.client_jobs(CLIENT) if "logs" in j["description"])
    assert sync_doc["job_actions"][0]["freezer_action"]["hosts"] == ["h1", "h2"]

    assert store.set_active(False, "data") == 2
    assert [j.active for j in store.load().jobs if j.volume == "data"] == [False, False]
    events = {
        j["job_schedule"].get("event")
        for j in catalog.client_jobs(CLIENT)
        if "data" in j["description"]
    }
    assert events == {"stop"}  # freezer's job-stop, which the agent acts on

    assert store.set_active(True, "data", "snapshot") == 1
    active = {j.action: j.active for j in store.load().jobs if j.volume == "data"}
    assert active == {"snapshot": True, "purge:4h:1d": False}

    # a new interval for an existing job: the same job, no second one
    store.add("data", "snapshot", 15)
    assert len(catalog.client_jobs(CLIENT)) == 3
    assert {j.action: j.minutes for j in store.load().jobs}["snapshot"] == 15

    store.remove("data", "purge:4h:1d")
    assert {(j.volume, j.action) for j in store.load().jobs} == {
        ("data", "snapshot"),
        ("logs", "synchronize:h1,h2"),
    }
    assert store.set_active(True) == 2  # --all: every job of the host
    assert all(j.active for j in store.load().jobs)


def test_the_agent_sees_a_pause_and_a_resume(store, catalog):
    store.add("data", "snapshot", 60)
    agent = engine.Agent(catalog, CLIENT, "host-a", lambda: None, clock=lambda: 1_900_000_000)
    agent.poll_once()  # a new job: scheduled, its first run one interval on
    assert _only_job(catalog)["job_schedule"]["status"] == "scheduled"
    store.set_active(False, "data", "snapshot")
    agent.poll_once()
    assert _only_job(catalog)["job_schedule"]["status"] == "stop"
    assert not store.load().jobs[0].active  # still paused once the agent cleared the event
    store.set_active(True, "data", "snapshot")
    assert store.load().jobs[0].active
    agent.poll_once()
    assert _only_job(catalog)["job_schedule"]["status"] == "scheduled"
    assert store.load().jobs[0].active


def test_last_run_and_result_are_the_agents(store, catalog):
    store.add("data", "snapshot", 60)
    job_id = _only_job(catalog)["job_id"]
    catalog.patch_job(
        job_id,
        {
            "job_schedule": {
                "status": "scheduled",
                "result": "fail",
                "time_started": 1_900_000_000,
                "time_ended": 1_900_000_004,
                "claim": {"run": 3, "message": "no such volume: data"},
            }
        },
        None,
    )
    (job,) = store.load().jobs
    assert (job.last_run, job.last_result, job.last_duration, job.runs) == (
        1_900_000_000,
        "failed",
        4.0,
        3,
    )
    assert job.last_message == "no such volume: data"


def test_other_jobs_of_the_client_are_left_out(store, catalog):
    catalog.create_job(
        {
            "client_id": CLIENT,
            "job_actions": [{"freezer_action": {"action": "backup", "path_to_backup": "/etc"}}],
        }
    )
    store.add("data", "snapshot", 60)
    assert [j.action for j in store.load().jobs] == ["snapshot"]
    assert len(catalog.client_jobs(CLIENT)) == 2


def test_errors(store):
    with pytest.raises(InvalidArgument):
        store.add("data", "backup", 60)
    with pytest.raises(InvalidArgument):
        store.add("data", "snapshot", 0)
    with pytest.raises(InvalidArgument, match="whole seconds"):
        store.add("data", "snapshot", 0.001)
    with pytest.raises(NotFound):
        store.remove("data", "snapshot")
    with pytest.raises(NotFound):
        store.set_active(False, "data", "snapshot")
    with pytest.raises(InvalidArgument):
        store.add("../x", "snapshot", 60)
    assert store.load().jobs == []


def test_import_checks_every_line_first(store):
    with pytest.raises(InvalidArgument, match="line 2"):
        store.import_csv("data,snapshot,60\ndata,bogus,60\n")
    assert store.load().jobs == []
    jobs = store.import_csv("data,snapshot,60,True\nlogs,snapshot,30,False\n")
    assert [(j.volume, j.active) for j in jobs] == [("data", True), ("logs", False)]
    assert store.export_csv() == "data,snapshot,60,True\nlogs,snapshot,30,False\n"


def test_the_option_picks_the_store(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    assert isinstance(schedule.open_store(conf), ScheduleStore)
    assert schedule.open_store(conf).runs_here
    conf.set_override("store", "catalog", schedule.GROUP)
    agent_options.register_opts(conf)
    conf.set_override("hostname", "host-a", "agent")
    conf.set_override("project", "demo", "agent")
    store = schedule.open_store(conf)
    assert isinstance(store, CatalogScheduleStore)
    assert store.client_id == CLIENT and not store.runs_here


def test_the_cli_says_one_line_when_the_catalog_is_unreachable(tmp_path, capsys):
    conf_file = tmp_path / "stowkit.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}\n[scheduler]\nstore = catalog\n"
        "[agent]\ncatalog_url = http://127.0.0.1:9\nhostname = host-a\n"
    )
    code = main(["--config-file", str(conf_file), "schedule", "list"])
    err = capsys.readouterr().err
    assert code == 9, err
    assert "unreachable" in err and "Traceback" not in err
