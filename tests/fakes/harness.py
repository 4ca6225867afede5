"""Where the harness keeps its state, and what a functional test does when a service is missing."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]  # the checkout the tests run from


def stack_dir() -> pathlib.Path:
    """The harness directory (state.json and the services' files)."""
    return pathlib.Path(os.environ.get("STOWKIT_STACK_DIR", REPO / ".stack"))


def missing(reason: str) -> None:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)
