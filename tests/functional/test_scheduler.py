"""The scheduler inside ``stowkit plugin serve``, on a real btrfs: own rates, honest failures."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.fakes.plugin_process import PluginProcess, delete_tree


@pytest.fixture
def plugin(service, tmp_path):
    btrfs = service("btrfs")
    proc = PluginProcess(btrfs["mounts"][0], tmp_path, "[scheduler]\ntick = 0.1\n")
    proc.start()
    yield proc
    code = proc.stop()
    delete_tree(proc.root)
    assert code == 0, proc.log.read_text()


def jobs(plugin: PluginProcess) -> dict[tuple[str, str], dict]:
    proc = plugin.stowkit("schedule", "list", "-f", "json")
    assert proc.returncode == 0, proc.stderr
    return {(r["volume"], r["action"]): r for r in json.loads(proc.stdout)}


def wait_for(plugin: PluginProcess, predicate, what: str, limit: float = 120.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rows = jobs(plugin)
        if predicate(rows):
            return rows
        time.sleep(0.3)
    pytest.fail(f"{what} never happened; schedule: {jobs(plugin)}\n{plugin.log.read_text()}")


def test_jobs_run_at_their_own_rates_and_failures_are_recorded(plugin):
    fast, slow = f"fast-{uuid.uuid4().hex[:4]}", f"slow-{uuid.uuid4().hex[:4]}"
    for vol in (fast, slow):
        assert plugin.call("/VolumeDriver.Create", {"Name": vol}) == {"Err": ""}
    # nothing listens on port 1: the replication must fail, and say why
    unreachable = "root@127.0.0.1:1"
    for vol, action, minutes in [
        (fast, "snapshot", "0.02"),  # every 1.2 s
        (slow, "snapshot", "0.1"),  # every 6 s
        (slow, f"replicate:{unreachable}", "0.05"),
        (fast, "purge:1h:1d", "0.05"),
    ]:
        added = plugin.stowkit("schedule", "add", vol, action, minutes)
        assert added.returncode == 0, added.stderr

    rows = wait_for(
        plugin, lambda r: r[(slow, "snapshot")]["runs"] >= 3, "three runs of the slow job"
    )
    fast_runs = rows[(fast, "snapshot")]["runs"]
    slow_runs = rows[(slow, "snapshot")]["runs"]
    # 1.2 s against 6 s: the fast job ran about five times as often; a scheduler that
    # ran every job on every tick would show equal counts.
    assert fast_runs >= 2 * slow_runs, rows
    for key in [(fast, "snapshot"), (slow, "snapshot"), (fast, "purge:1h:1d")]:
        assert rows[key]["last_result"] == "ok", rows[key]
    # next run = last run + interval, shown in the listing
    row = rows[(slow, "snapshot")]
    assert row["next_run"] > row["last_run"]

    failed = rows[(slow, f"replicate:{unreachable}")]
    assert failed["last_result"] == "failed", failed
    assert failed["failures"] == failed["runs"] >= 1
    assert "127.0.0.1" in failed["last_message"], failed  # says which peer, and why

    # the snapshots really exist, named after the volume
    snaps = plugin.call("/VolumeDriver.Snapshot.List", {"Name": slow})["Snapshots"]
    assert len(snaps) >= slow_runs and all(s.startswith(f"{slow}@") for s in snaps)


def test_pause_and_resume_one_job(plugin):
    vol = f"pz-{uuid.uuid4().hex[:4]}"
    assert plugin.call("/VolumeDriver.Create", {"Name": vol}) == {"Err": ""}
    assert plugin.stowkit("schedule", "add", vol, "snapshot", "0.01").returncode == 0
    wait_for(plugin, lambda r: r[(vol, "snapshot")]["runs"] >= 1, "a first run")
    assert plugin.stowkit("schedule", "pause", vol, "snapshot").returncode == 0
    paused_runs = jobs(plugin)[(vol, "snapshot")]["runs"]
    # while paused, other work goes on: a second job on another volume keeps running
    other = f"po-{uuid.uuid4().hex[:4]}"
    assert plugin.call("/VolumeDriver.Create", {"Name": other}) == {"Err": ""}
    assert plugin.stowkit("schedule", "add", other, "snapshot", "0.01").returncode == 0
    wait_for(plugin, lambda r: r[(other, "snapshot")]["runs"] >= 3, "the other job's runs")
    rows = jobs(plugin)
    # a run already started when the pause landed may finish: at most one more
    assert rows[(vol, "snapshot")]["runs"] <= paused_runs + 1
    assert rows[(vol, "snapshot")]["state"] == "paused"
    assert plugin.stowkit("schedule", "resume", vol, "snapshot").returncode == 0
    wait_for(
        plugin,
        lambda r: r[(vol, "snapshot")]["runs"] >= paused_runs + 2,
        "runs after resume",
    )


def test_a_job_waits_while_another_process_holds_its_volume(plugin):
    """One lock per volume, the driver's: a job neither runs nor fails while it is held."""
    from stowkit.corelib import config, registry

    vol = f"held-{uuid.uuid4().hex[:4]}"
    assert plugin.call("/VolumeDriver.Create", {"Name": vol}) == {"Err": ""}
    conf = config.load_conf([str(plugin.conf)])
    driver = registry.load("volume", conf, "btrfs")
    with driver.volume_lock(vol):
        added = plugin.stowkit("schedule", "add", vol, "snapshot", "0.02")
        assert added.returncode == 0, added.stderr
        time.sleep(2.0)  # many ticks, every one finding the volume busy
        row = jobs(plugin)[(vol, "snapshot")]
        assert row["runs"] == 0 and row["last_result"] is None, row
    wait_for(plugin, lambda r: r[(vol, "snapshot")]["last_result"] == "ok", "the released job")
