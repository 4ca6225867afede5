"""The examples of doc/examples/ run as written (doctests against the embedded backends).

The volumes page needs root and a BTRFS file system: tests/functional runs it.
"""

from __future__ import annotations

import doctest
import pathlib
import tempfile

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "doc" / "examples"
#: the pages that need no root, by the job they show
UNIT_PAGES = ("blocks.md", "images.md", "catalog.md")
#: the pages run elsewhere, and where
ELSEWHERE = {"volumes.md": "tests/functional/test_example_volumes.py"}


def run_page(path: pathlib.Path, **globs) -> doctest.TestResults:
    return doctest.testfile(
        str(path), module_relative=False, globs=globs, optionflags=doctest.ELLIPSIS, report=True
    )


@pytest.mark.parametrize("page", UNIT_PAGES)
def test_example_page_runs_as_written(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the pages' mkdtemp() land here
    result = run_page(EXAMPLES / page)
    assert result.attempted > 5, "the page lost its examples"
    assert result.failed == 0, f"{page}: {result.failed} example(s) failed (see the output above)"


def test_every_example_page_is_run_by_a_test():
    pages = {p.name for p in EXAMPLES.glob("*.md")}
    assert pages == set(UNIT_PAGES) | set(ELSEWHERE)
    root = EXAMPLES.parents[1]
    for page, test in ELSEWHERE.items():
        assert page in (root / test).read_text(), test
