"""``volume pull``: which copy, which parent, what is refused, what is recorded."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from stowkit.cli.app import StowkitApp, main
from stowkit.corelib import catalogclient, pull
from stowkit.corelib.errors import AlreadyExists, BackendUnavailable, Conflict, NotFound
from stowkit.corelib.volume import RestoreResult, SendResult, Snapshot
from stowkit.plugins.btrfs.replication import shared_parent

T = 1_900_000_000


def doc(host: str, name: str, stamp: int, action: str = "stowkit-volume-snapshot", **kw: Any):
    meta = {
        "action": action,
        "container": name.partition("@")[0],
        "hostname": host,
        "backup_name": name,
        "time_stamp": stamp,
        "curr_backup_level": 0,
        **kw,
    }
    return {"backup_id": f"{host}_{name}", "backup_metadata": meta}


def snap(volume: str, seconds: int) -> str:
    return f"{volume}@{dt.datetime.fromtimestamp(T + seconds, dt.UTC):%Y-%m-%dT%H:%M:%S.%fZ}"


class Catalog:
    def __init__(self, backups):
        self.backups = list(backups)
        self.added: list[dict[str, Any]] = []
        self.searches: list[Any] = []

    def search_backups(self, match):
        self.searches.append(match)
        return list(self.backups)

    def add_backup(self, meta):
        self.added.append(dict(meta))
        return f"pulled-{len(self.added)}"


class Driver:
    """What pull asks of a VolumeDriver, and a record of what it was asked."""

    def __init__(self, volumes=(), mounts=(), parent=None, already=False, sent=4096):
        self.volumes = set(volumes)
        self._mounts = list(mounts)
        self.parent, self.already, self.sent = parent, already, sent
        self.calls: list[tuple] = []

    def volume_path(self, name):
        if name not in self.volumes:
            raise NotFound(f"no such volume: {name}")
        return f"/r/volumes/{name}"

    def mounts(self, name):
        return self._mounts

    def receive_snapshot(self, name, host, *, compress=None, bwlimit=None, dry_run=False):
        self.calls.append(("receive", name, host, dry_run))
        if self.already:
            return SendResult(name, host, None, 0, already_there=True)
        return SendResult(name, host, self.parent, 0 if dry_run else self.sent)

    def restore(self, name, target=None, force=False):
        self.calls.append(("restore", name, target, force))
        backup = f"{target}@before" if target in self.volumes else None
        self.volumes.add(target)
        return RestoreResult(target, name, backup)

    def get_snapshot(self, name):
        volume, _, stamp = name.partition("@")
        created = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        return Snapshot(name, volume, created, f"/r/received/{name}")


# -- which copy ---------------------------------------------------------------------------


def test_the_newest_copy_on_another_host_wins():
    backups = [
        doc("a", snap("v", 1), T + 1),
        doc("b", snap("v", 5), T + 5, "stowkit-volume-replicate", remote_host="c"),
        doc("here", snap("v", 9), T + 9),  # this host's own: never pulled from
        doc("c", snap("w", 20), T + 20),  # another volume
        {"backup_metadata": {**doc("d", snap("v", 30), T + 30)["backup_metadata"],
                             "action": "stowkit-blockstore-upload"}},  # a device's document
        doc("d", "v", T + 40, "stowkit-volume-snapshot"),  # not a snapshot name of v
    ]  # fmt: skip
    assert pull.candidates(backups, "v", "here")[0] == pull.Copy("b", snap("v", 5), T + 5)
    assert pull.candidates(backups, "v", "here", source="a")[0].snapshot == snap("v", 1)


def test_a_tie_goes_to_the_document_recorded_last():
    backups = [doc("a", snap("v", 1), T + 1), doc("b", snap("v", 1), T + 1, pull.PULL_ACTION)]
    assert pull.candidates(backups, "v", "here")[0].host == "b"


def test_no_copy_is_not_found():
    with pytest.raises(NotFound, match="no copy of volume v on another host"):
        pull.candidates([doc("here", snap("v", 1), T)], "v", "here")
    with pytest.raises(NotFound, match="on z"):
        pull.candidates([doc("a", snap("v", 1), T)], "v", "here", source="z")


# -- which parent (the driver's one rule for sends and pulls) --------------------------------


@dataclasses.dataclass
class Side:
    name: str
    created: dt.datetime
    key: str


def test_the_parent_is_the_newest_shared_snapshot_not_newer_than_the_target():
    at = [dt.datetime.fromtimestamp(T + i, dt.UTC) for i in range(5)]
    remote = [Side(f"v@{i}", at[i], f"u{i}") for i in range(5)]
    shared = {"u0", "u1", "u3", "u9"}
    key = lambda s: s.key  # noqa: E731
    assert shared_parent(remote, "v@2", at[2], shared, key).name == "v@1"
    assert shared_parent(remote, "v@4", at[4], shared, key).name == "v@3"
    assert shared_parent(remote, "v@3", at[3], shared, key).name == "v@1"  # never itself
    assert shared_parent(remote, "v@4", at[4], set(), key) is None  # full


# -- the pull -------------------------------------------------------------------------------


def test_a_full_pull_restores_and_records_a_document_for_this_host():
    catalog = Catalog([doc("a", snap("v", 1), T + 1)])
    driver = Driver()
    result = pull.pull(driver, catalog, "v", "here")
    assert driver.calls == [
        ("receive", snap("v", 1), "a", False),
        ("restore", snap("v", 1), "v", False),
    ]
    assert (result.host, result.mode, result.parent, result.bytes_received) == (
        "a",
        "full",
        None,
        4096,
    )
    assert result.recorded == "pulled-1" and result.backup is None
    (meta,) = catalog.added
    assert meta["action"] == pull.PULL_ACTION and meta["hostname"] == "here"
    assert meta["container"] == "v" and meta["backup_name"] == snap("v", 1)
    assert meta["time_stamp"] == T + 1 and meta["curr_backup_level"] == 0
    assert meta["remote_host"] == "a" and meta["backup_size_compressed"] == 4096
    assert catalog.searches == [[{"container": "v"}]]


def test_an_incremental_pull_is_one_level_above_its_parent():
    catalog = Catalog(
        [
            doc("a", snap("v", 1), T + 1),
            doc("here", snap("v", 1), T + 1, pull.PULL_ACTION, curr_backup_level=2),
            doc("a", snap("v", 2), T + 2),
        ]
    )
    driver = Driver(volumes={"v"}, parent=snap("v", 1))
    result = pull.pull(driver, catalog, "v", "here", force=True)
    assert result.mode == "incremental" and result.parent == snap("v", 1)
    assert result.backup == "v@before"  # the data that was here, kept as a snapshot
    assert catalog.added[0]["curr_backup_level"] == 3
    assert driver.calls[-1] == ("restore", snap("v", 2), "v", True)


def test_an_existing_or_mounted_volume_is_refused_before_any_transfer():
    catalog = Catalog([doc("a", snap("v", 1), T + 1)])
    driver = Driver(volumes={"v"})
    with pytest.raises(AlreadyExists, match="--force"):
        pull.pull(driver, catalog, "v", "here")
    driver = Driver(volumes={"v"}, mounts=["m1"])
    with pytest.raises(AlreadyExists, match=r"mounted \(1 mount\(s\)\)"):
        pull.pull(driver, catalog, "v", "here")
    assert driver.calls == [] and catalog.added == []
    pull.pull(driver, catalog, "v", "here", force=True)  # as snapshot restore --force
    assert driver.calls[-1][-1] is True


def test_a_dry_run_moves_and_records_nothing():
    catalog = Catalog([doc("a", snap("v", 1), T + 1)])
    driver = Driver(parent="v@x")
    result = pull.pull(driver, catalog, "v", "here", dry_run=True)
    assert result.dry_run and result.mode == "incremental" and result.recorded is None
    assert driver.calls == [("receive", snap("v", 1), "a", True)]
    assert catalog.added == []


def test_a_copy_already_here_is_restored_without_a_transfer():
    catalog = Catalog([doc("a", snap("v", 1), T + 1)])
    result = pull.pull(Driver(already=True), catalog, "v", "here")
    assert result.mode == "already here" and result.bytes_received == 0


def test_an_unreachable_host_fails_and_records_nothing():
    class Down(Driver):
        def receive_snapshot(self, *a, **kw):
            raise BackendUnavailable("listing snapshots on a failed: Connection refused")

    catalog = Catalog([doc("a", snap("v", 1), T + 1)])
    with pytest.raises(BackendUnavailable):
        pull.pull(Down(), catalog, "v", "here")
    assert catalog.added == []


class Holding(Driver):
    """Peers that hold only some snapshots, and hosts that cannot be reached."""

    def __init__(self, held, down=(), **kw):
        super().__init__(**kw)
        self.held, self.down = held, set(down)

    def receive_snapshot(self, name, host, *, compress=None, bwlimit=None, dry_run=False):
        if host in self.down:
            self.calls.append(("unreachable", name, host))
            raise BackendUnavailable(f"listing snapshots on {host} failed: Connection refused")
        if (host, name) not in self.held:
            self.calls.append(("missing", name, host))
            raise NotFound(f"{host} holds no snapshot {name}")
        return super().receive_snapshot(name, host, dry_run=dry_run)


def test_a_replication_records_a_copy_on_its_receiver_too():
    backups = [doc("a", snap("v", 5), T + 5, "stowkit-volume-replicate", remote_host="b")]
    assert [c.host for c in pull.candidates(backups, "v", "here")] == ["a", "b"]
    assert [c.host for c in pull.candidates(backups, "v", "a")] == ["b"]
    assert pull.candidates(backups, "v", "here", source="b")[0].snapshot == snap("v", 5)


def test_a_copy_two_documents_record_is_tried_once():
    backups = [
        doc("a", snap("v", 5), T + 5, "stowkit-volume-replicate", remote_host="b"),
        doc("b", snap("v", 5), T + 5, pull.PULL_ACTION, curr_backup_level=3),
    ]
    ranked = pull.candidates(backups, "v", "here")
    assert [(c.host, c.level) for c in ranked] == [("b", 3), ("a", 0)]


def test_a_copy_purged_since_it_was_recorded_is_passed_over_for_the_next():
    """The sender purged the replicated snapshot (its record stays, for the receiver's copy):
    the pull takes the receiver's copy and says what it passed over."""
    backups = [
        doc("a", snap("v", 1), T + 1),
        doc("a", snap("v", 5), T + 5, "stowkit-volume-replicate", remote_host="b"),
    ]
    driver = Holding({("b", snap("v", 5)), ("a", snap("v", 1))})
    result = pull.pull(driver, Catalog(backups), "v", "here")
    assert (result.host, result.snapshot) == ("b", snap("v", 5))
    assert result.passed_over == (f"a: a holds no snapshot {snap('v', 5)}",)
    assert driver.calls[:2] == [
        ("missing", snap("v", 5), "a"),
        ("receive", snap("v", 5), "b", False),
    ]


def test_a_dead_host_is_passed_over_once_and_its_replica_pulled():
    """Host a died: its own snapshots are newest, its replica on b is pulled, and a is not
    asked again for each of its older copies."""
    backups = [
        doc("a", snap("v", 3), T + 3, "stowkit-volume-replicate", remote_host="b"),
        doc("a", snap("v", 7), T + 7),
        doc("a", snap("v", 8), T + 8),
    ]
    driver = Holding({("b", snap("v", 3))}, down={"a"})
    result = pull.pull(driver, Catalog(backups), "v", "here", dry_run=True)
    assert (result.host, result.snapshot) == ("b", snap("v", 3))
    assert [c[0] for c in driver.calls] == ["unreachable", "receive"]
    assert "Connection refused" in result.passed_over[0] and len(result.passed_over) == 1


def test_when_no_copy_can_be_had_the_error_says_why_for_each():
    backups = [
        doc("a", snap("v", 1), T + 1),
        doc("b", snap("v", 2), T + 2),
    ]
    catalog = Catalog(backups)
    with pytest.raises(NotFound, match=r"no copy of volume v could be had: b: b holds no .*; a:"):
        pull.pull(Holding(set(), down={"a"}), catalog, "v", "here")
    with pytest.raises(BackendUnavailable, match="b: listing .*; a: listing"):
        pull.pull(Holding(set(), down={"a", "b"}), catalog, "v", "here")
    assert catalog.added == []


def test_a_stale_catalog_costs_a_bounded_number_of_tries():
    backups = [doc("a", snap("v", i), T + i) for i in range(50)]
    driver = Holding(set())
    with pytest.raises(NotFound, match=f"gave up after {pull.MAX_TRIES} tries"):
        pull.pull(driver, Catalog(backups), "v", "here")
    assert len(driver.calls) == pull.MAX_TRIES


def test_a_conflict_here_stops_the_pull_instead_of_trying_older_copies():
    class Clash(Driver):
        def receive_snapshot(self, name, host, **kw):
            self.calls.append(("receive", name, host))
            raise Conflict(f"a different snapshot named {name} is here already")

    backups = [doc("a", snap("v", 1), T + 1), doc("b", snap("v", 2), T + 2)]
    driver = Clash()
    with pytest.raises(Conflict):
        pull.pull(driver, Catalog(backups), "v", "here")
    assert len(driver.calls) == 1


# -- the command ------------------------------------------------------------------------------


@pytest.fixture()
def cli(tmp_path, monkeypatch, capsys):
    conf_file = tmp_path / "stowkit.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[agent]\nhostname = here\n")
    state: dict[str, Any] = {"catalog": Catalog([]), "driver": Driver()}
    monkeypatch.setattr(StowkitApp, "driver", lambda self, namespace: state["driver"])

    def connect(conf, login=None, **given):
        state["catalog"].hostname = "here"
        return state["catalog"]

    monkeypatch.setattr(catalogclient, "connect", connect)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config-file", str(conf_file), "volume", "pull", *args])
        out, err = capsys.readouterr()
        return code, out, err

    run.state = state  # type: ignore[attr-defined]
    return run


def test_the_command_prints_snake_case_columns(cli):
    cli.state["catalog"] = Catalog([doc("a", snap("v", 1), T + 1)])
    code, out, err = cli("v", "-f", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown == {
        "volume": "v",
        "host": "a",
        "snapshot": snap("v", 1),
        "mode": "full",
        "parent": None,
        "bytes_received": 4096,
        "backup": None,
        "dry_run": False,
        "backup_id": "pulled-1",
        "passed_over": "",
    }


def test_the_command_errors_are_one_line_with_distinct_codes(cli):
    code, _, err = cli("v")
    assert code == NotFound.exit_code and err.count("\n") == 1 and "no copy" in err

    class Down(Driver):
        def receive_snapshot(self, *a, **kw):
            raise BackendUnavailable("listing snapshots on a failed: Connection refused")

    cli.state["catalog"] = Catalog([doc("a", snap("v", 1), T + 1)])
    cli.state["driver"] = Down()
    code, _, err = cli("v", "--from", "a")
    assert code == BackendUnavailable.exit_code and "Connection refused" in err
    assert "Traceback" not in err and err.count("\n") == 1
    cli.state["driver"] = Driver(volumes={"v"})
    code, _, err = cli("v")
    assert code == AlreadyExists.exit_code and "--force" in err
    code, _, err = cli("v", "--from=-oProxyCommand=x")
    assert code == 3 and "Traceback" not in err, err
