"""``import stowkit``: the public names, cheap to import, typed, and stowkit.open."""

from __future__ import annotations

import ast
import importlib
import pathlib
import pydoc
import subprocess
import sys

import pytest

import stowkit
from stowkit.corelib import registry
from stowkit.corelib.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]
FACADE = REPO / "corelib" / "_stowkit"


def test_every_public_name_is_the_object_of_its_home_module():
    for name, (module, attr) in stowkit._EXPORTS.items():
        assert getattr(stowkit, name) is getattr(importlib.import_module(module), attr), name
    assert stowkit.__all__ == sorted(stowkit._EXPORTS)


def test_the_names_type_checkers_read_are_the_names_that_run():
    tree = ast.parse((FACADE / "__init__.py").read_text())
    (block,) = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    seen = {}
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("stowkit."):
            for alias in node.names:
                seen[alias.asname or alias.name] = (node.module, alias.name)
    assert seen == stowkit._EXPORTS


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        stowkit.nothing  # noqa: B018


def test_import_stowkit_imports_nothing_else():
    """The CLI's start-up pays for stowkit's __init__ alone: each name is imported on use."""
    code = (
        "import sys, stowkit\n"
        "print(sorted(m for m in sys.modules if m.startswith(('stowkit.', 'oslo', 'stevedore'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    )
    assert done.stdout.strip() == "[]"


def test_help_shows_every_public_name_and_the_jobs():
    text = pydoc.render_doc(stowkit, renderer=pydoc.plaintext)
    for name in stowkit.__all__:
        assert name in text, name
    for job in ("Volumes:", "Images:", "Block devices:", "The catalog:"):
        assert job in text


def test_py_typed_ships_with_the_package():
    assert (FACADE / "py.typed").is_file()
    assert "stowkit = py.typed" in (REPO / "setup.cfg").read_text()


def test_the_facade_is_installed_once_as_stowkit(monkeypatch):
    assert pathlib.Path(stowkit.__file__).parent == FACADE
    # What setup.py hands setuptools, whatever setuptools the venv has (Debian's
    # python3.11 venv brings an older one than pip's own).
    import runpy

    import setuptools

    given = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: given.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    assert given["package_dir"]["stowkit"] == "corelib/_stowkit"
    assert "stowkit" in given["packages"]
    assert not [p for p in given["packages"] if "_stowkit" in p]
    assert {"stowkit.corelib", "stowkit.plugins", "stowkit.cli"} <= set(given["packages"])


def test_the_facade_folder_cannot_be_imported_a_second_time_under_corelib():
    with pytest.raises(ImportError, match="import stowkit, not stowkit.corelib._stowkit"):
        importlib.import_module("stowkit.corelib._stowkit")


def test_open_loads_no_backend_until_one_is_used(tmp_path, monkeypatch):
    loaded = []
    real = registry.load
    monkeypatch.setattr(
        registry, "load", lambda ns, *a, **kw: loaded.append(ns) or real(ns, *a, **kw)
    )
    kit = stowkit.open(state_dir=str(tmp_path), blockstore={"backend": "local"})
    assert loaded == []
    assert kit.blocks is kit.blocks
    assert loaded == ["blockstore"]
    assert kit.blocks.opts.path == f"{tmp_path}/blocks"


def test_open_applies_a_backend_group_when_its_backend_loads(tmp_path):
    with stowkit.open(
        state_dir=str(tmp_path),
        image={"backend": "local"},
        image_local={"path": str(tmp_path / "regions")},
        blockstore_swift={"container_prefix": "ignored: not the configured backend"},
    ) as kit:
        assert kit.images.opts.path == str(tmp_path / "regions")


def test_open_reads_config_files_and_overrides_win(tmp_path):
    conf = tmp_path / "stowkit.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'from-file'}\n[image]\nbackend = local\n")
    assert stowkit.open([str(conf)]).conf.state_dir == str(tmp_path / "from-file")
    assert stowkit.open([str(conf)], state_dir="/elsewhere").conf.state_dir == "/elsewhere"


@pytest.mark.parametrize(
    "overrides",
    [{"nonsense": 1}, {"nowhere": {"path": "/x"}}, {"image": {"nonsense": "x"}}],
    ids=["unknown DEFAULT option", "unknown group", "unknown option of a namespace"],
)
def test_open_refuses_an_override_it_cannot_apply(overrides):
    with pytest.raises(ConfigError):
        stowkit.open(**overrides)


def test_a_backend_override_naming_no_option_is_a_config_error(tmp_path):
    kit = stowkit.open(state_dir=str(tmp_path), image_local={"nonsense": "x"})
    with pytest.raises(ConfigError, match="bad override for the image backend"):
        kit.images  # noqa: B018


def test_close_closes_the_loaded_backends(tmp_path):
    kit = stowkit.open(state_dir=str(tmp_path))
    closed = []
    kit.blocks.close = lambda: closed.append("blocks")
    kit.close()
    assert closed == ["blocks"]
