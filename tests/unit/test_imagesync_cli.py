"""`stowkit image ...` and `stowkit-glancesync` on the local image store."""

from __future__ import annotations

import json

import pytest

from stowkit.cli.compat import glancesync
from tests.fakes.cli_output import rows


def test_create_list_status_sync(env, capsys, tmp_path):
    assert (
        env(
            "image",
            "create",
            str(tmp_path / "a.img"),
            "--name",
            "a",
            "--region",
            "One",
            "--public",
            "--property",
            "nid=1",
            "-f",
            "json",
        )
        == 0
    )
    created = rows(capsys)
    assert created["size"] == 1000 and created["properties"] == "nid=1"
    assert (
        env(
            "image",
            "create",
            str(tmp_path / "b.img"),
            "--name",
            "b",
            "--region",
            "One",
            "-f",
            "json",
        )
        == 0
    )
    capsys.readouterr()
    assert env("image", "status", "-f", "json") == 0
    assert rows(capsys) == [
        {"status": "pending_upload", "region": "Three", "image": "a"},
        {"status": "pending_upload", "region": "Two", "image": "a"},
    ]
    assert env("image", "sync", "Two", "--dry-run", "-f", "json") == 0
    assert rows(capsys) == [
        {"region": "Two", "action": "upload", "image": "a", "size": 1000, "detail": ""}
    ]
    assert env("image", "list", "--region", "Two", "-f", "json") == 0
    assert rows(capsys) == []
    assert env("image", "sync", "--parallel", "-f", "json") == 0
    assert len(rows(capsys)) == 2
    assert env("image", "status", "Two", "-f", "json") == 0
    assert rows(capsys) == [{"status": "ok", "region": "Two", "image": "a"}]
    # --config reaches the sync configuration
    assert (
        env("image", "status", "Two", "--config", "master.metadata_condition=False", "-f", "json")
        == 0
    )
    assert rows(capsys) == []
    assert env("image", "regions", "-f", "json") == 0
    assert rows(capsys) == [
        {"target": "master", "region": "One", "role": "master"},
        {"target": "master", "region": "Three", "role": ""},
        {"target": "master", "region": "Two", "role": ""},
    ]
    assert env("image", "list", "--region", "Two", "-f", "json") == 0
    (copy,) = rows(capsys)
    assert env("image", "delete", copy["id"], "--region", "Two") == 0
    assert env("image", "backup", "--dir", str(tmp_path / "bk"), "-f", "json") == 0
    assert {r["region"] for r in rows(capsys)} == {"One", "Two", "Three"}
    assert (tmp_path / "bk" / "backup_One.csv").read_text().startswith("One,")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("image", "sync", "Nowhere"), 5, "unknown region 'Nowhere'"),
        (("image", "sync", "nope:"), 3, "unknown target 'nope'"),
        (
            ("image", "status", "--config", "master.metadata_condition=image.is_public and ("),
            10,
            "malformed metadata_condition",
        ),
        (("image", "status", "--config", "novalue"), 3, "invalid --config 'novalue'"),
        (("image", "status", "--sync-config", "/nonexistent.conf"), 10, "not found"),
        (("image", "list", "--region", "../etc"), 4, "invalid region name"),
        (("image", "status", "--config", "master.credential=a,b"), 10, "credential must be"),
    ],
)
def test_bad_input_is_one_line(env, capsys, args, code, message):
    assert env(*args) == code
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_failed_region_exit_code_and_summary(env, capsys, tmp_path):
    env("image", "create", str(tmp_path / "a.img"), "--name", "a", "--region", "One", "--public")
    (tmp_path / "state" / "images" / "Two" / "images.json").write_text("[broken")
    capsys.readouterr()
    assert env("image", "sync", "-f", "json") == 9
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [
        {"region": "Three", "action": "upload", "image": "a", "size": 1000, "detail": ""}
    ]
    assert "failed in 1 of 2 region(s): Two:" in captured.err


def test_glancesync_front_end(env, capsys, tmp_path):
    env("image", "create", str(tmp_path / "a.img"), "--name", "a", "--region", "One", "--public")
    capsys.readouterr()
    assert env("--show-regions", front=glancesync.main) == 0
    assert capsys.readouterr().out.split() == ["Three", "Two"]
    assert env("--show-status", front=glancesync.main) == 0
    assert capsys.readouterr().out == "pending_upload,Three,a\npending_upload,Two,a\n"
    assert env("--dry-run", "Two", front=glancesync.main) == 0
    assert "Two: Pending: upload a" in capsys.readouterr().out
    assert env("--parallel", front=glancesync.main) == 0
    assert (
        env("--show-status", "--config", "master.metadata_condition=False", front=glancesync.main)
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "" or "ok" not in out.splitlines()[-1]
    assert env("--show-status", front=glancesync.main) == 0
    assert capsys.readouterr().out == "ok,Three,a\nok,Two,a\n"
    assert env("--make-backup", front=glancesync.main) == 0
    assert len(list(tmp_path.glob("backup_glance_*/backup_*.csv"))) == 3
    assert env("Nowhere", front=glancesync.main) == 5
    assert capsys.readouterr().err.strip() == "stowkit-glancesync: unknown region 'Nowhere'"
    assert env("--config", "x", front=glancesync.main) == 3


def test_load_backups_scenario(env, capsys, tmp_path):
    bk = tmp_path / "scenario"
    bk.mkdir()
    (bk / "backup_One.csv").write_text(
        "One,base,11111111-1111-1111-1111-111111111111,active,10,abc,,True,{u'type': u'base'}\n"
    )
    (bk / "backup_Two.csv").write_text(
        "Two,base,22222222-1111-1111-1111-111111111111,active,10,abc,,True,{u'type': u'old'}\n"
    )
    assert env("image", "load-backups", str(bk), "-f", "json") == 0
    assert rows(capsys) == [{"region": "One", "images": 1}, {"region": "Two", "images": 1}]
    assert env("image", "status", "Two", "-f", "json") == 0
    assert rows(capsys) == [{"status": "pending_metadata", "region": "Two", "image": "base"}]
