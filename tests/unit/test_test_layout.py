"""The layout of tests/: a test module imports no other test module and no conftest.

What two test modules share lives in tests/fakes (imported) or in a conftest.py
(fixtures, which pytest hands over by name); a test module imported by another
would run its tests twice over and hide which module a fake belongs to.  Every
file under tests/ is parsed with ``ast``, so an import inside a function, a
relative one, ``from tests.x import test_y`` and ``importlib.import_module``
with a literal name all count.
"""

from __future__ import annotations

import ast
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def _forbidden(module: str) -> bool:
    """A test module (``test_*``) or a conftest, named by its dotted path."""
    last = module.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def _package(path: pathlib.PurePath) -> list[str]:
    """The dotted package of a file under tests/ (tests/unit/x.py -> tests.unit)."""
    parts = path.parts
    return list(parts[parts.index("tests") : -1])


def _dynamic(node: ast.Call) -> str | None:
    """The literal module name of ``importlib.import_module(...)`` or ``__import__(...)``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imported_test_modules(source: str, path: pathlib.PurePath) -> list[str]:
    """``line: module`` for each test module or conftest that ``source`` (at ``path``) imports."""
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package(path)
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            # the module itself, else each imported name that may be a submodule of it
            modules = [base] if _forbidden(base) else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call):
            modules = [name for name in [_dynamic(node)] if name]
        found += [f"{node.lineno}: {m}" for m in modules if m and _forbidden(m)]
    return found


def _sources() -> list[pathlib.Path]:
    return sorted(p for p in TESTS.rglob("*.py") if ".venv" not in p.parts)


def test_the_check_finds_every_way_of_importing_a_test_module():
    path = pathlib.PurePath("tests/unit/test_here.py")
    source = "\n".join(
        [
            "from tests.unit.test_other import FakeThing, test_thing",
            "import tests.functional.test_other",
            "from tests.functional import test_other as other",
            "from .test_other import helper",
            "from . import test_other",
            "from .. import conftest",
            "from conftest import fixture",
            "from tests.functional.conftest import missing",
            "def later():",
            "    from tests.unit.test_other import late",
            "    importlib.import_module('tests.unit.test_other')",
            "from tests.fakes.swift import FakeSwift",
            "from tests.fakes import keystone_admin",
            "import tests.commands",
            "from . import fakes_of_mine",
        ]
    )
    assert imported_test_modules(source, path) == [
        "1: tests.unit.test_other",
        "2: tests.functional.test_other",
        "3: tests.functional.test_other",
        "4: tests.unit.test_other",
        "5: tests.unit.test_other",
        "6: tests.conftest",
        "7: conftest",
        "8: tests.functional.conftest",
        "10: tests.unit.test_other",
        "11: tests.unit.test_other",
    ]


def test_the_check_reads_every_file_under_tests():
    sources = _sources()
    names = {p.relative_to(TESTS).as_posix() for p in sources}
    assert {"unit/test_test_layout.py", "unit/conftest.py", "functional/conftest.py"} <= names
    assert any(name.startswith("fakes/") for name in names)
    assert len(sources) > 100


def test_no_file_under_tests_imports_a_test_module_or_a_conftest():
    found = []
    for path in _sources():
        where = path.relative_to(TESTS.parent)
        found += [f"{where}:{hit}" for hit in imported_test_modules(path.read_text(), where)]
    assert found == []


def test_every_test_module_holds_tests():
    # a helper in a test_*.py module invites the imports refused above
    empty = []
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        names = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        if not any(n.startswith("test_") or n.startswith("Test") for n in names):
            empty.append(path.relative_to(TESTS).as_posix())
    assert empty == []
