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
from tests.fakes.keystone_catalog import catalog_server, freezer_runner
from tests.fakes.postgres import scratch_database


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


# -- the catalog behind the harness Keystone, on SQLite and PostgreSQL -----------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, service, tmp_path_factory) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('catalog-sqlite')}/catalog.sqlite"
        return
    with scratch_database(service("postgres"), "stowkit_catalog") as url:
        yield url


@pytest.fixture(scope="module")
def keystone(service) -> dict[str, Any]:
    return service("keystone")


@pytest.fixture(scope="module")
def catalog_url(database, keystone, tmp_path_factory) -> str:
    """stowkit's catalog on ``database``, validating tokens with the harness Keystone."""
    with catalog_server(tmp_path_factory.mktemp("catalog-server"), database, keystone) as url:
        yield url


@pytest.fixture(scope="module")
def freezer(service, keystone, catalog_url):
    """Run the real ``freezer`` CLI as the member user; returns parsed JSON output."""
    return freezer_runner(service("freezerclient")["bin"], keystone["member"], catalog_url)
