"""Real buttervolume 3.13 first, then stowkit on what it left.

buttervolume runs (``buttervolume run`` from its own venv) on a harness btrfs
with its own environment variables: volumes are created through its plugin
socket and through the harness dockerd, data is written, snapshots taken with
its CLI, a schedule set (snapshot, purge, replicate), and its scheduler
replicates once to the second host (the harness's other btrfs, over the
harness sshd).  buttervolume is stopped and ``stowkit-buttervolume`` starts
on the same paths with the same environment: the checks below are what a
user moving over relies on.

The second host is this machine again: buttervolume receives into the path
of its own SNAPSHOTS_PATH on the peer, so an ``ssh`` wrapper first on its
PATH maps host a's tree onto host b's in the remote command, as a second
machine with the same layout would hold it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid

import btrfsutil
import pytest

from stowkit.corelib.schedule.filestore import ScheduleStore
from tests.fakes.btrfs_hosts import ssh_settings, wipe
from tests.fakes.docker_plugin import PLUGINS_DIR, plugin_call
from tests.fakes.harness import REPO, missing
from tools.stack.buttervolume_venv import VENV, ensure_buttervolume

BV_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"  # buttervolume's DTFORMAT


def wait_for(what, probe, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


class Server:
    """A plugin process (buttervolume's or stowkit's) on a socket, stopped by its pid."""

    def __init__(self, argv, env, log: pathlib.Path, socket: str) -> None:
        self.log, self.socket = log, socket
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

        def up():
            if self.proc.poll() is not None:
                pytest.fail(f"{argv[0]} exited: {log.read_text()}")
            try:
                return plugin_call(socket, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
            except OSError:
                return False

        wait_for(f"{argv} on {socket}", up)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture
def setup(service, tmp_path):
    btrfs, sshd, dock = service("btrfs"), service("sshd"), service("docker")
    try:
        program = ensure_buttervolume(VENV)
    except (OSError, subprocess.SubprocessError) as exc:
        missing(f"buttervolume 3.13 could not be installed into {VENV}: {exc}")
    tag = f"bvreal-{uuid.uuid4().hex[:8]}"
    a, b = pathlib.Path(btrfs["mounts"][0]) / tag, pathlib.Path(btrfs["mounts"][1]) / tag
    for d in ("volumes", "snapshots", "received"):
        (a / d).mkdir(parents=True)
        (b / d).mkdir(parents=True)
    ssh = shutil.which("ssh")
    assert ssh
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "ssh"
    # host b holds host a's tree at its own mount: the remote command's paths are rewritten
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"args = [arg.replace({str(a)!r}, {str(b)!r}) for arg in sys.argv[1:]]\n"
        f"os.execv({ssh!r}, [{ssh!r}, *{sshd['ssh_options']!r}, *args])\n"
    )
    wrapper.chmod(0o755)
    sock = f"{PLUGINS_DIR}/{tag}.sock"
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "BUTTERVOLUME_VOLUMES_PATH": f"{a}/volumes/",
        "BUTTERVOLUME_SNAPSHOTS_PATH": f"{a}/snapshots/",
        "BUTTERVOLUME_TEST_REMOTE_PATH": f"{a}/received/",
        "BUTTERVOLUME_SOCKET": sock,
        "BUTTERVOLUME_SCHEDULE": str(tmp_path / "schedule.csv"),
        "BUTTERVOLUME_TIMER": "1",
        "BUTTERVOLUME_LOGLEVEL": "INFO",
        "SSH_PORT": str(sshd["port"]),
    }
    env.pop("DOCKER_HOST", None)
    # What stowkit needs beyond buttervolume's settings: its own state, the key
    # buttervolume's ssh found in its user's configuration, and where the second
    # host (this machine again) keeps its tree.
    conf = tmp_path / "stowkit.conf"
    settings = ssh_settings(sshd)
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path}/state\n[volume_btrfs]\n"
        f"ssh_key = {settings['ssh_key']}\nssh_options = {','.join(settings['ssh_options'])}\n"
        f"remote_root = {b}\n"
    )
    os.makedirs(PLUGINS_DIR, exist_ok=True)

    def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["docker", "-H", dock["host"], *args], capture_output=True, text=True, timeout=180
        )
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
        return proc

    def bv(*args: str) -> subprocess.CompletedProcess:
        """buttervolume's own CLI, on whatever serves its socket."""
        return subprocess.run(
            [str(program), *args], env=env, capture_output=True, text=True, timeout=300
        )

    def sk(*args: str) -> subprocess.CompletedProcess:
        """stowkit-buttervolume, one-shot, with buttervolume's environment."""
        return subprocess.run(
            [sys.executable, "-m", "stowkit.cli.compat.buttervolume", "--config-file", str(conf),
             *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    servers: list[Server] = []
    ctx = {
        "a": a, "b": b, "tag": tag, "sock": sock, "env": env, "conf": conf, "tmp": tmp_path,
        "program": program, "docker": docker, "bv": bv, "sk": sk, "servers": servers,
        "image": dock["image"], "containers": [],
    }  # fmt: skip
    try:
        yield ctx
    finally:
        try:
            for c in ctx["containers"]:
                docker("rm", "-f", c, check=False)
            if ctx.get("docker_volume"):
                # dockerd removes a plugin's volume only through the plugin
                if not any(srv.proc.poll() is None for srv in servers):
                    servers.append(stowkit_server(ctx, "cleanup"))
                docker("volume", "rm", "-f", ctx["docker_volume"], check=False)
        finally:
            for srv in servers:
                srv.stop()
            for root in (a, b):
                wipe(root)
            if os.path.exists(sock):
                os.unlink(sock)


def stowkit_server(ctx, label: str) -> Server:
    """``stowkit-buttervolume run`` on buttervolume's socket, with its environment."""
    argv = [sys.executable, "-m", "stowkit.cli.compat.buttervolume", "--config-file",
            str(ctx["conf"]), "run"]  # fmt: skip
    return Server(argv, ctx["env"], ctx["tmp"] / f"stowkit-{label}.log", ctx["sock"])


def test_buttervolume_then_stowkit(setup):
    s = setup
    a, b, sock, env, bv, sk, docker = (
        s[k] for k in ("a", "b", "sock", "env", "bv", "sk", "docker")
    )
    dvol = "dvol-" + s["tag"]
    peer = "127.0.0.1"

    # -- buttervolume 3.13 runs ------------------------------------------------------------
    butter = Server([str(s["program"]), "run"], env, s["tmp"] / "buttervolume.log", sock)
    s["servers"].append(butter)
    for name in ("old1", "old2"):
        assert plugin_call(sock, "/VolumeDriver.Create", {"Name": name}) == {"Err": ""}
    (a / "volumes" / "old1" / "f").write_text("one")
    snap1 = bv("snapshot", "old1").stdout.strip()
    (a / "volumes" / "old1" / "f").write_text("two")
    snap2 = bv("snapshot", "old1").stdout.strip()
    (a / "volumes" / "old1" / "f").write_text("three")
    assert snap1.startswith("old1@") and snap2.startswith("old1@")
    # a volume Docker knows under buttervolume's driver name, written by a container
    docker("volume", "create", "-d", s["tag"], dvol)
    s["docker_volume"] = dvol
    docker("run", "--rm", *["--network", "none"], "-v", f"{dvol}:/data", s["image"],
           "sh", "-c", "echo from-buttervolume > /data/f")  # fmt: skip
    # the schedule: buttervolume's scheduler runs each job at its next tick
    for action in ("snapshot", "purge:1h:1d", f"replicate:{peer}"):
        assert bv("schedule", action, "60", "old1").returncode == 0
    marker = wait_for(
        "buttervolume's scheduled replication",
        lambda: [n for n in os.listdir(a / "snapshots") if n.endswith("@" + peer)],
    )[0]
    replicated = marker.rsplit("@", 1)[0]
    assert (b / "snapshots" / replicated / "f").read_text() == "three"  # on the second host
    # what buttervolume's CLI prints for this state
    bv_snapshots = bv("snapshots", "old1").stdout
    bv_scheduled = bv("scheduled").stdout
    assert marker in bv_snapshots.splitlines() and snap1 in bv_snapshots.splitlines()
    assert bv_scheduled.splitlines()[0] == "snapshot 60 old1 "
    assert butter.stop() == 0

    # -- stowkit on the same paths, with buttervolume's environment ---------------------------
    # the same output, line for line, for the same state
    assert sk("snapshots", "old1").stdout == bv_snapshots
    assert sk("scheduled").stdout == bv_scheduled
    # a buttervolume snapshot restores (the backup is printed, as buttervolume does)
    restored = sk("restore", snap1)
    assert restored.returncode == 0, restored.stderr
    backup = restored.stdout.strip()
    assert backup.startswith("old1@") and (a / "snapshots" / backup).is_dir()
    assert (a / "volumes" / "old1" / "f").read_text() == "one"
    # purge by pattern: a buttervolume snapshot three days old (aged by its name,
    # the only time buttervolume keeps) goes; the newest sent to the peer stays
    aged = "old1@" + (dt.datetime.now() - dt.timedelta(days=3)).strftime(BV_FORMAT)
    os.rename(a / "snapshots" / snap2, a / "snapshots" / aged)
    dry = sk("purge", "--dryrun", "1h:1d", "old1")
    assert dry.returncode == 0 and dry.stdout == "", dry.stderr
    assert f"(Dry run) Would delete snapshot {aged}" in dry.stderr.splitlines()
    assert (a / "snapshots" / aged).exists()
    done = sk("purge", "1h:1d", "old1")
    assert done.returncode == 0 and done.stdout == ""
    assert f"Deleted snapshot {aged}" in done.stderr.splitlines()
    assert not (a / "snapshots" / aged).exists() and (a / "snapshots" / replicated).exists()
    # the next send to the second host is incremental from buttervolume's copy there
    (a / "volumes" / "old1" / "g").write_text("after takeover")
    mine = sk("snapshot", "old1").stdout.strip()
    sent = sk("send", peer, mine)
    assert sent.returncode == 0 and sent.stdout == "", sent.stderr
    assert sent.stderr.splitlines()[-1] == f"Sent {mine} to {peer} (incremental from {replicated})"
    assert (b / "received" / mine / "g").read_text() == "after takeover"

    # -- stowkit-buttervolume run: the socket, the schedule, buttervolume's CLI, Docker --------
    stow = stowkit_server(s, "run")
    s["servers"].append(stow)
    listed = plugin_call(sock, "/VolumeDriver.List")["Volumes"]
    assert {v["Name"] for v in listed} == {"old1", "old2", dvol}
    # buttervolume's three jobs run on in stowkit's scheduler; its replicate too
    store = ScheduleStore(str(s["tmp"] / "state" / "schedule.json"))

    def replicated_by_stowkit():
        jobs = {j.action: j for j in store.load().jobs}
        job = jobs.get(f"replicate:{peer}")
        return job if job is not None and job.last_result is not None else None

    job = wait_for("stowkit's scheduled replication", replicated_by_stowkit)
    assert job.last_result == "ok" and "(incremental)" in job.last_message, job.last_message
    assert {j.action for j in store.load().jobs} == {"snapshot", "purge:1h:1d", f"replicate:{peer}"}

    # buttervolume's own CLI against stowkit's socket, verb by verb
    snap = bv("snapshot", "old2")
    assert snap.returncode == 0 and snap.stdout.strip().startswith("old2@"), snap.stderr
    new = snap.stdout.strip()
    assert bv("snapshots", "old2").stdout.splitlines() == [new]
    assert bv("snapshots", "old1").stdout == sk("snapshots", "old1").stdout
    assert bv("schedule", "snapshot", "30", "old2").returncode == 0
    assert bv("scheduled").stdout == sk("scheduled").stdout
    assert "snapshot 30 old2 " in bv("scheduled").stdout.splitlines()
    assert bv("schedule", "snapshot", "pause", "old2").returncode == 0
    assert "snapshot 30 old2 (paused)" in bv("scheduled").stdout.splitlines()
    assert bv("scheduled", "pause").returncode == 0
    paused = bv("scheduled")
    assert paused.returncode == 1 and "Schedule is globally paused" in paused.stderr
    assert sk("scheduled").returncode == 1
    assert bv("scheduled", "resume").returncode == 0
    assert bv("schedule", "snapshot", "delete", "old2").returncode == 0
    back = bv("restore", new)
    assert back.returncode == 0 and back.stdout.strip().startswith("old2@"), back.stderr
    assert bv("clone", "old2", "old3").stdout == "old3\n"
    assert (a / "volumes" / "old3").is_dir()
    assert bv("restore", new, "old4").stdout == ""  # a new target: no backup to print
    (a / "volumes" / "old1" / "h").write_text("by buttervolume's CLI")
    later = bv("snapshot", "old1").stdout.strip()
    assert bv("send", peer, later).returncode == 0
    assert (b / "received" / later / "h").read_text() == "by buttervolume's CLI"
    btrfsutil.create_subvolume(str(b / "volumes" / "old1"))
    (b / "volumes" / "old1" / "from-peer").write_text("pulled")
    synced = bv("sync", "old1", peer)
    assert synced.returncode == 0, synced.stderr
    assert (a / "volumes" / "old1" / "from-peer").read_text() == "pulled"
    assert bv("rm", new).returncode == 0
    assert new not in os.listdir(a / "snapshots")
    assert bv("purge", "--dryrun", "1h:1d", "old2").returncode == 0
    bad = bv("purge", "nonsense", "old2")
    assert bad.returncode == 1 and "ERROR" in bad.stderr

    # Docker mounts the volume it bound to buttervolume's driver name, through stowkit
    out = docker("run", "--rm", *["--network", "none"], "-v", f"{dvol}:/data", s["image"],
                 "cat", "/data/f").stdout  # fmt: skip
    assert out == "from-buttervolume\n"
    inspect = json.loads(docker("volume", "inspect", dvol).stdout)[0]
    assert inspect["Driver"] == s["tag"] and inspect["Mountpoint"] == str(a / "volumes" / dvol)
    assert inspect["Status"]["snapshots"] == 0 and inspect["Status"]["mounts"] == 0
    status = plugin_call(sock, "/VolumeDriver.Get", {"Name": "old1"})["Volume"]["Status"]
    assert status["mounts"] == 0 and status["snapshots"] >= 3
    # the newest: what sync took before it pulled
    assert status["newest_snapshot"] == sk("snapshots", "old1").stdout.split()[-1]
    assert any(r["snapshot"] == later for r in status["replication"].values())
    docker("volume", "rm", dvol)
    s["docker_volume"] = None
    assert not (a / "volumes" / dvol).exists()
    assert stow.stop() == 0
    assert not os.path.exists(sock)
