"""``volume pull`` for real: two btrfs "hosts", the harness sshd, a real catalog.

Host a and host b are fresh roots on the harness's two btrfs filesystems,
each reaching the other through the harness sshd (as in test_replication).
The catalog is ``stowkit catalog serve --no-auth`` on SQLite; host a's
snapshots are recorded by the agent's own snapshot action (the library call
and the backup document ``stowkit agent`` posts).  Host b then pulls.

The last test is the other half of issue 14: with ``[scheduler] store =
catalog`` a job added by ``stowkit schedule add`` is a catalog job that
``stowkit agent`` runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from stowkit.corelib.agent import actions
from stowkit.corelib.catalogclient import CatalogClient, noauth_headers
from tests.commands import STOWKIT
from tests.fakes.harness import REPO
from tests.fakes.net import free_port
from tests.fakes.processes import stop_group, wait_for

PROJECT = "demo"


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


class Side:
    """One host: its btrfs Host, and a config naming it in the catalog."""

    def __init__(self, host, name: str, url: str, tmp: pathlib.Path, extra: str = "") -> None:
        self.host, self.name = host, name
        lines = [f"[DEFAULT]\nstate_dir = {tmp / name}\n", "[volume_btrfs]"]
        for key, value in host.settings.items():
            lines.append(f"{key} = {','.join(value) if isinstance(value, list) else value}")
        lines.append(extra)
        lines.append(f"[agent]\ncatalog_url = {url}\nproject = {PROJECT}\nhostname = {name}")
        lines.append("poll_interval = 0.5\n")
        self.conf = tmp / f"{name}.conf"
        self.conf.write_text("\n".join(lines))

    def stowkit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*STOWKIT, "--config-file", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            check=False,
        )


@pytest.fixture
def world(peers, tmp_path) -> Iterator[dict[str, Any]]:
    a, b, remote = peers
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    catalog_conf = tmp_path / "catalog.conf"
    catalog_conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'catalog'}\n")
    sync = subprocess.run(
        [*STOWKIT, "--config-file", str(catalog_conf), "catalog", "db-sync"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert sync.returncode == 0, sync.stderr
    procs: list[subprocess.Popen] = []

    def start(conf: pathlib.Path, *argv: str, log: str) -> subprocess.Popen:
        with open(tmp_path / log, "ab") as out:
            proc = subprocess.Popen(
                [*STOWKIT, "--config-file", str(conf), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        procs.append(proc)
        return proc

    server = start(catalog_conf, "catalog", "serve", "--no-auth", "--port", str(port), log="c.log")

    def healthy() -> bool:
        try:
            urllib.request.urlopen(url + "/healthcheck", timeout=2)
            return True
        except OSError:
            return False

    wait_for("the catalog", healthy, proc=server)
    # host-a is reached at the harness sshd, as `volume send` reaches it; host-c nowhere.
    addresses = f"peer_addresses = host-a={remote},host-c={remote}:1"
    side_a = Side(a, "host-a", url, tmp_path)
    side_b = Side(b, "host-b", url, tmp_path, addresses)
    catalog = CatalogClient(url, PROJECT, noauth_headers("tester"))
    try:
        yield {"a": side_a, "b": side_b, "catalog": catalog, "start": start, "tmp": tmp_path}
    finally:
        for proc in reversed(procs):  # the agent before the catalog it polls
            stop_group(proc)


def agent_snapshot(side: Side, catalog: CatalogClient, volume: str) -> str:
    """What ``stowkit agent`` does for a ``stowkit-volume-snapshot`` action."""
    ctx = actions.Context(hostname=side.name, volumes=lambda: side.host.driver)
    outcome = actions.run(ctx, {"action": "stowkit-volume-snapshot", "volume": volume})
    for meta in outcome.backups:
        catalog.add_backup(meta)
    return outcome.backups[0]["backup_name"]


def test_pull_brings_the_newest_copy_then_an_incremental_one(world):
    a, b, catalog = world["a"], world["b"], world["catalog"]
    vol_a = a.host.path("volumes", "data")
    a.host.driver.create_volume("data")
    (vol_a / "small").write_bytes(b"one" * 1000)
    older = agent_snapshot(a, catalog, "data")
    (vol_a / "big").write_bytes(os.urandom(3 << 20))
    s1 = agent_snapshot(a, catalog, "data")
    assert older < s1

    dry = b.stowkit("volume", "pull", "data", "--dry-run", "-f", "json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["mode"] == "full" and json.loads(dry.stdout)["dry_run"]
    assert not b.host.path("received", s1).exists()

    first = b.stowkit("volume", "pull", "data", "-f", "json")
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    assert (shown["host"], shown["snapshot"], shown["mode"]) == ("host-a", s1, "full")
    assert shown["parent"] is None and shown["bytes_received"] > 3 << 20
    assert tree(b.host.path("volumes", "data")) == tree(a.host.path("snapshots", s1))
    # the pull is recorded for host b
    mine = catalog.find_backups([{"hostname": "host-b"}, {"container": "data"}], limit=100)
    (doc,) = mine
    assert doc["backup_id"] == shown["backup_id"]
    pulled = doc["backup_metadata"]
    assert pulled["action"] == "stowkit-volume-pull" and pulled["backup_name"] == s1
    assert pulled["remote_host"] == "host-a" and pulled["backup_size_compressed"] > 3 << 20

    # a new snapshot on a: the next pull is incremental from s1, which both hold
    (vol_a / "small").write_bytes(b"two")
    (vol_a / "new").write_bytes(b"fresh")
    s2 = agent_snapshot(a, catalog, "data")
    refused = b.stowkit("volume", "pull", "data")
    assert refused.returncode == 6, refused.stderr
    assert "exists here" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    second = b.stowkit("volume", "pull", "data", "--force", "-f", "json")
    assert second.returncode == 0, second.stderr
    shown = json.loads(second.stdout)
    assert (shown["snapshot"], shown["mode"], shown["parent"]) == (s2, "incremental", s1)
    assert 0 < shown["bytes_received"] < 1 << 20  # the diff, not the 3 MiB again
    assert shown["backup"]  # b's previous data was snapshotted before it was replaced
    assert tree(b.host.path("volumes", "data")) == tree(a.host.path("snapshots", s2))
    assert b.host.path("received", s2).is_dir()


def test_missing_copy_and_unreachable_host_are_one_line_each(world):
    a, b, catalog = world["a"], world["b"], world["catalog"]
    missing = b.stowkit("volume", "pull", "nothing")
    assert missing.returncode == 5, missing.stderr
    assert "no copy of volume nothing" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    # a copy recorded on host-c, whose ssh port nothing listens on
    a.host.driver.create_volume("data")
    snap = a.host.driver.create_snapshot("data")
    catalog.add_backup(
        {
            "action": "stowkit-volume-snapshot",
            "container": "data",
            "hostname": "host-c",
            "backup_name": snap.name,
            "time_stamp": int(snap.created.timestamp()),
            "curr_backup_level": 0,
        }
    )
    down = b.stowkit("volume", "pull", "data", "--from", "host-c")
    assert down.returncode == 9, down.stderr
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) == 1
    assert not b.host.path("volumes", "data").exists()


def test_copies_gone_or_unreachable_are_passed_over_for_the_next_newest(world):
    """The catalog's newest record is of a snapshot host a deleted since (a `snapshot purge`
    from the CLI leaves the record), the next one is on host-c, which is down: the pull says
    so for each and brings the newest copy that really exists."""
    a, b, catalog = world["a"], world["b"], world["catalog"]
    a.host.driver.create_volume("data")
    (a.host.path("volumes", "data") / "f").write_bytes(b"kept")
    kept = agent_snapshot(a, catalog, "data")
    elsewhere = a.host.driver.create_snapshot("data")
    catalog.add_backup(
        {
            "action": "stowkit-volume-replicate",
            "container": "data",
            "hostname": "host-c",
            "remote_host": "host-c",
            "backup_name": elsewhere.name,
            "time_stamp": int(elsewhere.created.timestamp()),
            "curr_backup_level": 0,
        }
    )
    gone = agent_snapshot(a, catalog, "data")
    a.host.driver.delete_snapshot(gone)
    result = b.stowkit("volume", "pull", "data", "-f", "json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["host"], shown["snapshot"]) == ("host-a", kept)
    first, second = shown["passed_over"].splitlines()
    assert first.startswith("host-a: ") and f"holds no snapshot {gone}" in first
    assert second.startswith("host-c: ")  # asked once, though it is named twice
    assert tree(b.host.path("volumes", "data")) == tree(a.host.path("snapshots", kept))


def test_snapshot_delete_takes_its_records_with_it(world):
    """On a catalog client host the CLI keeps the catalog true, as the agent's purge does:
    nothing deleted is left for `volume pull` or `freezer backup-list` to offer."""
    a, catalog = world["a"], world["catalog"]
    a.host.driver.create_volume("data")
    first = agent_snapshot(a, catalog, "data")
    second = agent_snapshot(a, catalog, "data")
    third = agent_snapshot(a, catalog, "data")

    def recorded() -> list[str]:
        docs = catalog.find_backups([{"container": "data"}, {"hostname": "host-a"}], limit=100)
        return sorted(d["backup_metadata"]["backup_name"] for d in docs)

    assert recorded() == [first, second, third]
    deleted = a.stowkit("snapshot", "delete", first)
    assert deleted.returncode == 0 and deleted.stderr == "", deleted.stderr
    assert recorded() == [second, third]
    # (purge: tests/unit/test_snapshot_records.py; snapshots this fresh are all kept)
    dry = a.stowkit("snapshot", "purge", "data", "1m:1m", "--dry-run")
    assert dry.returncode == 0 and recorded() == [second, third], dry.stderr


def test_catalog_store_jobs_are_run_by_the_agent(world):
    a, catalog, start = world["a"], world["catalog"], world["start"]
    a.conf.write_text(a.conf.read_text() + "\n[scheduler]\nstore = catalog\n")
    a.host.driver.create_volume("data")
    added = a.stowkit("schedule", "add", "data", "snapshot", "0.05", "-f", "json")  # 3 seconds
    assert added.returncode == 0, added.stderr
    (job,) = [j for j in catalog.poll_jobs(f"{PROJECT}_host-a")]
    assert job["job_actions"][0]["freezer_action"] == {
        "action": "stowkit-volume-snapshot",
        "volume": "data",
    }
    assert job["job_schedule"]["schedule_interval"] == "3 seconds"
    agent = start(a.conf, "agent", log="agent.log")
    wait_for("a snapshot by the agent", lambda: a.host.driver.list_snapshots("data"), proc=agent)

    def listed() -> dict[str, Any] | None:
        out = a.stowkit("schedule", "list", "-f", "json")
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        return rows[0] if rows and rows[0]["last_result"] == "ok" else None

    row = wait_for("the run's result in schedule list", listed, proc=agent)
    assert row["runs"] >= 1 and row["state"] == "active"
    paused = a.stowkit("schedule", "pause", "data", "snapshot")
    assert paused.returncode == 0, paused.stderr
    wait_for(
        "the agent's stop",
        lambda: catalog.get_job(job["job_id"])[0]["job_schedule"].get("status") == "stop",
        proc=agent,
    )
    out = a.stowkit("schedule", "list", "-f", "json")
    assert json.loads(out.stdout)[0]["state"] == "paused"
    removed = a.stowkit("schedule", "remove", "data", "snapshot")
    assert removed.returncode == 0, removed.stderr
    assert catalog.poll_jobs(f"{PROJECT}_host-a") == []
