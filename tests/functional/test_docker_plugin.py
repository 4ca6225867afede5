"""A real dockerd uses ``stowkit plugin serve`` as its volume driver, on a real btrfs."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import subprocess
import uuid

import btrfsutil
import pytest

from tests.fakes.plugin_process import PluginProcess, delete_tree

REPO = pathlib.Path(__file__).resolve().parents[2]


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
