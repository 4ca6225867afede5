"""Fixtures that hand functional tests the real services of the harness.

The harness (``python -m tools.stack start NAME``) records every running
service in one JSON file; a test asks for a service by name through
``service("swift")`` and gets its record (endpoints, paths, credentials).
When the ``CI`` environment variable is set a missing service *fails* the
test, because a skipped functional test in CI proves nothing; elsewhere the
test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def stack_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("STOWKIT_STACK_DIR", REPO / ".stack"))


def _state() -> dict[str, Any]:
    path = stack_dir() / "state.json"
    try:
        return json.loads(path.read_text()).get("services", {})
    except FileNotFoundError:
        return {}


def _alive(record: dict[str, Any]) -> bool:
    for pid in record.get("pids", []):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
    return True


def missing(reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def service() -> Callable[[str], dict[str, Any]]:
    """``service(name)`` -> that service's record from the harness state file."""

    def get(name: str) -> dict[str, Any]:
        record = _state().get(name)
        if record is None:
            missing(f"{name} is not running (python -m tools.stack start {name})")
        if not _alive(record):
            missing(f"{name} is recorded but its process is gone; restart the harness")
        return record

    return get
