"""Two btrfs hosts on the harness's loop filesystems, as the btrfs functional tests use them.

Each test gets fresh roots on the two loop-image btrfs filesystems
(``service("btrfs")["mounts"]``: host a and host b) and deletes them after; the
fixtures ``hosts`` and ``peers`` (tests/functional/conftest.py) build them.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from typing import Any

import btrfsutil

from stowkit.corelib import config, registry
from stowkit.plugins.btrfs.driver import BtrfsVolumeDriver
from tests.fakes.harness import REPO


def wipe(root: pathlib.Path) -> None:
    """Delete every subvolume under ``root`` (deepest first), then the tree."""
    if not root.exists():
        return
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if not os.path.islink(path) and os.lstat(path).st_ino == 256:
                btrfsutil.set_subvolume_read_only(path, False)
                btrfsutil.delete_subvolume(path, recursive=True)
    shutil.rmtree(root)


def ssh_settings(sshd: dict[str, Any]) -> dict[str, Any]:
    return {
        "ssh_key": sshd["key"],
        "ssh_port": int(sshd["port"]),
        "ssh_user": sshd["user"],
        "ssh_options": [
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=no",
            "UserKnownHostsFile=/dev/null",
            "GlobalKnownHostsFile=/dev/null",
            "LogLevel=ERROR",
            "ConnectTimeout=10",
        ],
    }


class Host:
    """One side: its root, a driver on it, and the CLI configured for it."""

    def __init__(self, root: pathlib.Path, remote_root: pathlib.Path, ssh: dict[str, Any]):
        self.root = root
        self.settings = {"root": str(root), "remote_root": str(remote_root), **ssh}
        self.config_file = root.parent / f"{root.name}.conf"
        lines = ["[volume_btrfs]"]
        for key, value in self.settings.items():
            text = ",".join(value) if isinstance(value, list) else str(value)
            lines.append(f"{key} = {text}")
        self.config_file.write_text("\n".join(lines) + "\n")
        self.driver = self.make_driver()

    def make_driver(self, **extra: Any) -> BtrfsVolumeDriver:
        conf = config.load_conf()
        return registry.load("volume", conf, "btrfs", **{**self.settings, **extra})

    def stowkit(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "stowkit.cli.app",
                "--config-file",
                str(self.config_file),
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            **kw,
        )

    def path(self, *parts: str) -> pathlib.Path:
        return self.root.joinpath(*parts)


def received(host, volume=None):
    """The snapshots ``host`` has received (of ``volume``), by name."""
    return sorted(
        n
        for n in os.listdir(host.path("received"))
        if not n.startswith(".") and (volume is None or n.startswith(volume + "@"))
    )
