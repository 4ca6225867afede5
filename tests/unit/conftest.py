"""Fixtures shared by unit test modules; the fakes they build on live in tests/fakes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.fakes.keystone import FakeKeystone
from tests.fakes.swift import FakeSwift, swift_store


@pytest.fixture
def swift():
    FakeSwift.reset()
    with swift_store(FakeSwift) as store:
        yield store


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
