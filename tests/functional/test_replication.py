"""Replication between the harness's two btrfs filesystems through its real sshd."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import btrfsutil
import pytest

from stowkit.corelib.errors import BackendUnavailable
from tests.fakes.btrfs_hosts import received, wipe
from tests.fakes.harness import REPO


def write(host, volume, name, data):
    (host.path("volumes", volume) / name).write_bytes(data)


def test_full_then_incremental_then_already_there(peers):
    a, b, remote = peers
    a.driver.create_volume("v")
    write(a, "v", "f", b"one" * 1000)
    s1 = a.driver.create_snapshot("v")
    first = a.driver.send_snapshot(s1.name, remote)
    assert not first.incremental and first.bytes_sent > 3000
    write(a, "v", "g", b"two")
    s2 = a.driver.create_snapshot("v")
    second = a.driver.send_snapshot(s2.name, remote)
    assert second.parent == s1.name
    assert second.bytes_sent < first.bytes_sent
    assert received(b) == [s1.name, s2.name]
    assert (b.path("received", s2.name) / "g").read_bytes() == b"two"
    # b sees complete read-only snapshots whose received UUIDs are a's UUIDs
    on_b = {s.name: s for s in b.driver.list_snapshots("v")}
    assert on_b[s2.name].received and on_b[s2.name].received_uuid == s2.uuid
    again = a.driver.send_snapshot(s2.name, remote)
    assert again.already_there and again.bytes_sent == 0
    # the CLI, compressed and rate-limited
    write(a, "v", "h", os.urandom(200_000))
    s3 = a.driver.create_snapshot("v")
    cli = a.stowkit(
        "snapshot", "send", s3.name, remote, "--compress", "--bwlimit", "2M", "-f", "json"
    )
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["mode"] == "incremental" and out["parent"] == s2.name
    assert (b.path("received", s3.name) / "h").stat().st_size == 200_000


def test_incremental_found_by_uuid_not_by_name(peers):
    a, b, remote = peers
    a.driver.create_volume("v")
    s1 = a.driver.create_snapshot("v")
    a.driver.send_snapshot(s1.name, remote)
    # forget the local record of what was sent: the parent is still found from
    # the peer's received UUIDs
    os.unlink(a.path(".sent", "v"))
    s2 = a.driver.create_snapshot("v")
    assert a.driver.send_snapshot(s2.name, remote).parent == s1.name
    # a snapshot of the same name but other data on the peer is not a parent
    s3 = a.driver.create_snapshot("v")
    b.driver.create_volume("other")
    btrfsutil.set_subvolume_read_only(str(b.path("received", s2.name)), False)
    btrfsutil.delete_subvolume(str(b.path("received", s2.name)))
    btrfsutil.create_snapshot(
        str(b.path("volumes", "other")), str(b.path("received", s2.name)), read_only=True
    )
    assert a.driver.send_snapshot(s3.name, remote).parent == s1.name


def test_incremental_after_purge_and_after_restore(peers):
    a, b, remote = peers
    drv = a.driver
    drv.create_volume("v")
    sent = []
    for i in range(3):
        write(a, "v", f"f{i}", b"x" * (i + 1))
        snap = drv.create_snapshot("v")
        drv.send_snapshot(snap.name, remote)
        sent.append(snap.name)
    local_only = drv.create_snapshot("v").name
    # three hours on, 2h:2h condemns everything; the last one sent stays, and the newest
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)
    result = drv.purge("v", "2h:2h", now=later)
    assert result.deleted == sent[:2]
    assert result.protected == {
        sent[2]: f"last sent to root@{remote}:{drv.opts.ssh_port}",
        local_only: "newest snapshot",
    }
    write(a, "v", "after-purge", b"p")
    s4 = drv.create_snapshot("v")
    after_purge = drv.send_snapshot(s4.name, remote)
    assert after_purge.parent == sent[2]  # still incremental
    # restore an older snapshot, change data, send again: still incremental
    restored = drv.restore(sent[2])
    assert not (a.path("volumes", "v") / "after-purge").exists()
    write(a, "v", "after-restore", b"r")
    s5 = drv.create_snapshot("v")
    after_restore = drv.send_snapshot(s5.name, remote)
    assert after_restore.incremental
    assert after_restore.parent in {s4.name, restored.backup}
    got = b.path("received", s5.name)
    assert sorted(os.listdir(got)) == ["after-restore", "f0", "f1", "f2"]


def test_killed_send_leaves_nothing_on_the_peer(peers):
    a, b, remote = peers
    drv = a.driver
    drv.create_volume("v")
    s1 = drv.create_snapshot("v")
    drv.send_snapshot(s1.name, remote)
    write(a, "v", "big", os.urandom(24 << 20))
    s2 = drv.create_snapshot("v")
    # 24 MiB at 1 MiB/s: the receive is under way long before it could finish
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "stowkit.cli.app", "--config-file", str(a.config_file),
            "snapshot", "send", s2.name, remote, "--bwlimit", "1M",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    partial = b.path("received", s2.name)
    try:
        deadline = time.monotonic() + 60
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partial.exists(), proc.stderr.read() if proc.poll() is not None else "no receive"
        time.sleep(1)  # some data is in
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the peer notices the cut stream and deletes the partial subvolume
    deadline = time.monotonic() + 60
    while partial.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not partial.exists()
    assert received(b) == [s1.name]
    assert [s.name for s in b.driver.list_snapshots()] == [s1.name]
    # and the next send works, incrementally from what the peer really holds
    retry = drv.send_snapshot(s2.name, remote)
    assert retry.parent == s1.name
    assert (b.path("received", s2.name) / "big").stat().st_size == 24 << 20


def test_failed_receive_reports_and_leaves_nothing(peers):
    a, b, remote = peers
    drv = a.driver
    drv.create_volume("v")
    s1 = drv.create_snapshot("v")
    # a "send" that writes garbage instead of a stream: the peer's receive
    # fails, the error comes back in one line, the peer is clean
    bad = a.make_driver(btrfs_command="/bin/echo")
    with pytest.raises(BackendUnavailable, match="ssh/receive failed"):
        bad.send_snapshot(s1.name, remote)
    assert received(b) == []
    unreachable = a.make_driver(ssh_port=1)
    with pytest.raises(BackendUnavailable):
        unreachable.send_snapshot(s1.name, remote)


def test_sync_pulls_newer_files_after_a_local_snapshot(peers):
    a, b, remote = peers
    a.driver.create_volume("shared")
    b.driver.create_volume("shared")
    write(a, "shared", "only-here", b"a")
    write(a, "shared", "both", b"older on a")
    os.utime(a.path("volumes", "shared", "both"), (1_000_000_000, 1_000_000_000))
    write(b, "shared", "both", b"newer on b")
    write(b, "shared", "only-there", b"b")
    write(b, "shared", "stale", b"b's")
    write(a, "shared", "stale", b"a's newer")
    os.utime(b.path("volumes", "shared", "stale"), (1_000_000_000, 1_000_000_000))
    before = {s.name for s in a.driver.list_snapshots("shared")}
    result = a.driver.sync_volume("shared", [remote])
    assert result.ok, result.peers
    assert result.backup not in before
    assert (a.path("snapshots", result.backup) / "both").read_bytes() == b"older on a"
    vol = a.path("volumes", "shared")
    assert (vol / "only-here").read_bytes() == b"a"  # nothing deleted
    assert (vol / "only-there").read_bytes() == b"b"  # new files pulled
    assert (vol / "both").read_bytes() == b"newer on b"  # newer data pulled
    assert (vol / "stale").read_bytes() == b"a's newer"  # newer local data kept
    # one unreachable peer: reported, the others still synced, the CLI fails
    cli = a.stowkit("volume", "sync", "shared", "127.0.0.1:1", remote)
    assert cli.returncode == BackendUnavailable.exit_code
    assert "failed from 1 host" in cli.stderr
    assert "127.0.0.1:1" in cli.stdout and "ok" in cli.stdout


def test_a_copy_in_another_roots_received_is_not_there(peers):
    """Two stowkit roots on one peer filesystem: a snapshot received by one root
    is not "already there" for the other (the peer's subvolume list covers the
    whole filesystem; only the configured received/ counts)."""
    a, b, remote = peers
    a.driver.create_volume("v")
    write(a, "v", "f", b"one" * 1000)
    s1 = a.driver.create_snapshot("v")
    assert not a.driver.send_snapshot(s1.name, remote).already_there
    second_root = b.root.parent / f"{b.root.name}-second"
    other = a.make_driver(remote_root=str(second_root))
    try:
        first = other.send_snapshot(s1.name, remote)
        assert not first.already_there and not first.incremental and first.bytes_sent > 3000
        got = second_root / "received" / s1.name
        assert (got / "f").read_bytes() == b"one" * 1000
        assert btrfsutil.subvolume_info(str(got)).received_uuid != bytes(16)
        # and from then on, incremental against what that root holds
        write(a, "v", "g", b"two")
        s2 = a.driver.create_snapshot("v")
        assert other.send_snapshot(s2.name, remote).parent == s1.name
        assert other.send_snapshot(s2.name, remote).already_there
        # the first root still holds only s1 and goes on incrementally from it
        assert received(b) == [s1.name]
        assert a.driver.send_snapshot(s2.name, remote).parent == s1.name
    finally:
        wipe(second_root)


def test_one_ssh_connection_per_send(peers, tmp_path):
    """Discovery, receive and checks share one ssh connection: full, incremental,
    compressed and rate-limited, and "already there" sends each open exactly one."""
    a, b, remote = peers
    log = tmp_path / "connections"
    wrapper = tmp_path / "ssh"
    real = shutil.which("ssh")
    assert real
    wrapper.write_text(f'#!/bin/sh\necho connection >> {shlex.quote(str(log))}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    drv = a.make_driver(ssh_command=str(wrapper))

    def connections():
        count = len(log.read_text().splitlines()) if log.exists() else 0
        log.unlink(missing_ok=True)
        return count

    drv.create_volume("v")
    write(a, "v", "f", os.urandom(300_000))
    s1 = drv.create_snapshot("v")
    full = drv.send_snapshot(s1.name, remote)
    assert connections() == 1 and not full.incremental and full.bytes_sent > 300_000
    write(a, "v", "g", b"two" * 50_000)
    s2 = drv.create_snapshot("v")
    incr = drv.send_snapshot(s2.name, remote, compress=True, bwlimit=4 << 20)
    assert connections() == 1 and incr.parent == s1.name
    assert 0 < incr.bytes_sent < 150_000  # compressed: fewer bytes than the new file
    assert (b.path("received", s2.name) / "g").read_bytes() == b"two" * 50_000
    again = drv.send_snapshot(s2.name, remote)
    assert connections() == 1 and again.already_there and again.bytes_sent == 0
    assert received(b) == [s1.name, s2.name]
