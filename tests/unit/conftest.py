"""Fixtures shared by unit test modules; the fakes they build on live in tests/fakes."""

from __future__ import annotations

import pytest

from tests.fakes.swift import FakeSwift, swift_store


@pytest.fixture
def swift():
    FakeSwift.reset()
    with swift_store(FakeSwift) as store:
        yield store
