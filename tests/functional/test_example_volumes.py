"""doc/examples/volumes.md runs as written on the harness's BTRFS loop mount."""

from __future__ import annotations

import doctest
import pathlib
import uuid

from tests.fakes.btrfs_hosts import wipe

PAGE = pathlib.Path(__file__).resolve().parents[2] / "doc" / "examples" / "volumes.md"


def test_volumes_example_runs_as_written(service):
    mount = pathlib.Path(service("btrfs")["mounts"][0])
    root = mount / f"stowkit-example-{uuid.uuid4().hex[:8]}"
    try:
        result = doctest.testfile(
            str(PAGE), module_relative=False, globs={"root": str(root)}, report=True
        )
    finally:
        wipe(root)
    assert result.attempted > 10, "the page lost its examples"
    assert result.failed == 0, f"{result.failed} example(s) failed (see the output above)"
