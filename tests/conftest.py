"""Fixtures shared by the unit and the functional tests (the fakes live in tests/fakes)."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def paris(monkeypatch):
    """Local time an hour ahead of UTC in winter, as buttervolume's host may be."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
