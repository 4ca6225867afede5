"""freezer's own programs from PyPI, unmodified, in one venv: the CLI and the agents.

``freezer`` (python-freezerclient) drives the catalog API; ``freezer-scheduler``
and ``freezer-agent`` (the ``freezer`` package) are the agents that poll it,
run backups and post their metadata.  Functional tests start them against
stowkit's catalog; the harness starts nothing, so the record has no pids and
only says where the programs are.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from tools.stack.base import Context

NAME = "freezerclient"
REQUIRES: list[str] = []

#: The releases that go with freezer-api 19 (the reference users know).
PACKAGES = ["python-freezerclient==6.5.0", "freezer==19.0.0"]

#: Record key -> program in the venv's bin.
PROGRAMS = {"bin": "freezer", "scheduler_bin": "freezer-scheduler", "agent_bin": "freezer-agent"}


def install(ctx: Context) -> None:
    ctx.venv("freezerclient", PACKAGES)


def start(ctx: Context) -> dict[str, Any]:
    venv = ctx.venv("freezerclient", PACKAGES)
    record: dict[str, Any] = {"pids": [], "venv": str(venv)}
    record.update({key: str(venv / "bin" / prog) for key, prog in PROGRAMS.items()})
    return record


def alive(ctx: Context, record: dict[str, Any]) -> bool:
    """Every program is there and the venv holds today's package list.

    A record written before the agents were added (no ``scheduler_bin``) or a
    venv built from another list is stale, so ``start`` builds it again.
    """
    if not all(key in record and pathlib.Path(record[key]).exists() for key in PROGRAMS):
        return False
    marker = pathlib.Path(record["venv"]) / ".stowkit-packages.json"
    try:
        return sorted(json.loads(marker.read_text())["packages"]) == sorted(PACKAGES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def stop(ctx: Context, record: dict[str, Any]) -> None:
    """Nothing to stop: the record names programs, not processes."""
