"""stowkit as a *managed* Docker plugin: built from Debian packages, run by a real dockerd.

``contrib/docker-plugin/build.sh`` makes the plugin (config.json and a Debian 12 rootfs
from mmdebstrap, its base cached under $STOWKIT_CACHE); dockerd creates, configures and
enables it, a container writes through a volume of its driver, and what it wrote is
on the harness btrfs.  The plugin's snapshot endpoint and its scheduler (a job added
from the host to the schedule file it shares) run inside the plugin.  Disable and rm
leave no mount behind.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid

import btrfsutil
import pytest

from tests.commands import STOWKIT
from tests.fakes.btrfs_hosts import wipe
from tests.fakes.docker_plugin import plugin_call
from tests.fakes.harness import missing

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = REPO / "contrib" / "docker-plugin" / "build.sh"
CONFIG = REPO / "contrib" / "docker-plugin" / "config.json"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> pathlib.Path:
    """The plugin built by the recipe (the Debian base comes from the cache when warm)."""
    if shutil.which("mmdebstrap") is None:
        missing("mmdebstrap is not installed (apt-get install mmdebstrap)")
    if os.geteuid() != 0:
        missing("building the managed plugin needs root (mmdebstrap, chroot)")
    out = tmp_path_factory.mktemp("managed-plugin")
    # The wheels are built by the interpreter under test: its installed versions pin them.
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BUILD), str(out)], env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stderr[-6000:]}"
    return out


def mounts_naming(*needles: str) -> list[str]:
    """Lines of this namespace's mountinfo whose root or mount point holds a needle."""
    lines = pathlib.Path("/proc/self/mountinfo").read_text().splitlines()
    return [ln for ln in lines if any(n in " ".join(ln.split()[3:5]) for n in needles)]


def test_the_built_config_is_the_contrib_one_and_its_entrypoint_runs(plugin_dir):
    config = json.loads((plugin_dir / "config.json").read_text())
    assert config == json.loads(CONFIG.read_text())
    entry = plugin_dir / "rootfs" / config["Entrypoint"][0].lstrip("/")
    assert os.access(entry, os.X_OK), entry
    assert config["Interface"]["Socket"] == "stowkit.sock"
    assert config["Entrypoint"][-1] == f"/run/docker/plugins/{config['Interface']['Socket']}"
    assert {m["Name"] for m in config["Mounts"] if "source" in m.get("Settable", [])} == {
        "state", "config", "ssh",
    }  # fmt: skip
    state = next(m for m in config["Mounts"] if m["Name"] == "state")
    assert state["Destination"] == config["PropagatedMount"]  # volumes must reach dockerd
    # A small rootfs: no apt lists, no man pages, of the docs only the copyrights.
    rootfs = plugin_dir / "rootfs"
    assert not [
        p for p in (rootfs / "var/lib/apt/lists").rglob("*") if p.is_file() and p.name != "lock"
    ]
    assert not [p for p in (rootfs / "usr/share/man").rglob("*") if p.is_file()]
    assert {p.name for p in (rootfs / "usr/share/doc").rglob("*") if p.is_file()} <= {"copyright"}


def test_create_enable_volume_snapshot_schedule_disable_rm(service, plugin_dir, tmp_path):
    btrfs = service("btrfs")
    dock = service("docker")
    tag = uuid.uuid4().hex[:8]
    name = f"stowkit-managed-{tag}"
    vol = f"mv-{tag}"
    state = pathlib.Path(btrfs["mounts"][0]) / f"managed-{tag}"
    state.mkdir()
    etc = tmp_path / "etc-stowkit"
    etc.mkdir()
    # Read by the plugin through the config mount: new volumes get zstd.
    (etc / "stowkit.conf").write_text("[volume_btrfs]\ncompression = zstd\n")
    ssh = tmp_path / "ssh"
    ssh.mkdir(mode=0o700)
    # The host's view of the same state directory, for the schedule and checks.
    host_conf = tmp_path / "host.conf"
    host_conf.write_text(f"[DEFAULT]\nstate_dir = {state}\n")

    def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["docker", "-H", dock["host"], *args], capture_output=True, text=True, timeout=300
        )
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
        return proc

    def stowkit(*args: str) -> str:
        proc = subprocess.run([*STOWKIT, "--config-file", str(host_conf), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    plugin_id = ""
    # What is left to undo: asking dockerd about a volume it does not have makes it
    # probe every legacy plugin socket other tests left, dead ones too (minutes).
    left = {"plugin": False, "volume": False}
    try:
        left["plugin"] = True
        docker("plugin", "create", name, str(plugin_dir))
        plugin_id = docker("plugin", "inspect", "-f", "{{.Id}}", name).stdout.strip()
        docker("plugin", "set", name, f"state.source={state}", f"config.source={etc}",
               f"ssh.source={ssh}")  # fmt: skip
        docker("plugin", "enable", name)

        left["volume"] = True
        docker("volume", "create", "-d", name, vol)
        subvol = state / "btrfs" / "volumes" / vol
        assert btrfsutil.is_subvolume(str(subvol))
        prop = subprocess.run(["btrfs", "property", "get", str(subvol), "compression"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "zstd" in prop.stdout, prop  # the config mount was read
        docker("run", "--rm", *dock["run_options"], "-v", f"{vol}:/data", dock["image"],
               "sh", "-c", "echo hi > /data/f")  # fmt: skip
        assert (subvol / "f").read_text() == "hi\n"
        inspect = json.loads(docker("volume", "inspect", vol).stdout)[0]
        assert inspect["Driver"] == f"{name}:latest"

        # The plugin's socket, where dockerd reaches it (buttervolume's snapshot extension).
        socks = [pathlib.Path(d) / plugin_id / "stowkit.sock"
                 for d in (dock["plugins_dir"], f"{dock['exec_root']}/plugins")]  # fmt: skip
        sock = next((s for s in socks if s.is_socket()), None)
        assert sock is not None, f"no plugin socket among {socks}"
        snap = plugin_call(str(sock), "/VolumeDriver.Snapshot", {"Name": vol})
        assert snap["Err"] == "" and snap["Snapshot"].startswith(f"{vol}@"), snap
        taken = state / "btrfs" / "snapshots" / snap["Snapshot"]
        assert btrfsutil.get_subvolume_read_only(str(taken))
        assert (taken / "f").read_text() == "hi\n"

        # The scheduler inside the plugin runs a job the host adds to the shared file.
        stowkit("schedule", "add", vol, "snapshot", "60")
        deadline = time.monotonic() + 90
        job: dict = {}
        while time.monotonic() < deadline:
            (job,) = json.loads(stowkit("schedule", "list", "-f", "json"))
            if job["runs"]:
                break
            time.sleep(0.5)
        assert job["runs"] == 1 and job["last_result"] == "ok", job
        scheduled = state / "btrfs" / "snapshots" / job["last_message"]
        assert scheduled != taken and (scheduled / "f").read_text() == "hi\n"
        stowkit("schedule", "remove", vol, "snapshot")

        docker("volume", "rm", vol)
        left["volume"] = False
        assert not subvol.exists()
        docker("plugin", "disable", name)
        docker("plugin", "rm", name)
        left["plugin"] = False
        assert name not in docker("plugin", "ls", "--format", "{{.Name}}").stdout
        assert mounts_naming(plugin_id, f"/managed-{tag}") == []
        assert not (pathlib.Path(dock["data_root"]) / "plugins" / plugin_id).exists()
    finally:
        if left["volume"]:
            docker("volume", "rm", "-f", vol, check=False)
        if left["plugin"]:
            docker("plugin", "disable", "-f", name, check=False)
            docker("plugin", "rm", "-f", name, check=False)
        if not mounts_naming(f"/managed-{tag}"):  # never delete through a live bind
            wipe(state)
