"""Fixtures shared by unit test modules; the fakes they build on live in tests/fakes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from stowkit.cli.app import main as stowkit_main
from tests.fakes.keystone import FakeKeystone
from tests.fakes.swift import FakeSwift, swift_store

# -- a SwiftBlockStore on a fake Swift -----------------------------------------------


@pytest.fixture
def swift():
    FakeSwift.reset()
    with swift_store(FakeSwift) as store:
        yield store


# -- a fake Keystone, and no OS_* variable leaking in ----------------------------------


@pytest.fixture()
def keystone() -> Iterator[FakeKeystone]:
    server = FakeKeystone()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def clean_env(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("OS_"):
            monkeypatch.delenv(name)


# -- the image commands on the local image store -----------------------------------------


@pytest.fixture
def env(tmp_path, monkeypatch):
    """``env(*args)`` runs a command on a local image store of regions One (master), Two, Three."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLANCESYNC_CONFIG", raising=False)
    conf = tmp_path / "stowkit.conf"
    conf.write_text(
        f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
        f"[image_sync]\nconfig_file = {tmp_path / 'glancesync.conf'}\n"
    )
    (tmp_path / "glancesync.conf").write_text("[main]\nmaster_region = One\n")
    (tmp_path / "state" / "images" / "Two").mkdir(parents=True)
    (tmp_path / "state" / "images" / "Three").mkdir(parents=True)
    (tmp_path / "state" / "images" / "One").mkdir(parents=True)
    (tmp_path / "a.img").write_bytes(b"a" * 1000)
    (tmp_path / "b.img").write_bytes(b"b" * 10)

    def run(*args, front=stowkit_main):
        return front(["--config-file", str(conf), *args])

    return run
