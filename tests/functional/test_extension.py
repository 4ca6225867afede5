"""A backend from another distribution is found by name once pip installed it.

This installs a throwaway distribution for real (pip, its own entry point in
``stowkit.blockstore``) into a private target directory, then drives stowkit
in a subprocess that has that directory on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SETUP_CFG = """\
[metadata]
name = stowkit-throwaway-backend
version = 0.1

[options]
py_modules = throwaway_backend

[options.entry_points]
stowkit.blockstore =
    throwaway = throwaway_backend:ThrowawayStore
"""

MODULE = '''\
from oslo_config import cfg

from stowkit.corelib.driver import Driver


class ThrowawayStore(Driver):
    """A backend shipped by somebody else."""

    options = [cfg.StrOpt("bucket", default="pail")]
    capabilities = frozenset({"trim", "zero"})

    def describe(self):
        return f"{self.group}:{self.opts.bucket}"
'''


def test_a_backend_from_another_distribution_loads_by_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.cfg").write_text(SETUP_CFG)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (src / "throwaway_backend.py").write_text(MODULE)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        timeout=300,
    )
    assert list(target.glob("stowkit_throwaway_backend-*.dist-info"))

    env = {**os.environ, "PYTHONPATH": str(target)}
    conf = tmp_path / "stowkit.conf"
    conf.write_text("[blockstore]\nbackend = throwaway\n[blockstore_throwaway]\nbucket = b1\n")

    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "stowkit.cli.app",
            "--config-file",
            str(conf),
            "backends",
            "--namespace",
            "blockstore",
            "-f",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert rows["throwaway"]["selected"] is True
    assert rows["throwaway"]["capabilities"] == "trim zero"
    assert rows["throwaway"]["status"] == "ok"

    probe = textwrap.dedent(
        f"""
        from stowkit.corelib import config, registry
        conf = config.load_conf([{str(conf)!r}])
        print(registry.load("blockstore", conf).describe())
        """
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert loaded.stdout.strip() == "blockstore_throwaway:b1"

    # Without the distribution on the path the same config is a clear error.
    missing = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0
    assert "unknown blockstore backend 'throwaway'" in missing.stderr
