"""``stowkit catalog ...`` commands on a SQLite catalog in a temporary state dir."""

from __future__ import annotations

import json

import pytest

from stowkit.cli.app import main
from stowkit.corelib import config, registry
from stowkit.corelib.catalogapi.service import CatalogService, Identity


@pytest.fixture()
def conf_file(tmp_path):
    path = tmp_path / "stowkit.conf"
    path.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}\n[catalog_api]\ndefault_project = proj\n")
    return path


@pytest.fixture()
def seeded(conf_file, tmp_path):
    assert main(["--config-file", str(conf_file), "catalog", "db-sync"]) == 0
    conf = config.load_conf([str(conf_file)])
    catalog = registry.load("catalog", conf)
    service = CatalogService(catalog)
    who = Identity("proj", "u1")
    backup = service.create(
        who,
        "backups",
        {
            "container": "c",
            "hostname": "h1",
            "backup_name": "etc",
            "time_stamp": 7,
            "curr_backup_level": 1,
        },
    )
    job = service.create(who, "jobs", {"job_actions": [], "client_id": "h1", "description": "d"})
    session = service.create(who, "sessions", {"description": "s"})
    catalog.close()
    return {"backup": backup, "job": job, "session": session}


def run(conf_file, capsys, *args):
    code = main(["--config-file", str(conf_file), "catalog", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_db_sync_is_idempotent(conf_file, capsys):
    code, out, _ = run(conf_file, capsys, "db-sync")
    assert code == 0 and "upgraded from empty to 0002" in out
    code, out, _ = run(conf_file, capsys, "db-sync")
    assert code == 0 and "up to date" in out


def test_a_catalog_never_synced_says_how_to_make_it(conf_file, capsys):
    code, _, err = run(conf_file, capsys, "backup", "list")
    assert code == 9 and err.count("\n") == 1 and "Traceback" not in err
    assert "the catalog database has no catalog tables" in err
    assert "run `stowkit catalog db-sync`" in err


def test_list_show_delete(conf_file, seeded, capsys):
    code, out, _ = run(conf_file, capsys, "backup", "list", "-f", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["backup_id"] for r in rows] == [seeded["backup"]]
    assert rows[0]["level"] == 1
    code, out, _ = run(
        conf_file, capsys, "backup", "list", "--match", "hostname=nope", "-f", "json"
    )
    assert json.loads(out) == []
    code, out, _ = run(conf_file, capsys, "job", "show", seeded["job"], "-f", "json")
    assert code == 0 and json.loads(out)["description"] == "d"
    code, out, _ = run(conf_file, capsys, "session", "list", "-f", "json")
    assert [r["session_id"] for r in json.loads(out)] == [seeded["session"]]
    # Another project sees nothing.
    code, out, _ = run(conf_file, capsys, "job", "list", "--project", "other", "-f", "json")
    assert json.loads(out) == []
    assert run(conf_file, capsys, "backup", "delete", seeded["backup"])[0] == 0
    code, _, err = run(conf_file, capsys, "backup", "delete", seeded["backup"])
    assert code == 5 and "not found" in err and "Traceback" not in err
    code, _, err = run(conf_file, capsys, "job", "show", "bad id!")
    assert code == 3 and "invalid job id" in err


def test_serve_on_a_busy_port_fails_before_any_work(conf_file, tmp_path):
    import socket
    import subprocess

    from tests.commands import STOWKIT

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [*STOWKIT, "--config-file", str(conf_file), "catalog", "serve", "--no-auth"]
            + ["--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 9
    assert proc.stderr.splitlines() == [
        f"stowkit: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"
    ]
    assert not (tmp_path / "catalog.sqlite").exists()  # no database made, nothing announced
