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
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.btrfs_hosts import Host, ssh_settings, wipe
from tests.fakes.harness import missing, stack_dir


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


# -- two btrfs hosts (host a and host b), fresh for each test ---------------------


@pytest.fixture
def hosts(service) -> Iterator[tuple[Host, Host]]:
    """(a, b): a's peer root is b's root and the reverse; ssh settings when sshd runs."""
    mounts = service("btrfs")["mounts"]
    tag = f"stowkit-test-{uuid.uuid4().hex[:8]}"
    root_a = pathlib.Path(mounts[0]) / tag
    root_b = pathlib.Path(mounts[1]) / tag
    a, b = Host(root_a, root_b, {}), Host(root_b, root_a, {})
    try:
        yield a, b
    finally:
        for h in (a, b):
            wipe(h.root)
            h.config_file.unlink(missing_ok=True)


@pytest.fixture
def peers(service) -> Iterator[tuple[Host, Host, str]]:
    """Like ``hosts`` with ssh between them: (a, b, "host b as seen from a")."""
    sshd = service("sshd")
    mounts = service("btrfs")["mounts"]
    tag = f"stowkit-test-{uuid.uuid4().hex[:8]}"
    root_a = pathlib.Path(mounts[0]) / tag
    root_b = pathlib.Path(mounts[1]) / tag
    ssh = ssh_settings(sshd)
    a, b = Host(root_a, root_b, ssh), Host(root_b, root_a, ssh)
    try:
        yield a, b, sshd["host"]
    finally:
        for h in (a, b):
            wipe(h.root)
            h.config_file.unlink(missing_ok=True)
