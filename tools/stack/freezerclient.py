"""The real ``freezer`` CLI (python-freezerclient from PyPI, unmodified), in its own venv.

Client only: nothing runs, so the record has no pids; it only says where the
binary is.  Functional tests of the catalog drive it against stowkit's server.
"""

from __future__ import annotations

from typing import Any

from tools.stack.base import Context

NAME = "freezerclient"
REQUIRES: list[str] = []

#: The client release that goes with freezer-api 19 (the reference users know).
PACKAGES = ["python-freezerclient==6.5.0"]


def install(ctx: Context) -> None:
    ctx.venv("freezerclient", PACKAGES)


def start(ctx: Context) -> dict[str, Any]:
    venv = ctx.venv("freezerclient", PACKAGES)
    return {"pids": [], "bin": str(venv / "bin" / "freezer"), "venv": str(venv)}


def stop(ctx: Context, record: dict[str, Any]) -> None:
    """Nothing to stop: the record names a binary, not a process."""
