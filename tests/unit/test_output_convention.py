"""The one machine-output convention (doc/cli.md), checked over every list and show command.

Each command runs in-process with ``-f json`` on the embedded backends (local
blocks and images, SQLite catalog) and an in-memory volume driver; the test
checks column names, sizes, times, and that one name means one kind of value
in every command.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import re

import pytest
from cliff import lister, show

from stowkit.cli.app import BUILTIN_MODULES, StowkitApp, main
from stowkit.cli.common import Bytes, utc_time
from stowkit.corelib import config, registry
from stowkit.corelib.catalogapi.service import CatalogService, Identity
from tests.fakes.volumes import FakeDriver

NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
#: Fields that hold a size: integer bytes (or null) in every machine format.
SIZES = {"size", "object_size", "bytes_stored", "bytes_sent", "unstored_bytes"}
#: Fields that hold a time: ISO-8601 UTC with Z (or null).
TIMES = {"created", "lock_acquired", "lock_expires", "time_stamp", "unstored_at"}

#: Read-only row/object commands and how to run each on the fixture below.
COMMANDS: dict[str, list[str]] = {
    "backends": ["backends"],
    "volume list": ["volume", "list"],
    "volume show": ["volume", "show", "web"],
    "snapshot list": ["snapshot", "list"],
    "blockstore list": ["blockstore", "list"],
    "blockstore show": ["blockstore", "show", "disk"],
    "image list": ["image", "list", "--region", "One"],
    "image show": ["image", "show", "IMAGE_ID", "--region", "One"],
    "image regions": ["image", "regions"],
    "image status": ["image", "status"],
    "catalog backup list": ["catalog", "backup", "list"],
    "catalog backup show": ["catalog", "backup", "show", "BACKUP_ID"],
    "catalog job list": ["catalog", "job", "list"],
    "catalog job show": ["catalog", "job", "show", "JOB_ID"],
    "catalog session list": ["catalog", "session", "list"],
    "catalog session show": ["catalog", "session", "show", "SESSION_ID"],
    "schedule list": ["schedule", "list"],
}
#: Row/object commands that change something, run once each after the above.
WRITES: dict[str, list[str]] = {
    "volume create": ["volume", "create", "new"],
    "volume clone": ["volume", "clone", "web", "copy"],
    "volume unmount": ["volume", "unmount", "web", "--all"],
    "snapshot create": ["snapshot", "create", "web"],
    "snapshot purge": ["snapshot", "purge", "web", "1h:1d", "--dry-run"],
    "snapshot restore": ["snapshot", "restore", "web"],
    "blockstore setup": ["blockstore", "setup", "disk2", "--size", "1M"],
    "blockstore lock": ["blockstore", "lock", "disk2"],
    "image create": ["image", "create", "A_IMG", "--name", "b", "--region", "Two"],
    "image sync": ["image", "sync", "--dry-run"],
    "image backup": ["image", "backup", "--dir", "BACKUP_DIR"],
}
#: Those that need a peer (ssh, btrfs) or read files of another tool; their
#: columns come from the same helpers and are tested with the real backends.
ELSEWHERE = {
    "volume sync", "volume cleanup", "volume pull", "snapshot send", "image load-backups",
    "schedule add", "schedule import", "catalog register",
}  # fmt: skip


class Volumes(FakeDriver):
    """The in-memory driver, with ``volume show``'s size."""

    def get_volume(self, name, with_size=False):
        volume = super().get_volume(name)
        return dataclasses.replace(volume, size=12288) if with_size else volume

    def close(self) -> None:
        pass


@pytest.fixture()
def env(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLANCESYNC_CONFIG", raising=False)
    conf_file = tmp_path / "stowkit.conf"
    conf_file.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
        f"[image_sync]\nconfig_file = {tmp_path / 'glancesync.conf'}\n"
        f"[scheduler]\nschedule_file = {tmp_path / 'schedule.json'}\n"
        "[catalog_api]\ndefault_project = proj\n"
    )
    (tmp_path / "glancesync.conf").write_text("[main]\nmaster_region = One\n")
    for region in ("One", "Two"):
        (tmp_path / "state" / "images" / region).mkdir(parents=True)
    (tmp_path / "a.img").write_bytes(b"a" * 3000)

    volumes = Volumes(str(tmp_path / "btrfs"))
    volumes.create_volume("web", {"copyonwrite": "true"})
    volumes.create_snapshot("web")
    real_driver = StowkitApp.driver

    def driver(self, namespace):
        return volumes if namespace == "volume" else real_driver(self, namespace)

    monkeypatch.setattr(StowkitApp, "driver", driver)

    def run(*args: str) -> str:
        code = main(["--config-file", str(conf_file), *args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    ids: dict[str, str] = {}
    ids["IMAGE_ID"] = json.loads(
        run("image", "create", str(tmp_path / "a.img"), "--name", "a", "--region", "One",
            "--public", "-f", "json")
    )["id"]  # fmt: skip
    run("blockstore", "setup", "disk", "--size", "2M", "--object-size", "64K")
    run("blockstore", "lock", "disk", "--lease", "600")
    run("catalog", "db-sync")
    run("schedule", "add", "web", "snapshot", "60")
    conf = config.load_conf([str(conf_file)])
    catalog = registry.load("catalog", conf)
    service = CatalogService(catalog)
    who = Identity("proj", "u1")
    ids["BACKUP_ID"] = service.create(
        who,
        "backups",
        {"container": "c", "hostname": "h", "backup_name": "etc", "time_stamp": 1767225600},
    )
    ids["JOB_ID"] = service.create(who, "jobs", {"job_actions": [{}], "client_id": "h"})
    ids["SESSION_ID"] = service.create(who, "sessions", {"description": "s"})
    catalog.close()

    ids["A_IMG"] = str(tmp_path / "a.img")
    ids["BACKUP_DIR"] = str(tmp_path)

    def command(name: str, fmt: str = "json") -> str:
        argv = [ids.get(a, a) for a in {**COMMANDS, **WRITES}[name]]
        return run(*argv, "-f", fmt)

    return command


def _row_commands() -> set[str]:
    import importlib

    found = set()
    for module_name in BUILTIN_MODULES:
        for name, cls in importlib.import_module(module_name).COMMANDS.items():
            if issubclass(cls, lister.Lister | show.ShowOne):
                found.add(name)
    return found


def test_every_row_or_object_command_is_covered():
    assert _row_commands() - set(COMMANDS) - set(WRITES) - ELSEWHERE == set()


def _objects(out: str) -> list[dict]:
    data = json.loads(out)
    return data if isinstance(data, list) else [data]


def test_json_shapes_follow_the_convention(env):
    kinds: dict[str, dict[str, set[str]]] = {}
    for name in [*COMMANDS, *WRITES]:
        objects = _objects(env(name))
        assert objects or name == "volume unmount", f"{name} printed nothing to check"
        for obj in objects:
            for key, value in obj.items():
                assert NAME.match(key), f"{name}: column {key!r} is not snake_case"
                if key in SIZES:
                    assert value is None or type(value) is int, f"{name}: {key}={value!r}"
                if key in TIMES:
                    assert value is None or TIME.match(value), f"{name}: {key}={value!r}"
                kinds.setdefault(key, {}).setdefault(type(value).__name__, set()).add(name)
    # One name, one kind of value, whichever command prints it (null aside).
    mixed = {k: v for k, v in kinds.items() if len(set(v) - {"NoneType"}) > 1}
    assert not mixed, mixed
    # The same field has the same name: what `show` calls a field, `list` does too.
    assert {"name", "size", "object_size", "locked_by"} <= set(_objects(env("blockstore list"))[0])
    assert set(_objects(env("volume list"))[0]) <= set(_objects(env("volume show"))[0])


def test_sizes_are_human_only_in_a_table(env):
    table = env("blockstore show", "table")
    assert "2 MiB" in table and "64 KiB" in table
    assert json.loads(env("blockstore show"))["size"] == 2 << 20
    assert env("blockstore show", "value").split("\n")[1] == str(2 << 20)
    rows = list(csv.reader(io.StringIO(env("blockstore list", "csv"))))
    assert rows[1][1:3] == [str(2 << 20), str(64 << 10)]
    assert ",2097152,65536," in env("blockstore list", "csv")  # numbers, not quoted text
    assert "3000" in env("image list", "value") and "2.9 KiB" in env("image list", "table")


def test_times_are_utc_with_z(env):
    locked = json.loads(env("blockstore show"))
    assert TIME.match(locked["lock_acquired"]) and TIME.match(locked["lock_expires"])
    assert json.loads(env("volume show"))["created"] == "2026-01-02T03:04:05Z"
    assert _objects(env("catalog backup list"))[0]["time_stamp"] == "2026-01-01T00:00:00Z"


def test_utc_time_and_bytes_helpers():
    assert utc_time(0) == "1970-01-01T00:00:00Z"
    assert utc_time(dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == (
        "2026-05-01T10:00:00Z"
    )
    assert utc_time(dt.datetime(2026, 5, 1, 12, 0)) == "2026-05-01T12:00:00Z"  # naive = UTC
    assert utc_time(None) is None
    assert Bytes(1536).human_readable() == "1.5 KiB" and Bytes(1536).machine_readable() == 1536
    assert Bytes(None).human_readable() == "" and Bytes(None).machine_readable() is None
    assert sorted([Bytes(5), Bytes(None), Bytes(2)]) == [Bytes(None), Bytes(2), Bytes(5)]
