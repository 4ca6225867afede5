"""The layer rule: corelib/ and cli/ import no backend client library and no plugin.

Backends (``plugins/``) own their client libraries; the core library and the
commands reach them through the registry (stevedore entry points), Keystone
included (``registry.keystone()``).  Every ``.py`` file under corelib/ and
cli/ is parsed, and ``import x``, ``from x import y``, relative imports and
``importlib.import_module("x")`` / ``__import__("x")`` with a literal name all
count.  No file is exempt.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: the layers under the rule, as package names below ``stowkit``
LAYERS = ("corelib", "cli")
#: client libraries only backends may import (keystonemiddleware, WSGI middleware
#: of the catalog's own pipeline, is not a client and stays allowed)
FORBIDDEN = (
    "swiftclient",
    "glanceclient",
    "btrfsutil",
    "sqlalchemy",
    "alembic",
    "keystoneauth1",
    "keystoneclient",
    "openstack",
    "psycopg",
    "stowkit.plugins",
)


def _resolve(module: str | None, level: int, package: str) -> str:
    """The absolute name of ``from <dots><module> import`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, module] if module else base)


def _literal_call(node: ast.Call) -> str | None:
    """The module a dynamic import with a literal name loads, else None."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )
    if not named or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``source`` (a module of ``package``).

    ``from x import y`` yields ``x`` and ``x.y`` (``y`` may be a module).
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call):
            name = _literal_call(node)
            if name is not None:
                found.append((node.lineno, name))
    return found


def violations(source: str, package: str) -> list[str]:
    """``line: module`` for each forbidden import of ``source``."""
    bad = []
    for line, name in imported(source, package):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            bad.append(f"{line}: {name}")
    return sorted(set(bad), key=lambda text: int(text.split(":")[0]))


def _files() -> list[pathlib.Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def _package(path: pathlib.Path) -> str:
    """``stowkit.corelib.agent`` for corelib/agent/engine.py (setup.py maps the folders)."""
    return ".".join(["stowkit", *path.relative_to(ROOT).parent.parts])


def test_the_layers_have_files_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in _files()}
    assert {"corelib/catalogclient.py", "cli/agent.py", "corelib/registry.py"} <= names


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_of_the_layer_imports_a_client_library_or_a_plugin(layer):
    found = {}
    for path in _files():
        if path.relative_to(ROOT).parts[0] != layer:
            continue
        bad = violations(path.read_text(), _package(path))
        if bad:
            found[path.relative_to(ROOT).as_posix()] = bad
    assert found == {}


@pytest.mark.parametrize(
    "source",
    [
        "import keystoneauth1\n",
        "from keystoneauth1 import session\n",
        "import sqlalchemy.orm as orm\n",
        "from openstack import config\n",
        "from stowkit.plugins import openstack_auth\n",
        "from stowkit import plugins\n",
        "import importlib\nauth = importlib.import_module('stowkit.plugins.openstack_auth')\n",
        "from importlib import import_module\nimport_module('swiftclient')\n",
        "def f():\n    return __import__('btrfsutil')\n",
        "from ...plugins.glance import store\n",
        "from ... import plugins\n",
    ],
)
def test_a_planted_violation_is_found(source):
    assert violations(source, "stowkit.corelib.agent")


@pytest.mark.parametrize(
    "source",
    [
        "import keystonemiddleware.auth_token\n",
        "from oslo_config import cfg\n",
        "from stowkit.corelib import registry\n",
        "from . import options\n",
        "from ..catalogapi import schemas\n",
        "import importlib\nimportlib.import_module(name)\n",  # not a literal: the registry's way
        "import openstack_like\n",
    ],
)
def test_allowed_imports_pass(source):
    assert violations(source, "stowkit.corelib.agent") == []
