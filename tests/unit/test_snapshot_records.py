"""`snapshot delete` and `snapshot purge` take the catalog's records of what they deleted with
them, on a host set up as a catalog client, as the agent's purge action does."""

from __future__ import annotations

import logging
import os

import pytest

from stowkit.cli.app import StowkitApp, main
from stowkit.corelib import catalogclient, catalogdocs, config
from stowkit.corelib.errors import BackendUnavailable
from tests.fakes.catalog import served_catalog
from tests.fakes.volumes import FakeDriver


@pytest.fixture()
def catalog(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("OS_")]:
        monkeypatch.delenv(name)
    with served_catalog(tmp_path / "cat", monkeypatch) as wsgi:
        yield wsgi


def record(catalog, host: str, name: str, action: str = "stowkit-volume-snapshot") -> None:
    catalog.add_backup(
        {
            "action": action,
            "container": "v1",
            "hostname": host,
            "backup_name": name,
            "time_stamp": 1_900_000_000,
            **(
                {"remote_host": "host-b", "curr_backup_level": 1}  # its own backup id
                if action == "stowkit-volume-replicate"
                else {"curr_backup_level": 0}
            ),
        }
    )


def names(catalog) -> list[tuple[str, str, str]]:
    docs = catalog.search_backups([{"container": "v1"}])
    metas = [d["backup_metadata"] for d in docs]
    return sorted((m["hostname"], m["action"], m["backup_name"]) for m in metas)


def run(tmp_path, catalog_url: bool, *args: str) -> tuple[int, str]:
    conf = tmp_path / "s.conf"
    extra = "[agent]\ncatalog_url = http://catalog.test\nhostname = host-a\n" if catalog_url else ""
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n{extra}")
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        return main(["--config-file", str(conf), "snapshot", *args]), ""
    finally:
        root.handlers[:] = handlers


@pytest.fixture()
def driver(monkeypatch):
    drv = FakeDriver()
    drv.create_volume("v1")
    monkeypatch.setattr(StowkitApp, "driver", lambda self, namespace: drv)
    return drv


def test_a_deleted_snapshot_takes_this_hosts_records_with_it(tmp_path, catalog, driver):
    snap = driver.create_snapshot("v1").name
    record(catalog, "host-a", snap)
    record(catalog, "host-a", snap, "stowkit-volume-replicate")  # the copy on host-b
    record(catalog, "host-b", snap, "stowkit-volume-pull")  # host-b's own copy
    assert run(tmp_path, True, "delete", snap)[0] == 0
    assert names(catalog) == [
        ("host-a", "stowkit-volume-replicate", snap),
        ("host-b", "stowkit-volume-pull", snap),
    ]


def test_a_purge_takes_the_records_of_what_it_deleted_not_a_dry_run(tmp_path, catalog, driver):
    old, new = driver.create_snapshot("v1").name, driver.create_snapshot("v1").name
    record(catalog, "host-a", old)
    record(catalog, "host-a", new)
    assert run(tmp_path, True, "purge", "v1", "1h:1d", "--dry-run")[0] == 0
    assert len(names(catalog)) == 2
    assert run(tmp_path, True, "purge", "v1", "1h:1d")[0] == 0
    assert names(catalog) == [("host-a", "stowkit-volume-snapshot", new)]


def test_a_host_that_is_no_catalog_client_asks_no_catalog(tmp_path, catalog, driver):
    snap = driver.create_snapshot("v1").name
    record(catalog, "host-a", snap)
    asked = len(catalog.requests)
    assert run(tmp_path, False, "delete", snap)[0] == 0
    assert len(catalog.requests) == asked and len(names(catalog)) == 1


def test_a_catalog_that_cannot_be_reached_is_a_warning_and_the_delete_stands(
    tmp_path, catalog, driver, monkeypatch, capsys
):
    snap = driver.create_snapshot("v1").name

    def down(match):
        raise BackendUnavailable("catalog at http://catalog.test unreachable: refused")

    monkeypatch.setattr(catalog, "search_backups", down)
    assert run(tmp_path, True, "delete", snap)[0] == 0
    assert driver.list_snapshots("v1") == []
    err = capsys.readouterr().err
    assert "warning: the catalog still records the deleted snapshot(s)" in err
    assert err.count("\n") == 1


def test_forget_is_nothing_without_deletions(tmp_path):
    conf = config.load_conf(overrides=[(None, "state_dir", str(tmp_path))])
    assert catalogdocs.forget_deleted_snapshots(conf, "v1", []) is None


def test_an_openrc_in_the_environment_alone_makes_no_catalog_client(tmp_path, monkeypatch):
    conf = tmp_path / "s.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n")
    monkeypatch.setenv("OS_AUTH_URL", "http://keystone.invalid:5000/v3")
    monkeypatch.setenv("OS_USERNAME", "admin")
    loaded = config.load_conf([str(conf)])
    assert not catalogclient.configured(loaded)
    assert catalogclient.keystone_wanted(loaded)  # the agent and volume pull would log in
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[agent]\ncatalog_url = http://c:1\n")
    assert catalogclient.configured(config.load_conf([str(conf)]))
