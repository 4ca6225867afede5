"""stowkit on a tree buttervolume left, on the harness's real btrfs and sshd.

The tree is made as buttervolume 3.13 makes it: volumes/, snapshots/ and
received/ at separate paths, snapshots named VOLUME@ + DTFORMAT in local
time, sent markers VOLUME@STAMP@HOST (read-only snapshots of the sent
snapshot) and, on the peer, a copy received into the peer's snapshots/.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import btrfsutil

from tests.fakes.buttervolume import BV
from tests.fakes.harness import REPO


def bv_name(volume, ago):
    return f"{volume}@{(dt.datetime.now() - ago).strftime(BV)}"


def test_stowkit_takes_over_a_buttervolume_tree(peers, paris):
    a, b, remote = peers
    vols, snaps, recv = (a.root / "bv-volumes", a.root / "bv-snapshots", a.root / "bv-received")
    peer_snaps, peer_recv = b.root / "bv-snapshots", b.root / "bv-received"
    peer_snaps.mkdir(parents=True)
    drv = a.make_driver(
        volumes_path=str(vols),
        snapshots_path=str(snaps),
        received_path=str(recv),
        remote_snapshots_path=str(peer_snaps),
        remote_received_path=str(peer_recv),
    )
    drv.create_volume("v1")
    assert (vols / "v1").is_dir() and not (a.root / "volumes" / "v1").exists()
    (vols / "v1" / "f").write_bytes(b"old")
    names = {}
    for key, ago in (("3d", dt.timedelta(days=3)), ("2d", dt.timedelta(days=2))):
        names[key] = bv_name("v1", ago)
        btrfsutil.create_snapshot(str(vols / "v1"), str(snaps / names[key]), read_only=True)
    (vols / "v1" / "f").write_bytes(b"recent")
    names["90m"] = bv_name("v1", dt.timedelta(minutes=90))
    btrfsutil.create_snapshot(str(vols / "v1"), str(snaps / names["90m"]), read_only=True)
    # buttervolume sent the 2-day-old one to the peer, into the peer's snapshots/
    send = subprocess.Popen(
        ["btrfs", "send", "-q", str(snaps / names["2d"])], stdout=subprocess.PIPE
    )
    subprocess.run(
        ["btrfs", "receive", str(peer_snaps)], stdin=send.stdout, check=True, capture_output=True
    )
    assert send.wait() == 0
    for key, host in (("2d", remote), ("3d", "oldhost"), ("2d", "oldhost")):
        marker = snaps / f"{names[key]}@{host}"
        btrfsutil.create_snapshot(str(snaps / names[key]), str(marker), read_only=True)
    (vols / "v1" / "f").write_bytes(b"now")
    mine = drv.create_snapshot("v1").name

    # listed, oldest first by real time, markers not counted as snapshots
    listed = [s.name for s in drv.list_snapshots("v1")]
    assert listed == [names["3d"], names["2d"], names["90m"], mine]
    assert drv.get_volume("v1").snapshot_count == 4
    assert [v.snapshot_count for v in drv.list_volumes()] == [4]
    sent = drv.sent("v1")
    assert sent[remote]["snapshot"] == names["2d"] and sent["oldhost"]["snapshot"] == names["2d"]

    # the next send is incremental from buttervolume's copy on the peer
    result = drv.send_snapshot(mine, remote)
    assert result.parent == names["2d"] and not result.already_there
    assert (peer_recv / mine / "f").read_bytes() == b"now"
    # stowkit's record supersedes buttervolume's marker for that host
    assert not (snaps / f"{names['2d']}@{remote}").exists()
    assert (snaps / f"{names['2d']}@oldhost").exists()

    # a buttervolume snapshot restores (by name, and as the newest before a newer one)
    restored = drv.restore(names["90m"])
    assert (vols / "v1" / "f").read_bytes() == b"recent"
    assert restored.snapshot == names["90m"] and restored.backup

    # purge by pattern: old buttervolume snapshots go, the stale marker too; the
    # snapshot oldhost last got stays
    dry = drv.purge("v1", "1h:1d", dry_run=True)
    assert names["3d"] in dry.deleted and f"{names['3d']}@oldhost" in dry.deleted
    assert dry.protected[names["2d"]] == "last sent to oldhost"
    assert (snaps / names["3d"]).exists()
    done = drv.purge("v1", "1h:1d")
    assert done.deleted == dry.deleted
    assert not (snaps / names["3d"]).exists() and not (snaps / f"{names['3d']}@oldhost").exists()
    assert (snaps / names["2d"]).exists() and (snaps / f"{names['2d']}@oldhost").exists()

    # stowkit-buttervolume reads buttervolume's environment for its paths
    env = dict(
        os.environ,
        BUTTERVOLUME_VOLUMES_PATH=str(vols),
        BUTTERVOLUME_SNAPSHOTS_PATH=str(snaps),
        BUTTERVOLUME_TEST_REMOTE_PATH=str(recv),
    )
    cli = subprocess.run(
        [sys.executable, "-m", "stowkit.cli.compat.buttervolume", "--config-file",
         str(a.config_file), "snapshots", "v1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    # as buttervolume lists them: the directory's order, its sent markers included
    assert cli.stdout.split() == list(drv.snapshot_entries("v1"))
    assert f"{names['2d']}@oldhost" in cli.stdout.split()
    assert set(cli.stdout.split()) >= {s.name for s in drv.list_snapshots("v1")}
    rm = subprocess.run(
        [sys.executable, "-m", "stowkit.cli.compat.buttervolume", "--config-file",
         str(a.config_file), "rm", names["90m"]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rm.returncode == 0, rm.stderr
    assert not (snaps / names["90m"]).exists()
    # buttervolume's rm deletes a sent marker too, as it lists them
    marker = f"{names['2d']}@oldhost"
    rm = subprocess.run(
        [sys.executable, "-m", "stowkit.cli.compat.buttervolume", "--config-file",
         str(a.config_file), "rm", marker],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert rm.returncode == 0, rm.stderr
    assert not (snaps / marker).exists() and (snaps / names["2d"]).exists()
    assert "oldhost" not in drv.sent("v1")
