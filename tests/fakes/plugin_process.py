"""`stowkit plugin serve` run as dockerd would find it, on a private socket and btrfs root."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.fakes.docker_plugin import PLUGINS_DIR, plugin_call
from tests.fakes.harness import REPO


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
