"""Run every benchmark in bench/ against its peer, one after the other.

    python3 bench/run.py [NAME...]     # names: btrfs_plugin catalog_api imagesync nbd_throughput

Each benchmark prints its own figures and the stowkit/peer ratios; they need
the harness services (``python3 -m tools.stack start all``).  This runner only
sequences them, so that two benchmarks never compete for the two cores.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    available = sorted(p.stem for p in HERE.glob("*.py") if p.stem != "run")
    names = argv or available
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"bench: unknown benchmark {unknown[0]!r} (have: {', '.join(available)})")
        return 2
    failed = []
    for name in names:
        print(f"==== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")]).returncode:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
