"""A real dockerd uses ``stowkit plugin serve`` as its volume driver, on a real btrfs."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid

import btrfsutil
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
PLUGINS_DIR = "/run/docker/plugins"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.unix_path)


def plugin_call(sock: str, endpoint: str, body: dict | None = None) -> dict:
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("POST", endpoint, body=json.dumps(body or {}))
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def delete_tree(root: pathlib.Path) -> None:
    """Remove a test root: subvolumes first (read-only ones too), then the rest."""
    if not root.exists():
        return
    subvols = []
    for kind in ("volumes", "snapshots", "received", ".detached"):
        d = root / kind
        if d.is_dir():
            subvols += [p for p in d.iterdir() if p.is_dir()]
    for path in subvols:
        subprocess.run(["btrfs", "property", "set", "-f", "-ts", str(path), "ro", "false"],
                       capture_output=True, timeout=60)  # fmt: skip
        subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True, timeout=60)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], timeout=60)


class PluginProcess:
    """``stowkit plugin serve`` on a private socket and a private btrfs root."""

    def __init__(self, btrfs_mount: str, tmp: pathlib.Path, extra_conf: str = "") -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"stowkit-test-{tag}"
        self.socket = f"{PLUGINS_DIR}/{self.name}.sock"
        self.root = pathlib.Path(btrfs_mount) / f"plugin-test-{tag}"
        self.conf = tmp / "stowkit.conf"
        self.conf.write_text(
            f"[DEFAULT]\nstate_dir = {tmp}/state\n[volume_btrfs]\nroot = {self.root}\n" + extra_conf
        )
        self.log = tmp / "plugin.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        os.makedirs(PLUGINS_DIR, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stowkit.cli.app", "--config-file", str(self.conf), "-v",
             "plugin", "serve", "--socket", self.socket],
            cwd=REPO, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"plugin exited: {self.log.read_text()}")
            try:
                if plugin_call(self.socket, "/Plugin.Activate") == {"Implements": ["VolumeDriver"]}:
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"plugin did not answer on {self.socket}: {self.log.read_text()}")

    def call(self, endpoint: str, body: dict | None = None) -> dict:
        return plugin_call(self.socket, endpoint, body)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def stowkit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "stowkit.cli.app", "--config-file", str(self.conf), *args],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture
def docker_env(service, tmp_path):
    btrfs = service("btrfs")
    dock = service("docker")
    plugin = PluginProcess(btrfs["mounts"][0], tmp_path)
    plugin.start()

    def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["docker", "-H", dock["host"], *args], capture_output=True, text=True, timeout=180
        )
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
        return proc

    containers: list[str] = []
    volumes: list[str] = []
    yield plugin, docker, dock["image"], containers, volumes
    try:
        for c in containers:
            docker("rm", "-f", c, check=False)
        # Only volumes the plugin still has: asking dockerd to remove an unknown
        # volume makes it probe every plugin socket, dead ones too (slow).
        left = {v["Name"] for v in plugin.call("/VolumeDriver.List")["Volumes"]}
        for v in volumes:
            if v in left:
                docker("volume", "rm", "-f", v, check=False)
    finally:
        code = plugin.stop()
        delete_tree(plugin.root)
    assert code == 0, plugin.log.read_text()
    assert not os.path.exists(plugin.socket)  # a clean shutdown removes its socket


def test_container_writes_land_in_the_subvolume_and_rm_works(docker_env):
    plugin, docker, image, containers, volumes = docker_env
    vol = f"v1-{uuid.uuid4().hex[:6]}"
    volumes.append(vol)
    docker("volume", "create", "-d", plugin.name, vol)
    subvol = plugin.root / "volumes" / vol
    assert subvol.is_dir()
    info = subprocess.run(["btrfs", "subvolume", "show", str(subvol)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert info.returncode == 0, info.stderr  # a real subvolume, not a plain directory
    docker("run", "--rm", "--network", "none", "-v", f"{vol}:/data", image,
           "sh", "-c", "echo hi > /data/f")  # fmt: skip
    assert (subvol / "f").read_text() == "hi\n"
    listed = json.loads(docker("volume", "ls", "--format", "{{json .}}").stdout.splitlines()[0])
    assert listed["Driver"] == plugin.name
    inspect = json.loads(docker("volume", "inspect", vol).stdout)[0]
    assert inspect["Mountpoint"] == str(subvol) and inspect["Status"]["mounts"] == 0
    # Docker reads the time from Get's CreatedAt (no CreatedAt shows 0001-01-01T00:00:00Z)
    created = dt.datetime.fromisoformat(inspect["CreatedAt"])
    made = dt.datetime.fromtimestamp(btrfsutil.subvolume_info(str(subvol)).otime, dt.UTC)
    assert abs(created - made) < dt.timedelta(seconds=1), inspect["CreatedAt"]
    docker("volume", "rm", vol)
    assert not subvol.exists()
    assert plugin.call("/VolumeDriver.List")["Volumes"] == []


def test_mount_counts_with_two_containers(docker_env):
    plugin, docker, image, containers, volumes = docker_env
    vol = f"v2-{uuid.uuid4().hex[:6]}"
    volumes.append(vol)
    docker("volume", "create", "-d", plugin.name, vol)
    long_running = docker("run", "-d", "--network", "none", "-v", f"{vol}:/data", image,
                          "sleep", "600").stdout.strip()  # fmt: skip
    containers.append(long_running)
    assert plugin.call("/VolumeDriver.Get", {"Name": vol})["Volume"]["Status"]["mounts"] == 1
    # a second container comes and goes; the first still holds the volume
    docker("run", "--rm", "--network", "none", "-v", f"{vol}:/data", image,
           "sh", "-c", "echo second > /data/g")  # fmt: skip
    assert (plugin.root / "volumes" / vol / "g").read_text() == "second\n"
    assert plugin.call("/VolumeDriver.Get", {"Name": vol})["Volume"]["Status"]["mounts"] == 1
    # the plugin itself refuses to remove a mounted volume (not only dockerd)
    err = plugin.call("/VolumeDriver.Remove", {"Name": vol})["Err"]
    assert "mounted" in err
    assert docker("volume", "rm", vol, check=False).returncode != 0
    assert (plugin.root / "volumes" / vol).is_dir()
    # two at once
    other = docker("run", "-d", "--network", "none", "-v", f"{vol}:/data", image,
                   "sleep", "600").stdout.strip()  # fmt: skip
    containers.append(other)
    assert plugin.call("/VolumeDriver.Get", {"Name": vol})["Volume"]["Status"]["mounts"] == 2
    docker("rm", "-f", long_running)
    assert plugin.call("/VolumeDriver.Get", {"Name": vol})["Volume"]["Status"]["mounts"] == 1
    docker("rm", "-f", other)
    assert plugin.call("/VolumeDriver.Get", {"Name": vol})["Volume"]["Status"]["mounts"] == 0
    docker("volume", "rm", vol)
    assert not (plugin.root / "volumes" / vol).exists()


def test_mounts_survive_a_plugin_restart(docker_env):
    plugin, docker, image, containers, volumes = docker_env
    vol = f"v3-{uuid.uuid4().hex[:6]}"
    volumes.append(vol)
    docker("volume", "create", "-d", plugin.name, vol)
    holder = docker("run", "-d", "--network", "none", "-v", f"{vol}:/data", image,
                    "sleep", "600").stdout.strip()  # fmt: skip
    containers.append(holder)
    assert plugin.stop() == 0
    plugin.start()
    assert "mounted" in plugin.call("/VolumeDriver.Remove", {"Name": vol})["Err"]
    docker("rm", "-f", holder)
    assert plugin.call("/VolumeDriver.Remove", {"Name": vol}) == {"Err": ""}


def test_create_options_reach_the_driver(docker_env):
    plugin, docker, image, containers, volumes = docker_env
    vol = f"v4-{uuid.uuid4().hex[:6]}"
    volumes.append(vol)
    docker("volume", "create", "-d", plugin.name, "-o", "compression=zstd", vol)
    prop = subprocess.run(
        ["btrfs", "property", "get", str(plugin.root / "volumes" / vol), "compression"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "zstd" in prop.stdout
    bad = docker("volume", "create", "-d", plugin.name, "-o", "size=1G", "v5bad", check=False)
    assert bad.returncode != 0 and "size" in bad.stderr
    assert not (plugin.root / "volumes" / "v5bad").exists()


@pytest.mark.parametrize("name", ["../escape", "x;touch /tmp/stowkit-pwned", "a b", "", "x" * 300])
def test_hostile_names_through_the_socket_touch_nothing(docker_env, name):
    plugin, *_ = docker_env
    before = sorted(os.listdir(plugin.root.parent))
    for endpoint in ("/VolumeDriver.Create", "/VolumeDriver.Mount", "/VolumeDriver.Remove"):
        err = plugin.call(endpoint, {"Name": name, "ID": "x"})["Err"]
        assert err.startswith("invalid volume name"), err
    assert sorted(os.listdir(plugin.root.parent)) == before
    assert not os.path.exists("/tmp/stowkit-pwned")
    volumes_dir = plugin.root / "volumes"
    assert not volumes_dir.exists() or os.listdir(volumes_dir) == []
