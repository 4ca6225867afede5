"""Taking over a buttervolume tree, without btrfs: its snapshot names, its
configuration (environment, config.ini, defaults), its schedule at ``run``,
and peer listings that name the exact directory."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess

import pytest

from stowkit.cli.compat import buttervolume
from stowkit.corelib import config, registry, schedule
from stowkit.corelib.errors import ConfigError, InvalidName
from stowkit.corelib.volume import split_snapshot_name
from stowkit.plugins.btrfs import transport
from tests.fakes.buttervolume import BV

# -- names ---------------------------------------------------------------------------


def test_buttervolume_names_are_read_as_local_time(paris):
    vol, when = split_snapshot_name("v1@2026-01-15T10:30:00.123456", [BV])
    assert vol == "v1"
    assert when == dt.datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=dt.UTC)
    # stowkit's own form is still UTC, formats or not
    assert split_snapshot_name("v1@2026-01-15T10-30-00.000001", [BV])[1] == dt.datetime(
        2026, 1, 15, 10, 30, 0, 1, tzinfo=dt.UTC
    )


def test_buttervolume_names_are_refused_without_the_format():
    with pytest.raises(InvalidName):
        split_snapshot_name("v1@2026-01-15T10:30:00.123456")


@pytest.mark.parametrize(
    "name",
    [
        "v1@2026-01-15T10:30:00.123456@host",  # a sent marker is no snapshot
        "v1@2026-01-15T10:30:00",  # not what the format writes
        "v1@2026-1-15T10:30:00.123456",  # strptime would take it; it does not round-trip
        "v1@2026-01-15T10:30:00.123456/x",
        "../x@2026-01-15T10:30:00.123456",
        "v1@",
    ],
)
def test_foreign_names_must_be_exactly_what_the_format_writes(name):
    with pytest.raises(InvalidName):
        split_snapshot_name(name, [BV])


def test_any_dtformat_it_is_told_about():
    vol, when = split_snapshot_name("db@20260115-103000+0000", ["%Y%m%d-%H%M%S%z"])
    assert (vol, when) == ("db", dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC))


def test_driver_recognises_markers(tmp_path):
    drv = registry.load("volume", config.load_conf(), "btrfs", root=str(tmp_path))
    assert drv.snapshots.marker("v1@2026-01-15T10:30:00.123456@backup1") == (
        "v1",
        "v1@2026-01-15T10:30:00.123456",
        "backup1",
    )
    # buttervolume was given user@host: the marker keeps it whole
    assert drv.snapshots.marker("v1@2026-01-15T10:30:00.123456@root@10.0.0.2")[2] == "root@10.0.0.2"
    assert drv.snapshots.marker("v1@2026-01-15T10:30:00.123456") is None
    assert drv.snapshots.marker("v1@garbage@host") is None


def test_driver_paths_may_be_apart(tmp_path):
    drv = registry.load(
        "volume",
        config.load_conf(),
        "btrfs",
        root=str(tmp_path / "root"),
        volumes_path=str(tmp_path / "v"),
        snapshots_path=str(tmp_path / "s"),
        received_path=str(tmp_path / "r"),
    )
    assert (drv.volumes_dir, drv.snapshots_dir, drv.received_dir) == tuple(
        str(tmp_path / d) for d in "vsr"
    )
    assert drv._volume_path("x") == str(tmp_path / "v" / "x")
    # peers are expected to have the same layout, unless remote paths are set
    assert drv.replication.remote_dirs() == (str(tmp_path / "r"), str(tmp_path / "s"))


# -- peer listings ----------------------------------------------------------------------

UUID = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-2222-3333-4444-555555555555"


def _line(subid, top, received, path, uuid="aaaaaaaa-0000-0000-0000-000000000000"):
    return (
        f"ID {subid} gen 10 top level {top} received_uuid {received or '-':<36} "
        f"uuid {uuid} path {path}"
    )


def test_listing_keeps_only_the_exact_directory():
    # Two stowkit roots on one peer filesystem: only ours counts.
    out = "\n".join(
        [
            "stowkit-dir 1 5 /tag/received",
            _line(300, 5, OTHER, "other/received/v@2026-01-01T00-00-00.000000"),
            _line(301, 5, UUID, "tag/received/v@2026-01-02T00-00-00.000000"),
            _line(302, 5, OTHER, "tag/received/deeper/received/v@2026-01-03T00-00-00.000000"),
            _line(303, 256, OTHER, "received/v@2026-01-04T00-00-00.000000"),
        ]
    )
    held = transport.parse_listing(out, ["/mnt/b/tag/received"])
    assert [(h.path, h.received_uuid) for h in held] == [
        ("tag/received/v@2026-01-02T00-00-00.000000", UUID)
    ]
    assert held[0].where == "/mnt/b/tag/received"


def test_listing_of_a_directory_in_a_mounted_subvolume():
    # the directory is /srv/bv/snapshots with /srv/bv the subvolume 257 (mounted or not)
    out = "\n".join(
        [
            "stowkit-dir 1 257 /snapshots",
            _line(400, 257, UUID, "snapshots/v@x"),
            _line(401, 5, OTHER, "bv/snapshots/v@y"),
        ]
    )
    assert [h.path for h in transport.parse_listing(out, ["/srv/bv/snapshots"])] == [
        "snapshots/v@x"
    ]


def test_listing_script_names_the_directory(tmp_path):
    """The remote script, run by sh with stand-ins for btrfs and stat."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    root = tmp_path / "peer" / "tag"
    (root / "received").mkdir(parents=True)
    (bindir / "btrfs").write_text(
        "#!/bin/sh\n"
        'case "$1 $2" in\n'
        '"inspect-internal rootid") echo 5 ;;\n'
        f'"subvolume list") echo "{_line(301, 5, UUID, "tag/received/v@a")}"\n'
        f'  echo "{_line(300, 5, OTHER, "x/received/v@a")}" ;;\n'
        "esac\n"
    )
    # the peer's root directory (its subvolume root, inode 256) is tmp/peer
    (bindir / "stat").write_text(
        f'#!/bin/sh\nfor a; do p=$a; done\n[ "$p" = "{tmp_path}/peer" ] && echo 256 || echo 1\n'
    )
    for tool in ("btrfs", "stat"):
        (bindir / tool).chmod(0o755)
    dirs = [str(root / "received"), str(root / "snapshots")]
    proc = subprocess.run(
        ["sh", "-c", transport.remote_command(transport.LIST_SCRIPT, *dirs)],
        env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.splitlines()[0] == "stowkit-dir 1 5 /tag/received"
    held = transport.parse_listing(proc.stdout, dirs)
    assert [h.received_uuid for h in held] == [UUID]


def test_send_ignores_a_same_named_received_directory_elsewhere(tmp_path, monkeypatch):
    """The false "already there": the snapshot sits in another root's received/."""
    drv = registry.load(
        "volume", config.load_conf(), "btrfs", root=str(tmp_path), remote_root="/mnt/b/tag"
    )
    out = "\n".join(
        [
            "stowkit-dir 1 5 /tag/received",
            _line(300, 5, UUID, "other/received/v@2026-01-01T00-00-00.000000"),
            "stowkit-dir 2 5 /tag/snapshots",
            _line(301, 5, OTHER, "tag/snapshots/v@2026-01-01T10:00:00.000000"),
            _line(302, 5, None, "tag/snapshots/v@2026-01-02T10:00:00.000000"),
        ]
    )
    seen = []

    def fake_run(argv, timeout=120, what=""):
        seen.append(argv[-1])
        return out

    monkeypatch.setattr(transport, "run", fake_run)
    held, landed = drv.replication.remote_held(transport.parse_peer("peer", "root", 22), "v")
    # nothing of the other root; buttervolume's received copy in snapshots/ counts
    assert held == {OTHER: "v@2026-01-01T10:00:00.000000"}
    assert landed == set()
    assert "/mnt/b/tag/received" in seen[0] and "/mnt/b/tag/snapshots" in seen[0]


# -- configuration --------------------------------------------------------------------


def test_config_environment_then_ini_then_defaults(tmp_path):
    etc = tmp_path / "etc.ini"
    host = tmp_path / "host.ini"
    host.write_text("[DEFAULT]\nSNAPSHOTS_PATH = /host/snaps\nTIMER = 30\n")
    etc.write_text("[DEFAULT]\nVOLUMES_PATH = /etc/vols\nDTFORMAT = %%Y%%m%%d-%%H%%M%%S\n")
    env = {
        "BUTTERVOLUME_VOLUMES_PATH": "/env/vols",
        "BUTTERVOLUME_TIMER": "",  # empty: does not count, as in buttervolume
        "SSH_PORT": "2222",
    }
    bv = buttervolume.ButtervolumeConfig.load(env, [str(host), str(etc)])
    assert bv.values["VOLUMES_PATH"] == "/env/vols"
    assert bv.values["SNAPSHOTS_PATH"] == "/host/snaps"
    assert bv.values["TIMER"] == "30"
    assert bv.values["DTFORMAT"] == "%Y%m%d-%H%M%S"
    assert bv.values["TEST_REMOTE_PATH"] == "/var/lib/buttervolume/received/"
    assert bv.values["SOCKET"] == "/run/docker/plugins/btrfs.sock"
    assert bv.ssh_port == 2222
    assert bv.given == {"VOLUMES_PATH", "SNAPSHOTS_PATH", "TIMER", "DTFORMAT"}
    defaults = bv.btrfs_defaults(root_is_set=False)
    assert defaults == {
        "volumes_path": "/env/vols",
        "snapshots_path": "/host/snaps",
        "received_path": "/var/lib/buttervolume/received",
        "root": "/env",
        "foreign_time_formats": ["%Y%m%d-%H%M%S", BV],
        "ssh_port": 2222,
    }
    # a stowkit root keeps its layout; only what buttervolume was told about applies
    assert set(bv.btrfs_defaults(root_is_set=True)) == {
        "volumes_path",
        "snapshots_path",
        "foreign_time_formats",
        "ssh_port",
    }


def test_config_defaults_are_buttervolumes(tmp_path):
    bv = buttervolume.ButtervolumeConfig.load({"BUTTERVOLUME_RUNPATH": "/r"}, [])
    assert bv.ssh_port == 1122  # buttervolume's default port for send and sync
    assert bv.values["SOCKET"] == "/r/plugins/btrfs.sock"
    assert bv.schedule_csv == "/etc/buttervolume/schedule.csv"
    assert bv.btrfs_defaults(False)["root"] == "/var/lib/buttervolume"


def test_bad_buttervolume_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        buttervolume.ButtervolumeConfig.load({"SSH_PORT": "x"}, [])
    bad = tmp_path / "c.ini"
    bad.write_text("[DEFAULT]\nDTFORMAT = %Y\n")  # buttervolume needs %% here too
    with pytest.raises(ConfigError):
        buttervolume.ButtervolumeConfig.load({}, [str(bad)])


def test_context_gives_buttervolumes_paths_to_the_driver(tmp_path, monkeypatch):
    conf_file = tmp_path / "s.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")
    bv = buttervolume.ButtervolumeConfig.load(
        {"BUTTERVOLUME_VOLUMES_PATH": str(tmp_path / "bv" / "volumes"), "SSH_PORT": "2200"}, []
    )
    ctx = buttervolume.Context([str(conf_file)], io.StringIO(), bv)
    drv = ctx.driver
    assert drv.volumes_dir == str(tmp_path / "bv" / "volumes")
    assert drv.root == str(tmp_path / "bv")
    assert drv.snapshots_dir == "/var/lib/buttervolume/snapshots"
    assert drv.opts.ssh_port == 2200
    assert ctx.conf[schedule.GROUP].tick == 60.0
    # a stowkit configuration that sets root wins over buttervolume's defaults
    conf_file.write_text(f"[volume_btrfs]\nroot = {tmp_path}/mine\n")
    ctx = buttervolume.Context([str(conf_file)], io.StringIO(), bv)
    assert ctx.driver.root == str(tmp_path / "mine")
    assert ctx.driver.snapshots_dir == str(tmp_path / "mine" / "snapshots")
    assert ctx.driver.volumes_dir == str(tmp_path / "bv" / "volumes")  # it was told


# -- schedule at run ------------------------------------------------------------------


def _ctx(tmp_path, csv_name="schedule.csv"):
    conf_file = tmp_path / "s.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n")
    bv = buttervolume.ButtervolumeConfig.load(
        {"BUTTERVOLUME_SCHEDULE": str(tmp_path / "etc" / csv_name)}, []
    )
    return buttervolume.Context([str(conf_file)], io.StringIO(), bv)


def test_run_takes_over_the_schedule_csv(tmp_path):
    (tmp_path / "etc").mkdir()
    csv = tmp_path / "etc" / "schedule.csv"
    csv.write_text("v1,snapshot,60,True\nv1,purge:4h:1d,120,False\n")
    ctx = _ctx(tmp_path)
    assert buttervolume.take_over_schedule(ctx) == f"imported 2 job(s) from {csv}"
    schedule = ctx.schedule.load()
    assert [(j.volume, j.action, j.minutes, j.active) for j in schedule.jobs] == [
        ("v1", "snapshot", 60.0, True),
        ("v1", "purge:4h:1d", 120.0, False),
    ]
    assert not schedule.paused
    # not again until the file changes: stowkit's own edits are kept across restarts
    ctx.schedule.remove("v1", "snapshot")
    assert buttervolume.take_over_schedule(ctx) is None
    assert len(ctx.schedule.load().jobs) == 1


def test_run_takes_over_a_globally_paused_schedule(tmp_path):
    (tmp_path / "etc").mkdir()
    disabled = tmp_path / "etc" / "schedule.csv.disabled"
    disabled.write_text("v1,snapshot,60,True\n")
    ctx = _ctx(tmp_path)
    assert buttervolume.take_over_schedule(ctx).endswith("(globally paused)")
    schedule = ctx.schedule.load()
    assert schedule.paused and [j.active for j in schedule.jobs] == [True]
    assert buttervolume.take_over_schedule(_ctx(tmp_path, "nothing.csv")) is None


# -- what buttervolume's listing and rm need from the driver ------------------------------

_HOSTILE = ["", "..", "../x", "a/b", "x;touch /tmp/p", "a b", "-rf", ".x", "x" * 300]


@pytest.mark.parametrize("name", _HOSTILE)
def test_listing_status_and_marker_rm_refuse_hostile_names_first(tmp_path, name):
    drv = registry.load("volume", config.load_conf(), "btrfs", root=str(tmp_path / "root"))
    for call in (
        lambda: drv.snapshot_entries(name),
        lambda: drv.volume_status(name),
        lambda: drv.delete_snapshot(f"{name}@2026-01-15T10:30:00.123456@host"),
        lambda: drv.delete_snapshot(f"v1@2026-01-15T10:30:00.123456@{name}/x"),
    ):
        with pytest.raises(InvalidName):
            call()
    assert not (tmp_path / "root").exists()


def test_with_the_catalog_store_the_verbs_and_the_take_over_use_the_catalog(tmp_path, monkeypatch):
    """`[scheduler] store = catalog`: the plugin's scheduler is the agent's catalog jobs, so
    schedule.csv is taken over there (once) and `schedule`/`scheduled` edit and show those,
    never a schedule file nothing runs."""
    from tests.fakes.catalog import served_catalog

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "schedule.csv").write_text("v1,snapshot,60,True\n")
    conf_file = tmp_path / "s.conf"
    conf_file.write_text(f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[scheduler]\nstore = catalog\n")
    env = {"BUTTERVOLUME_SCHEDULE": str(tmp_path / "etc" / "schedule.csv")}
    out = io.StringIO()

    def run(*argv: str) -> int:
        monkeypatch.setattr(buttervolume.ButtervolumeConfig, "load", lambda: bv)
        return buttervolume.main(["--config-file", str(conf_file), *argv], out=out)

    bv = buttervolume.ButtervolumeConfig.load(env, [])
    with served_catalog(tmp_path / "cat", monkeypatch) as catalog:
        assert run("schedule", "purge:4h:1d", "120", "v1") == 0
        assert run("scheduled") == 0
        assert out.getvalue().splitlines() == ["snapshot 60 v1 ", "purge:4h:1d 120 v1 "]
        actions = sorted(j["job_actions"][0]["freezer_action"]["action"]
                         for j in catalog.client_jobs("demo_host-a"))  # fmt: skip
        assert actions == ["stowkit-volume-purge", "stowkit-volume-snapshot"]
        # taken over once: a restart does not bring back a job removed since
        assert run("schedule", "snapshot", "0", "v1") == 0
        ctx = buttervolume.Context([str(conf_file)], io.StringIO(), bv)
        assert buttervolume.take_over_schedule(ctx) is None
        assert [j.action for j in ctx.schedule.load().jobs] == ["purge:4h:1d"]
        assert not (tmp_path / "state" / "schedule.json").exists()
