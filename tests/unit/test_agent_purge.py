"""The agent's purge removes the catalog records of the snapshots it deleted."""

from __future__ import annotations

from stowkit.corelib.agent import actions
from stowkit.corelib.errors import BackendUnavailable
from stowkit.corelib.volume import PurgeResult

HOST = "host-a"
OLD, NEWER, NEWEST = "data@2026-01-01T00:00:00", "data@2026-01-02T00:00:00", "data@2026-01-03"


class Driver:
    def __init__(self) -> None:
        self.calls = []

    def purge(self, volume, pattern, dry_run=False):
        self.calls.append((volume, pattern, dry_run))
        return PurgeResult(volume, pattern, dry_run, deleted=[OLD, NEWER], kept=[NEWEST])


def doc(backup_id, name, action, host=HOST):
    meta = {"container": "data", "backup_name": name, "hostname": host, "action": action}
    return {"backup_id": backup_id, "backup_metadata": meta}


DOCS = [
    doc("s1", OLD, "stowkit-volume-snapshot"),
    doc("r1", OLD, "stowkit-volume-replicate"),  # the copy on the peer stays
    doc("p2", NEWER, "stowkit-volume-pull"),
    doc("s3", NEWEST, "stowkit-volume-snapshot"),  # kept
    doc("x1", OLD, "stowkit-volume-snapshot", host="host-b"),  # another host's own copy
]


def search(match):
    terms = {k: v for term in match for k, v in term.items()}
    return [d for d in DOCS if all(d["backup_metadata"].get(k) == v for k, v in terms.items())]


def context(forgotten, driver=None):
    return actions.Context(
        hostname=HOST,
        volumes=lambda: driver or Driver(),
        find_backups=search,
        forget_backup=forgotten.append,
    )


def test_a_purge_removes_the_records_of_its_deleted_snapshots_on_this_host():
    forgotten = []
    out = actions.run(context(forgotten), {"action": "stowkit-volume-purge", "volume": "data",
                                           "pattern": "1h:1d"})  # fmt: skip
    assert sorted(forgotten) == ["p2", "s1"]
    assert out.message == "deleted 2 snapshot(s), kept 1, 2 catalog record(s) removed"


def test_a_dry_run_removes_nothing():
    forgotten = []
    action = {"action": "stowkit-volume-purge", "volume": "data", "pattern": "1h:1d",
              "dry_run": True}  # fmt: skip
    assert actions.run(context(forgotten), action).message.startswith("would delete 2")
    assert forgotten == []


def test_a_catalog_that_cannot_remove_records_is_reported_not_a_failed_purge():
    def refuse(backup_id):
        raise BackendUnavailable("catalog down")

    ctx = context([])
    ctx.forget_backup = refuse
    out = actions.run(ctx, {"action": "stowkit-volume-purge", "volume": "data",
                            "pattern": "1h:1d"})  # fmt: skip
    assert "deleted 2 snapshot(s)" in out.message
    assert "could not be removed: catalog down" in out.message
