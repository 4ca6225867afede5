"""buttervolume 3.13 in its own venv, for the benchmarks and tests that run it.

Not a service (no ``NAME``): buttervolume is started by whoever measures or
tests it, on its own paths; this only makes sure the program is there.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
#: where bench/btrfs_plugin.py and tests/functional/test_buttervolume_real.py find it
VENV = REPO / ".stack" / "venvs" / "buttervolume"
VERSION = "3.13"


def ensure_buttervolume(venv: pathlib.Path = VENV) -> pathlib.Path:
    """Install buttervolume 3.13 from PyPI into ``venv`` unless it is there; its program."""
    program = venv / "bin" / "buttervolume"
    if program.exists():
        return program
    print(f"installing buttervolume {VERSION} into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"buttervolume=={VERSION}"],
        check=True,
        timeout=900,
    )
    return program
