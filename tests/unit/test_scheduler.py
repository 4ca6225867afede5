"""The scheduler: when jobs are due, honest results, one job per volume, the schedule file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from stowkit.corelib.errors import InvalidArgument, InvalidName, Locked, NotFound
from stowkit.corelib.schedule.csvfile import parse_buttervolume_csv
from stowkit.corelib.schedule.filestore import ScheduleStore
from stowkit.corelib.schedule.jobs import Job, job_rows
from stowkit.corelib.schedule.runner import Scheduler
from stowkit.corelib.volumejobs import parse_action
from tests.fakes.volumes import FakeDriver


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    clock = Clock()
    driver = FakeDriver()
    for name in ("v1", "v2", "v3"):
        driver.create_volume(name)
    driver.calls.clear()
    store = ScheduleStore(str(tmp_path / "schedule.json"))
    sched = Scheduler(driver, store, max_workers=4, clock=clock)
    yield clock, driver, store, sched
    sched.stop()


def jobs_by_key(store):
    return {(j.volume, j.action): j for j in store.load().jobs}


# -- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action,parsed",
    [
        ("snapshot", ("snapshot", [])),
        ("replicate:backup1", ("replicate", ["backup1"])),
        ("replicate:root@10.0.0.2:2222", ("replicate", ["root@10.0.0.2:2222"])),
        ("purge:4h:1d:2w:2y", ("purge", ["4h:1d:2w:2y"])),
        ("synchronize:h1,h2", ("synchronize", ["h1", "h2"])),
    ],
)
def test_parse_action(action, parsed):
    assert parse_action(action) == parsed


@pytest.mark.parametrize(
    "action",
    [
        "",
        "snapshots",
        "snapshot:x",
        "replicate:",
        "replicate:h;touch /tmp/p",
        "replicate:-oProxyCommand=x",
        "replicate:a b",
        "purge:4x",
        "purge:",
        "purge:4h;rm",
        "synchronize:h1,,h2",
        "synchronize:$(id)",
    ],
)
def test_parse_action_refuses(action):
    with pytest.raises(InvalidArgument):
        parse_action(action)


@pytest.mark.parametrize("minutes", ["0", "-1", "abc", "nan", "inf", None])
def test_add_refuses_bad_intervals(tmp_path, minutes):
    store = ScheduleStore(str(tmp_path / "s.json"))
    with pytest.raises(InvalidArgument, match="interval"):
        store.add("v1", "snapshot", minutes)
    assert not os.path.exists(store.path)


@pytest.mark.parametrize("name", ["../x", "x;touch /tmp/p", "", "a/b", "x" * 300])
def test_add_refuses_hostile_volume_names(tmp_path, name):
    store = ScheduleStore(str(tmp_path / "s.json"))
    with pytest.raises(InvalidName):
        store.add(name, "snapshot", 1)


BAD_HOSTS = [
    "127.0.0.1:99999",
    "host:0",
    "h" * 300,
    "u" * 40 + "@host",
    "-oProxyCommand=id",
    "a;b",
    "host:",
    "user@",
    "[::1",
]


@pytest.mark.parametrize("host", BAD_HOSTS)
@pytest.mark.parametrize("kind", ["replicate:{}", "synchronize:ok,{}"])
def test_add_refuses_hosts_send_and_sync_refuse(tmp_path, kind, host):
    from stowkit.plugins.btrfs import transport

    with pytest.raises(InvalidArgument):  # what a run would meet
        transport.parse_peer(host, "root", 22)
    store = ScheduleStore(str(tmp_path / "s.json"))
    with pytest.raises(InvalidArgument, match="invalid host"):
        store.add("v1", kind.format(host), 1)
    assert not os.path.exists(store.path)


@pytest.mark.parametrize(
    "host", ["h1", "root@10.0.0.1:2222", "[::1]:22", "backup.example.org", "_svc@h", "h:65535"]
)
def test_add_takes_hosts_send_and_sync_take(tmp_path, host):
    from stowkit.plugins.btrfs import transport

    transport.parse_peer(host, "root", 22)
    store = ScheduleStore(str(tmp_path / "s.json"))
    assert store.add("v1", f"replicate:{host}", 1).action == f"replicate:{host}"


def test_import_refuses_hosts_send_and_sync_refuse(tmp_path):
    store = ScheduleStore(str(tmp_path / "s.json"))
    with pytest.raises(InvalidArgument, match="line 2: invalid host"):
        store.import_csv("v1,snapshot,60\nv1,replicate:127.0.0.1:99999,60\n")
    assert not os.path.exists(store.path)


def test_cli_add_refuses_an_out_of_range_port(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")
    proc = stowkit(conf, "schedule", "add", "v1", "replicate:127.0.0.1:99999", "1")
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "port out of range" in proc.stderr


# -- when jobs run ---------------------------------------------------------------------------


def test_a_job_runs_when_due_not_on_every_tick(env):
    clock, driver, store, sched = env
    store.add("v1", "snapshot", 1, now=clock.now)  # every 60 s, due at once
    ran = []
    for second in range(0, 181, 5):  # ticks every 5 s for 3 minutes
        clock.now = 1_000_000.0 + second
        before = len(driver.calls)
        sched.run_due()
        if len(driver.calls) > before:
            ran.append(second)
    assert ran == [0, 60, 120, 180]
    job = jobs_by_key(store)[("v1", "snapshot")]
    assert job.runs == 4 and job.last_result == "ok" and job.last_message.startswith("v1@")
    assert job.next_run == clock.now + 60


def test_each_job_at_its_own_rate(env):
    clock, driver, store, sched = env
    t0 = clock.now
    store.add("v1", "snapshot", 0.5, now=t0)
    store.add("v2", "snapshot", 1.5, now=t0)
    store.add("v3", "purge:1h:1d", 1, now=t0)
    for second in range(0, 180, 1):
        clock.now = t0 + second
        sched.run_due()
    runs = {k: j.runs for k, j in jobs_by_key(store).items()}
    assert runs == {("v1", "snapshot"): 6, ("v2", "snapshot"): 2, ("v3", "purge:1h:1d"): 3}


def test_a_failing_replication_is_recorded_as_failed(env):
    clock, driver, store, sched = env
    driver.unreachable.add("nowhere")
    store.add("v1", "replicate:nowhere", 1, now=clock.now)
    store.add("v2", "replicate:backup", 1, now=clock.now)
    sched.run_due()
    jobs = jobs_by_key(store)
    bad = jobs[("v1", "replicate:nowhere")]
    assert bad.last_result == "failed"
    assert "connection refused" in bad.last_message
    assert bad.failures == 1 and bad.runs == 1
    good = jobs[("v2", "replicate:backup")]
    assert good.last_result == "ok" and "sent to backup" in good.last_message
    # a failed job is not retried on every tick: it waits for its interval too
    clock.now += 30
    sched.run_due()
    assert jobs_by_key(store)[("v1", "replicate:nowhere")].runs == 1


def test_a_sync_with_a_failing_peer_is_failed(env):
    clock, driver, store, sched = env
    driver.unreachable.add("h2")
    store.add("v1", "synchronize:h1,h2", 1, now=clock.now)
    sched.run_due()
    job = jobs_by_key(store)[("v1", "synchronize:h1,h2")]
    assert job.last_result == "failed" and "h2: unreachable" in job.last_message
    assert ("sync", "v1", ("h1", "h2")) in driver.calls


def test_a_missing_volume_is_a_failure_with_the_reason(env):
    clock, driver, store, sched = env
    store.add("ghost", "snapshot", 1, now=clock.now)
    sched.run_due()
    job = jobs_by_key(store)[("ghost", "snapshot")]
    assert job.last_result == "failed" and "not found" in job.last_message


def test_a_crashing_driver_is_a_failure_and_the_others_still_run(env):
    clock, driver, store, sched = env

    def explode(volume, pattern, dry_run=False, now=None):
        raise RuntimeError("bug")

    driver.purge = explode
    store.add("v1", "purge:1h:1d", 1, now=clock.now)
    store.add("v2", "snapshot", 1, now=clock.now)
    sched.run_due()
    jobs = jobs_by_key(store)
    assert jobs[("v1", "purge:1h:1d")].last_result == "failed"
    assert "RuntimeError: bug" in jobs[("v1", "purge:1h:1d")].last_message
    assert jobs[("v2", "snapshot")].last_result == "ok"


def test_jobs_call_the_driver_methods(env):
    clock, driver, store, sched = env
    store.add("v1", "replicate:h1", 1, now=clock.now)
    store.add("v2", "purge:4h:1d", 1, now=clock.now)
    sched.run_due()
    assert ("purge", "v2", "4h:1d", False) in driver.calls
    assert any(c[0] == "send" and c[2] == "h1" for c in driver.calls)


def test_pause_one_job_and_resume(env):
    clock, driver, store, sched = env
    store.add("v1", "snapshot", 1, now=clock.now)
    store.add("v2", "snapshot", 1, now=clock.now)
    store.set_active(False, "v1", "snapshot")
    sched.run_due()
    assert [c[1] for c in driver.calls] == ["v2"]
    store.set_active(True, "v1", "snapshot")
    sched.run_due()
    assert [c[1] for c in driver.calls] == ["v2", "v1"]


def test_pause_everything_keeps_single_pauses(env):
    clock, driver, store, sched = env
    store.add("v1", "snapshot", 1, now=clock.now)
    store.add("v2", "snapshot", 1, now=clock.now, active=False)
    store.set_active(False)
    sched.run_due()
    assert driver.calls == []
    store.set_active(True)
    sched.run_due()
    assert [c[1] for c in driver.calls] == ["v1"]  # v2 was paused on its own


def test_pause_unknown_job_is_not_found(env):
    _, _, store, _ = env
    with pytest.raises(NotFound):
        store.set_active(False, "v1", "snapshot")
    with pytest.raises(NotFound):
        store.remove("v1", "snapshot")


# -- one job per volume ---------------------------------------------------------------------


def test_one_job_per_volume_per_pass(env):
    clock, driver, store, sched = env
    store.add("v1", "snapshot", 1, now=clock.now)
    store.add("v1", "purge:1h:1d", 1, now=clock.now)
    sched.run_due()
    assert sum(j.runs for j in store.load().jobs) == 1
    sched.run_due()  # the other one's turn
    assert all(j.runs == 1 for j in store.load().jobs)


def test_jobs_of_one_volume_never_overlap_but_volumes_run_together(tmp_path):
    store = ScheduleStore(str(tmp_path / "s.json"))
    clock = Clock()
    inflight: dict[str, int] = {}
    overlap = []
    both_running = threading.Barrier(2, timeout=10)
    release = threading.Event()
    mutex = threading.Lock()

    def runner(driver, volume, action):
        with mutex:
            inflight[volume] = inflight.get(volume, 0) + 1
            if inflight[volume] > 1:
                overlap.append(volume)
        try:
            if action == "snapshot":
                both_running.wait()  # v1 and v2 must be in here at the same time
                release.wait(10)
            return "done"
        finally:
            with mutex:
                inflight[volume] -= 1

    sched = Scheduler(FakeDriver(), store, max_workers=4, runner=runner, clock=clock)
    for v in ("v1", "v2"):
        store.add(v, "snapshot", 1, now=clock.now)
        store.add(v, "purge:1h:1d", 1, now=clock.now)
    first = sched.run_due(wait=False)
    # while the snapshots block, further passes must not start the volumes' purges
    for _ in range(5):
        assert sched.run_due(wait=False) == []
    release.set()
    for f in first:
        f.result(timeout=10)
    sched.run_due()
    sched.stop()
    assert overlap == []
    assert all(j.runs == 1 for j in store.load().jobs)


def test_a_volume_whose_lock_another_job_holds_is_skipped_not_failed(env, monkeypatch):
    clock, driver, store, sched = env
    store.add("v1", "snapshot", 1, now=clock.now)
    asked = []

    def busy(name, *, wait=True):  # another process or command holds the driver's lock
        asked.append((name, wait))
        raise Locked(f"volume {name} is busy with another job")

    with monkeypatch.context() as patch:
        patch.setattr(driver, "volume_lock", busy)
        sched.run_due()
    assert asked == [("v1", False)]  # never waits: the next tick tries again
    job = jobs_by_key(store)[("v1", "snapshot")]
    assert job.runs == 0 and job.last_result is None
    sched.run_due()
    assert jobs_by_key(store)[("v1", "snapshot")].last_result == "ok"


def test_a_locked_error_from_the_job_itself_is_a_failed_run_not_a_skip(env):
    clock, driver, store, _ = env

    def runner(driver, volume, action):  # e.g. the peer's receive of the volume is busy
        raise Locked("peer b is receiving v1 already")

    sched = Scheduler(driver, store, runner=runner, clock=clock)
    store.add("v1", "snapshot", 1, now=clock.now)
    sched.run_due()
    sched.stop()
    job = jobs_by_key(store)[("v1", "snapshot")]
    assert (job.runs, job.last_result) == (1, "failed")
    assert job.last_message == "peer b is receiving v1 already"


# -- the schedule file ---------------------------------------------------------------------


def test_the_file_is_json_and_survives_a_reload(tmp_path):
    path = tmp_path / "s.json"
    ScheduleStore(str(path)).add("v1", "replicate:h1", 2.5)
    data = json.loads(path.read_text())
    assert data["jobs"][0]["volume"] == "v1" and data["jobs"][0]["minutes"] == 2.5
    assert ScheduleStore(str(path)).load().find("v1", "replicate:h1").minutes == 2.5


def test_a_failed_change_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "s.json"
    store = ScheduleStore(str(path))
    store.add("v1", "snapshot", 1)
    before = path.read_bytes()

    def broken(schedule):
        schedule.jobs.clear()
        raise InvalidArgument("no")

    with pytest.raises(InvalidArgument):
        store.update(broken)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".schedule-")] == []


def test_adding_again_changes_the_interval(tmp_path):
    store = ScheduleStore(str(tmp_path / "s.json"))
    store.add("v1", "snapshot", 1)
    store.add("v1", "snapshot", 5)
    assert [j.minutes for j in store.load().jobs] == [5.0]


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "s.json")

    def add(n):
        ScheduleStore(path).add(f"v{n}", "snapshot", 1)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ScheduleStore(path).load().jobs) == 20


def test_import_buttervolume_schedule(tmp_path):
    text = (
        "foo,snapshot,60,True\n"
        "foo,replicate:backup1,1440,False\n"
        "bar,purge:4h:1d:2w,120\n"  # older files have no Active column
        "\n"
        "baz,synchronize:h1,h2,30,True\n"
    )
    # buttervolume quotes a field holding a comma; an unquoted one is 5 fields
    with pytest.raises(InvalidArgument, match="line 5"):
        parse_buttervolume_csv(text)
    text = text.replace("synchronize:h1,h2", '"synchronize:h1,h2"')
    store = ScheduleStore(str(tmp_path / "s.json"))
    store.import_csv(text)
    jobs = jobs_by_key(store)
    assert jobs[("foo", "snapshot")].minutes == 60 and jobs[("foo", "snapshot")].active
    assert not jobs[("foo", "replicate:backup1")].active
    assert jobs[("bar", "purge:4h:1d:2w")].active
    assert jobs[("baz", "synchronize:h1,h2")].minutes == 30
    # and it writes back the same format
    assert parse_buttervolume_csv(store.export_csv()) == parse_buttervolume_csv(text)


@pytest.mark.parametrize(
    "line,message",
    [
        ("../x,snapshot,60,True", "invalid volume name"),
        ("v,rm -rf,60,True", "invalid action"),
        ("v,snapshot,soon,True", "invalid interval"),
        ("v,snapshot,60,Maybe", "active must be"),
        ("v,snapshot", "expected volume,action,minutes"),
    ],
)
def test_a_bad_import_line_refuses_the_whole_file(tmp_path, line, message):
    store = ScheduleStore(str(tmp_path / "s.json"))
    store.add("keep", "snapshot", 1)
    with pytest.raises(InvalidArgument, match=f"line 2: .*{message}"):
        store.import_csv(f"ok,snapshot,5,True\n{line}\n")
    assert [j.volume for j in store.load().jobs] == ["keep"]


def test_rows_show_last_and_next_run(tmp_path):
    job = Job(
        "v1", "snapshot", 1, added=0.0, last_run=120.5, last_result="failed", last_message="x"
    )
    row = job_rows([job])[0]
    assert row["last_run"] == "1970-01-01T00:02:00Z"
    assert row["next_run"] == "1970-01-01T00:03:00Z"
    assert row["last_result"] == "failed" and row["state"] == "active"
    assert job_rows([job], paused=True)[0]["state"] == "paused (all)"


# -- the background loop, with the real clock ------------------------------------------------


def test_background_loop_runs_due_jobs_and_stops(tmp_path):
    driver = FakeDriver()
    driver.create_volume("v1")
    store = ScheduleStore(str(tmp_path / "s.json"))
    store.add("v1", "snapshot", 0.005)  # every 0.3 s
    sched = Scheduler(driver, store, tick=0.05)
    sched.start()
    deadline = time.monotonic() + 20
    while store.load().jobs[0].runs < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sched.stop()
    assert store.load().jobs[0].runs >= 3
    runs = store.load().jobs[0].runs
    time.sleep(0.5)
    assert store.load().jobs[0].runs == runs  # stopped means stopped


# -- the CLI ---------------------------------------------------------------------------------


def stowkit(conf, *args):
    return subprocess.run(
        [sys.executable, "-m", "stowkit.cli.app", "--config-file", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_add_list_pause_remove(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")
    assert stowkit(conf, "schedule", "add", "v1", "replicate:h1", "0.5").returncode == 0
    assert stowkit(conf, "schedule", "pause", "v1", "replicate:h1").returncode == 0
    rows = json.loads(stowkit(conf, "schedule", "list", "-f", "json").stdout)
    assert rows == [
        {
            "volume": "v1",
            "action": "replicate:h1",
            "minutes": 0.5,
            "state": "paused",
            "last_run": None,
            "last_result": None,
            "last_message": "",
            "next_run": None,
            "runs": 0,
            "failures": 0,
        }
    ]
    assert stowkit(conf, "schedule", "remove", "v1", "replicate:h1").returncode == 0
    assert json.loads(stowkit(conf, "schedule", "list", "-f", "json").stdout) == []


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["schedule", "add", "../x", "snapshot", "1"], 4, "invalid volume name"),
        (["schedule", "add", "v1", "replicate:a;b", "1"], 3, "invalid host"),
        (["schedule", "add", "v1", "snapshot", "0"], 3, "invalid interval"),
        (["schedule", "remove", "v1", "snapshot"], 5, "no scheduled job"),
        (["schedule", "pause"], 3, "--all"),
        (["schedule", "import", "/nonexistent.csv"], 5, "not found"),
    ],
)
def test_cli_mistakes_are_one_line(tmp_path, args, code, text):
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")
    proc = stowkit(conf, *args)
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr
