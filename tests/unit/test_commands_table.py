"""Every external command the tests, benchmarks, harness and demos run is in tools/commands.txt.

tools/test-all and tools/try-it install the Debian packages of that one table, so a
command missing from it works on a developer's machine and fails on a new one.  These
tests read the sources (nothing is run) and find the commands:

- Python (tests/, bench/, tools/stack/, and stowkit's own corelib/, plugins/, cli/,
  which the tests run): the program of every ``subprocess.run``, ``Popen``,
  ``check_output``..., of the harness's ``ctx.run``/``ctx.spawn``, and of helpers
  that pass an argument on as a command (``def run(*cmd)``, in the module or
  imported from tests/fakes), with
  ``timeout N`` and ``env VAR=x`` looked through and list variables followed
  (``docker = ["docker", ...]; run([*docker, "ps"])``);
- shell (tools/try-it, tools/try-it.d/, tools/test-all, tools/lib.sh, .ci/run): the
  command word of every simple command, command substitutions included (functions the
  scripts define or source are not commands).

A command must be in the table with the right USED-BY (``test`` for tests, the harness
and stowkit itself, ``bench`` for benchmarks, ``demo`` for the try-it scripts), or come
from an Essential Debian package (``ESSENTIAL`` below); stowkit's own console scripts
come from the venv.  Tests also must not run ``stowkit`` by name: whatever ``stowkit``
is first on PATH may not be the one under test (use ``tests.commands.STOWKIT``).
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from tools import commands as table

REPO = pathlib.Path(__file__).resolve().parents[2]

# Commands from Essential Debian packages (always installed), and the package manager.
ESSENTIAL = {
    # coreutils
    *"basename cat chmod chown cp cut date dd df dirname du echo env false head id ln ls"
    " md5sum mkdir mktemp mv nproc paste printf readlink realpath rm rmdir seq sha256sum"
    " sha512sum sleep sort stat sync tail tee test timeout touch tr true truncate uname uniq"
    " wc [".split(),
    # util-linux (Essential in Debian 12; losetup, mount and umount are not: package mount)
    *"findmnt flock mountpoint runuser setsid".split(),
    # bash, dash, grep, sed, findutils, gzip, tar, diffutils, hostname, debianutils, dpkg, apt
    *"bash sh grep sed find xargs gzip tar cmp diff hostname which dpkg dpkg-query".split(),
    *"apt-get apt-cache".split(),
}
# Commands of stowkit itself: the venv's console scripts.
PROJECT = re.compile(r"stowkit(-[a-z-]+)?$")

PY_SOURCES = ("tests", "bench", "tools/stack", "corelib", "plugins", "cli")
SH_SOURCES = (
    "tools/try-it",
    "tools/try-it.d/*.sh",
    "tools/try-it.d/*.bash",
    "tools/test-all",
    "tools/lib.sh",
    ".ci/run",
)


@dataclass(frozen=True)
class Use:
    command: str
    path: pathlib.Path
    line: int

    def where(self) -> str:
        try:
            return f"{self.path.relative_to(REPO)}:{self.line}"
        except ValueError:
            return f"{self.path}:{self.line}"


def program(word: str) -> str | None:
    """The command name of a program word: ``/usr/sbin/sshd`` -> sshd; a relative path
    (``.venv/bin/pip``, ``./tools/test-all``) is the project's own: None."""
    if "/" not in word:
        return word or None
    if word.startswith("/"):
        return word.rsplit("/", 1)[1] or None
    return None


# -- Python ---------------------------------------------------------------------------------

SUBPROCESS = {"run", "Popen", "check_output", "check_call", "call"}
HARNESS = {"run", "spawn"}  # tools/stack/base.py Context.run(argv) / Context.spawn(argv)
TIMEOUT_OPTS_WITH_VALUE = {"-s", "--signal", "-k", "--kill-after"}
# Calls that return the path of the command they name: shutil.which("x"), and
# bench/figures.py's need("x", "package").
LOOKUPS = {"which", "need"}


class Scope:
    def __init__(self, node: ast.AST, parent: Scope | None):
        self.node, self.parent = node, parent
        self.assigns: dict[str, list[tuple[ast.expr, int | None]]] = {}
        self.params: set[str] = set()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            self.params = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]}
            self.params |= {x.arg for x in (a.vararg, a.kwarg) if x}


def _positional_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


class PyScanner:
    """The commands one Python module runs (see the module docstring)."""

    def __init__(
        self,
        path: pathlib.Path,
        source: str | None = None,
        shared: dict[str, dict[str, tuple[str, int]]] | None = None,
    ):
        self.path = path
        self.tree = ast.parse(source if source is not None else path.read_text(), str(path))
        self.scope_of: dict[int, Scope] = {}  # id(node) -> innermost scope holding it
        self.functions: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
        self._index(self.tree, Scope(self.tree, None))
        # function name -> ("vararg", n) | ("param", n): where its callers pass a command
        self.helpers: dict[str, tuple[str, int]] = {}
        # helpers of other modules (``shared``: dotted module -> its helpers) imported here
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module in (shared or {}):
                for alias in node.names:
                    if alias.name in shared[node.module]:
                        self.helpers[alias.asname or alias.name] = shared[node.module][alias.name]
        while self._find_helpers():
            pass

    # indexing ---------------------------------------------------------------------------
    def _index(self, node: ast.AST, scope: Scope) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if not isinstance(child, ast.Lambda):
                    self.functions.setdefault(child.name, []).append(child)
                inner = Scope(child, scope)
            self.scope_of[id(child)] = inner
            if isinstance(child, ast.Assign):
                for target in child.targets:
                    self._bind(scope, target, child.value)
            elif isinstance(child, ast.AnnAssign) and child.value is not None:
                self._bind(scope, child.target, child.value)
            elif isinstance(child, ast.NamedExpr):
                self._bind(scope, child.target, child.value)
            self._index(child, inner)

    def _bind(self, scope: Scope, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            scope.assigns.setdefault(target.id, []).append((value, None))
        elif isinstance(target, ast.Tuple | ast.List):
            for i, elt in enumerate(target.elts):
                if isinstance(elt, ast.Name):
                    scope.assigns.setdefault(elt.id, []).append((value, i))

    def _lookup(self, name: str, scope: Scope) -> tuple[list[ast.expr], bool]:
        """(values assigned to ``name`` seen from ``scope``, whether it is a parameter)."""
        s: Scope | None = scope
        while s is not None:
            if name in s.assigns:
                values = []
                for value, index in s.assigns[name]:
                    values.extend(self._unpack(value, index))
                return values, False
            if name in s.params:
                return [], True
            s = s.parent
        return [], False

    def _unpack(self, value: ast.expr, index: int | None) -> list[ast.expr]:
        if index is None:
            return [value]
        if isinstance(value, ast.Tuple | ast.List) and index < len(value.elts):
            return [value.elts[index]]
        out = []
        for ret in self._returns(value):
            if isinstance(ret, ast.Tuple) and index < len(ret.elts):
                out.append(ret.elts[index])
        return out

    def _returns(self, call: ast.expr) -> list[ast.expr]:
        """What a call of a function of this module may return."""
        if not isinstance(call, ast.Call):
            return []
        name = _callee(call.func)
        out = []
        for fn in self.functions.get(name or "", []):
            for node in ast.walk(fn):
                if isinstance(node, ast.Return) and node.value is not None:
                    out.append(node.value)
        return out

    # command sites ----------------------------------------------------------------------
    def sites(self) -> Iterator[tuple[ast.Call, list[ast.expr] | ast.expr]]:
        """(call, command): a command list expression, or the list of its elements."""
        for node in ast.walk(self.tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            args = list(node.args)
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                owner, attr = func.value.id, func.attr
                if (owner == "subprocess" and attr in SUBPROCESS) or (
                    owner == "ctx" and attr in HARNESS
                ):
                    command = args[0] if args else _keyword(node, "args")
                    if command is not None:
                        yield node, command
                    continue
                if owner == "asyncio" and attr == "create_subprocess_exec":
                    yield node, args
                    continue
            helper = self.helpers.get(_callee(func) or "")
            if helper is None:
                continue
            kind, n = helper
            if kind == "vararg":
                yield node, args[n:]
            elif n < len(args):
                yield node, args[n]

    def _find_helpers(self) -> bool:
        """Mark functions whose parameter becomes a command's program; True if any is new."""
        new, sites = False, list(self.sites())
        for name, fns in self.functions.items():
            if name in self.helpers:
                continue
            for fn in fns:
                found = self._helper_kind(fn, sites)
                if found:
                    self.helpers[name] = found
                    new = True
                    break
        return new

    def _helper_kind(self, fn, sites) -> tuple[str, int] | None:
        positional = _positional_params(fn)
        vararg = fn.args.vararg.arg if fn.args.vararg else None
        inside = {id(node) for node in ast.walk(fn)}
        for call, command in sites:
            if id(call) not in inside:
                continue
            elements = command if isinstance(command, list) else _elements(command)
            if elements is None:
                if isinstance(command, ast.Name) and command.id in positional:
                    return "param", positional.index(command.id)
                continue
            head = _strip_wrappers(elements)
            if not head:
                continue
            first = head[0]
            if isinstance(first, ast.Starred) and isinstance(first.value, ast.Name):
                if first.value.id == vararg:
                    return "vararg", len(positional)
                if first.value.id in positional:
                    return "param", positional.index(first.value.id)
        return None

    # evaluation -------------------------------------------------------------------------
    def uses(self) -> list[Use]:
        out: dict[tuple[str, int], Use] = {}
        for call, command in self.sites():
            scope = self.scope_of.get(id(call)) or Scope(self.tree, None)
            if isinstance(command, list):
                words = self._words_of_elements(command, scope, 0)
            else:
                words = self._words_of_command(command, scope, 0)
            for word in words:
                out.setdefault((word, call.lineno), Use(word, self.path, call.lineno))
        return list(out.values())

    def _words_of_command(self, expr: ast.expr, scope: Scope, depth: int) -> set[str]:
        """First words of a command given as one expression (a list, a name, ...)."""
        if depth > 12:
            return set()
        elements = _elements(expr)
        if elements is not None:
            return self._words_of_elements(elements, scope, depth + 1)
        if isinstance(expr, ast.Name):
            values, _ = self._lookup(expr.id, scope)
            return set().union(*(self._words_of_command(v, scope, depth + 1) for v in values))
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self._words_of_command(expr.left, scope, depth + 1)
        if isinstance(expr, ast.Call):
            return set().union(
                *(self._words_of_command(r, scope, depth + 1) for r in self._returns(expr))
            )
        return set()  # a record's list, a parameter: not known here

    def _words_of_elements(self, elements: list[ast.expr], scope: Scope, depth: int) -> set[str]:
        words: set[str] = set()
        for wrapper in _wrappers(elements):
            words.add(wrapper)
        head = _strip_wrappers(elements)
        if not head:
            return words
        first = head[0]
        if isinstance(first, ast.Starred):
            return words | self._words_of_command(first.value, scope, depth + 1)
        return words | self._words_of_program(first, scope, depth + 1)

    def _words_of_program(self, expr: ast.expr, scope: Scope, depth: int) -> set[str]:
        """Command names a program expression may hold (a string, a which(), a name)."""
        if depth > 12:
            return set()
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            name = program(expr.value)
            return {name} if name else set()
        if isinstance(expr, ast.Call) and _callee(expr.func) in LOOKUPS and expr.args:
            return self._words_of_program(expr.args[0], scope, depth + 1)
        if isinstance(expr, ast.BoolOp):
            return set().union(*(self._words_of_program(v, scope, depth + 1) for v in expr.values))
        if isinstance(expr, ast.IfExp):
            return self._words_of_program(expr.body, scope, depth + 1) | self._words_of_program(
                expr.orelse, scope, depth + 1
            )
        if isinstance(expr, ast.Name):
            values, _ = self._lookup(expr.id, scope)
            return set().union(*(self._words_of_program(v, scope, depth + 1) for v in values))
        return set()  # sys.executable, str(venv / "bin" / "x"): a path, not a name


def _callee(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _elements(expr: ast.expr) -> list[ast.expr] | None:
    if isinstance(expr, ast.List | ast.Tuple):
        return list(expr.elts)
    return None


def _const(expr: ast.expr) -> str | None:
    return expr.value if isinstance(expr, ast.Constant) and isinstance(expr.value, str) else None


def _wrappers(elements: list[ast.expr]) -> list[str]:
    """The wrapper commands at the head of a command (``timeout``, ``env``)."""
    out = []
    rest = elements
    while rest and _const(rest[0]) in ("timeout", "env"):
        out.append(_const(rest[0]))
        rest = _strip_one(rest)
    return out


def _strip_wrappers(elements: list[ast.expr]) -> list[ast.expr]:
    rest = elements
    while rest and _const(rest[0]) in ("timeout", "env"):
        rest = _strip_one(rest)
    return rest


def _strip_one(elements: list[ast.expr]) -> list[ast.expr]:
    """Drop one ``timeout [OPTS] DURATION`` or ``env [OPTS] [VAR=x...]`` from the head."""
    word, i = _const(elements[0]), 1
    if word == "timeout":
        while i < len(elements) and (_const(elements[i]) or "").startswith("-"):
            i += 2 if _const(elements[i]) in TIMEOUT_OPTS_WITH_VALUE else 1
        return elements[i + 1 :]  # the duration
    while i < len(elements):
        text = _const(elements[i])
        if text is None or not (text.startswith("-") or "=" in text):
            break
        i += 1
    return elements[i:]


# -- shell ----------------------------------------------------------------------------------

SH_BUILTINS = set(
    ". : [ [[ ]] alias bg break builtin caller cd command compgen complete continue declare"
    " dirs disown echo enable eval exec exit export false fc fg getopts hash help history jobs"
    " kill let local logout mapfile popd printf pushd pwd read readarray readonly return set"
    " shift shopt source suspend test times trap true type typeset ulimit umask unalias unset"
    " wait".split()
)
SH_KEEP = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "time"}
SH_END = {"fi", "done", "}", "esac"}
SH_PREFIX = {"exec", "command", "builtin", "nohup", "time"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
SH_OPERATORS = ("&&", "||", ";;", "|&", ";", "|", "&", "(", ")")
SH_REDIRECTS = ("<<<", "<<-", "<<", ">>", "&>>", "&>", ">&", "<&", ">|", "<>", ">", "<")


def defined_functions(text: str) -> set[str]:
    return set(re.findall(r"^\s*(?:function\s+)?([A-Za-z_][\w-]*)\s*\(\)", text, re.M))


class ShellScanner:
    """The command words of a bash script (a lexer good enough for this project's scripts)."""

    def __init__(
        self, path: pathlib.Path, source: str | None = None, functions: Iterable[str] = ()
    ):
        self.path = path
        self.text = source if source is not None else path.read_text()
        # Functions defined here or in the files it sources (``functions``) are not commands.
        self.functions = set(functions) | defined_functions(self.text)
        self.found: list[Use] = []

    def uses(self) -> list[Use]:
        self.found = []
        self.line = 1
        tokens, _ = self._lex(0, None)
        self._commands(tokens)
        return [u for u in self.found if u.command not in self.functions]

    # lexer: tokens are ("w", text, line) and ("op", text, line); command substitutions
    # are scanned as they are met.
    def _lex(self, i: int, close: str | None) -> tuple[list[tuple[str, str, int]], int]:
        text, tokens, heredocs = self.text, [], []
        while i < len(text):
            c = text[i]
            if close is not None and text.startswith(close, i):
                return tokens, i + len(close)
            if c == "\\" and text.startswith("\\\n", i):
                i += 2
                self.line += 1
            elif c in " \t":
                i += 1
            elif c == "\n":
                tokens.append(("op", "\n", self.line))
                self.line += 1
                i += 1
                for delim, strip in heredocs:
                    i = self._skip_heredoc(i, delim, strip)
                heredocs = []
            elif c == "#":
                while i < len(text) and text[i] != "\n":
                    i += 1
            elif text.startswith("((", i):  # arithmetic: (( n )), for (( ...; ...; ... ))
                start, depth, i = i, 2, i + 2
                while i < len(text) and depth:
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                tokens.append(("w", text[start:i], self.line))
            elif op := next((o for o in SH_REDIRECTS if text.startswith(o, i)), None):
                i += len(op)
                tokens.append(("redir", op, self.line))
                if op in ("<<", "<<-"):
                    while i < len(text) and text[i] in " \t":
                        i += 1
                    word, i = self._word(i)
                    heredocs.append((word.strip("'\""), op == "<<-"))
            elif op := next((o for o in SH_OPERATORS if text.startswith(o, i)), None):
                tokens.append(("op", op, self.line))
                i += len(op)
            else:
                line = self.line
                word, i = self._word(i)
                if word.isdigit() and i < len(text) and text[i] in "<>":
                    continue  # a file descriptor: 2>&1
                tokens.append(("w", word, line))
        return tokens, i

    def _skip_heredoc(self, i: int, delim: str, strip: bool) -> int:
        text = self.text
        while i < len(text):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            line = text[i:end]
            self.line += 1
            i = end + 1
            if (line.lstrip("\t") if strip else line) == delim:
                break
        return i

    def _word(self, i: int) -> tuple[str, int]:
        text, out = self.text, []
        while i < len(text):
            c = text[i]
            if c == "(" and out and ASSIGNMENT.fullmatch("".join(out)):
                i = self._array(i + 1)  # NAME=(a b c): words, not commands
                out.append("(...)")
                continue
            if c in " \t\n;&|()<>":
                break
            if c == "\\":
                out.append(text[i : i + 2])
                i += 2
            elif c == "'":
                end = text.index("'", i + 1)
                out.append(text[i : end + 1])
                self.line += text.count("\n", i, end)
                i = end + 1
            elif c == '"':
                start = i
                i = self._double_quoted(i + 1)
                out.append(text[start:i])
            elif c == "$" or c == "`":
                start = i
                i = self._expansion(i)
                out.append(text[start:i])
            else:
                out.append(c)
                i += 1
        return "".join(out), i

    def _array(self, i: int) -> int:
        text = self.text
        while i < len(text) and text[i] != ")":
            if text[i] == "#":
                i = text.find("\n", i)
            elif text[i] in "\"'$`":
                _, i = self._word(i)
            else:
                if text[i] == "\n":
                    self.line += 1
                i += 1
        return i + 1

    def _double_quoted(self, i: int) -> int:
        text = self.text
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
            elif c == '"':
                return i + 1
            elif c in "$`":
                i = self._expansion(i)
            else:
                if c == "\n":
                    self.line += 1
                i += 1
        return i

    def _expansion(self, i: int) -> int:
        """Past one ``$(...)``, ``$((...))``, ``${...}``, backquoted or ``$NAME``."""
        text = self.text
        if text.startswith("$((", i):
            depth, i = 2, i + 3
            while i < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            return i
        if text.startswith("$(", i) or text[i] == "`":
            tokens, i = self._lex(i + (2 if text[i] == "$" else 1), ")" if text[i] == "$" else "`")
            self._commands(tokens)
            return i
        if text.startswith("${", i):
            i += 2
            while i < len(text) and text[i] != "}":
                if text[i] in "$`":
                    i = self._expansion(i)
                elif text[i] == '"':
                    i = self._double_quoted(i + 1)
                elif text[i] == "'":
                    i = text.index("'", i + 1) + 1
                else:
                    i += 1
            return i + 1
        return i + 1  # $NAME: the name is ordinary word text

    # parser: which words are command words
    def _commands(self, tokens: list[tuple[str, str, int]]) -> None:
        expect, skip_to_separator, in_test, redirect, prefix = True, False, False, False, None
        for kind, word, line in tokens:
            if kind == "op":
                expect, skip_to_separator, redirect, prefix = True, False, False, None
                continue
            if kind == "redir":
                redirect = True
                continue
            if redirect:
                redirect = False
                continue
            if in_test:
                in_test = word != "]]"
                continue
            if skip_to_separator or not expect:
                continue
            if prefix == "timeout":
                if word.startswith("-"):
                    continue
                prefix = None  # the duration
                continue
            if prefix == "env" and (word.startswith("-") or ASSIGNMENT.match(word)):
                continue
            if prefix in SH_PREFIX and word.startswith("-"):
                if prefix == "command" and word in ("-v", "-V"):
                    expect = False  # command -v NAME looks NAME up, runs nothing
                continue
            prefix = None
            if ASSIGNMENT.match(word) or word in SH_KEEP:
                continue
            if word in SH_END:
                expect = False
                continue
            if word in ("for", "select", "case", "function"):
                skip_to_separator = True
                continue
            if word == "[[":
                in_test, expect = True, False
                continue
            expect = False
            name = program(word)
            if name is None or word.startswith("((") or any(ch in word for ch in "$`'\"*?"):
                continue  # a variable's value, a quoted or relative path: not a name
            if name in SH_BUILTINS:
                if name in SH_PREFIX:
                    expect, prefix = True, name
                continue
            self.found.append(Use(name, self.path, line))
            if name in SH_PREFIX:
                expect, prefix = True, name
            elif name in ("timeout", "env"):
                expect, prefix = True, name


# -- the checks -----------------------------------------------------------------------------


def py_files() -> list[pathlib.Path]:
    return sorted(p for top in PY_SOURCES for p in (REPO / top).rglob("*.py"))


def sh_files() -> list[pathlib.Path]:
    return sorted(p for pattern in SH_SOURCES for p in REPO.glob(pattern) if p.is_file())


def all_uses() -> list[Use]:
    files = py_files()
    fakes = REPO / "tests" / "fakes"
    shared = {f"tests.fakes.{p.stem}": PyScanner(p).helpers for p in files if p.parent == fakes}
    uses = [u for p in files for u in PyScanner(p, shared=shared).uses()]
    # The scripts source each other's helpers (tools/lib.sh, tools/try-it.d/lib.bash).
    shared = set().union(*(defined_functions(p.read_text()) for p in sh_files()))
    return uses + [u for p in sh_files() for u in ShellScanner(p, functions=shared).uses()]


def user_of(path: pathlib.Path) -> str:
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith("bench/"):
        return "bench"
    if rel.startswith("tools/try-it"):
        return "demo"
    if rel == "tools/lib.sh":
        return "venv"  # what tools/try-it and tools/test-all both run first
    return "test"  # tests/, the harness, stowkit itself (the tests run it), tools/test-all


def problems(uses: Iterable[Use], rows: dict[str, table.Row]) -> list[str]:
    out = []
    for use in uses:
        name = use.command
        if name in ESSENTIAL or PROJECT.match(name):
            continue
        row = rows.get(name)
        user = user_of(use.path) if use.path.is_relative_to(REPO) else "test"
        if row is None:
            out.append(
                f"{use.where()} runs {name!r}, which tools/commands.txt does not name: add a row"
                f" '{name} PACKAGE {user} -' (dpkg -S $(command -v {name}) names the package)"
            )
        elif user not in row.users:
            out.append(
                f"{use.where()} runs {name!r}, but tools/commands.txt line {row.line} does not list"
                f" {user!r} in its USED-BY column, so the {user} installer would not install"
                f" {row.package}"
            )
    return sorted(set(out))


def test_every_command_run_is_in_the_table():
    found = problems(all_uses(), table.commands())
    assert not found, "\n".join(found)


def test_the_scan_finds_what_the_project_runs():
    """The scanner really sees commands (a broken scanner would pass the test above)."""
    found = {(u.command, user_of(u.path)) for u in all_uses()}
    expected = {
        ("nbdinfo", "test"), ("qemu-img", "test"), ("qemu-io", "test"), ("nbdfuse", "test"),
        ("fusermount3", "test"), ("docker", "test"), ("ssh", "test"), ("mkfs.btrfs", "test"),
        ("memcached", "test"), ("sshd", "test"), ("nbdkit", "bench"), ("nbdcopy", "bench"),
        ("qemu-img", "bench"), ("btrfs", "bench"), ("nbdcopy", "demo"), ("curl", "demo"),
        ("mkfs.btrfs", "demo"), ("losetup", "demo"),
    }  # fmt: skip
    assert expected <= found, sorted(expected - found)


def test_an_unknown_command_fails_with_its_name(tmp_path):
    py = tmp_path / "test_new.py"
    py.write_text(
        "import subprocess\n"
        "def run(*cmd, timeout=30):\n"
        "    return subprocess.run(['timeout', str(timeout), *cmd], check=True)\n"
        "def timed(cmd):\n"
        "    subprocess.run(['timeout', '-s', 'KILL', '60', *cmd])\n"
        "TOOL = ['zzz-listed', '--flag']\n"
        "def test_it():\n"
        "    subprocess.run(['zzz', 'x'])\n"
        "    subprocess.Popen(['/usr/sbin/zzz-abs'])\n"
        "    run('zzz-helper', 'arg')\n"
        "    timed(['zzz-timed', 'x'])\n"
        "    subprocess.run([*TOOL, 'y'])\n"
        "    subprocess.run(['qemu-img', 'info'])\n"
        "    subprocess.run(['env', 'A=1', 'zzz-env'])\n"
    )
    sh = tmp_path / "demo.sh"
    sh.write_text(
        "#!/usr/bin/env bash\n"
        "set -euo pipefail\n"
        'sk() { stowkit "$@"; }\n'
        'x=$(zzz-subst --a "$(zzz-nested)")\n'
        "cat <<EOF >/dev/null\nzzz-in-heredoc\nEOF\n"
        "timeout 10 zzz-sh -q | sort\n"
        "[[ -e /x ]] || zzz-or 2>&1\n"
        "sk volume list\n"
        "echo 'zzz-quoted'; sleep 1 & wait\n"
        "command -v zzz-lookup >/dev/null && exec zzz-exec\n"
        "((n > 1)) || zzz-after-arith\n"
        "list=(zzz-array-item other)\n"
    )
    uses = PyScanner(py).uses() + ShellScanner(sh).uses()
    rows = {"qemu-img": table.Row("qemu-img", "qemu-utils", frozenset({"bench"}), frozenset(), 9)}
    message = "\n".join(problems(uses, rows))
    for name in (
        "zzz", "zzz-abs", "zzz-helper", "zzz-timed", "zzz-listed", "zzz-env", "zzz-subst",
        "zzz-nested", "zzz-sh", "zzz-or", "zzz-exec", "zzz-after-arith",
    ):  # fmt: skip
        assert f"runs {name!r}, which tools/commands.txt does not name" in message, name
    assert "'qemu-img', but tools/commands.txt line 9 does not list 'test'" in message
    for name in (
        "zzz-in-heredoc", "zzz-quoted", "zzz-lookup", "zzz-array-item", "'sk'", "'stowkit'",
        "'sort'", "'n'",
    ):  # fmt: skip
        assert name not in message
    with pytest.raises(AssertionError, match="'zzz'"):
        assert not problems(uses, rows), "\n".join(problems(uses, rows))


def test_tests_and_benchmarks_run_stowkit_from_their_own_venv():
    """``stowkit`` by name is whatever PATH finds first, not necessarily what is tested."""
    by_name = [
        u.where()
        for top in ("tests", "bench")
        for p in sorted((REPO / top).rglob("*.py"))
        for u in PyScanner(p).uses()
        if PROJECT.match(u.command)
    ]
    assert not by_name, (
        "run stowkit with the interpreter that runs the code (tests.commands.STOWKIT,"
        f" bench/figures.py stowkit_command()) instead of by name: {by_name}"
    )


def test_the_table_is_well_formed_and_names_real_services():
    from tools import stack

    rows = table.rows()
    services = set(stack.modules())
    for row in rows:
        assert re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", row.package), row
        assert row.services <= services, (row, services)
    names = [row.command for row in rows if row.command]
    assert len(names) == len(set(names)), "a command is listed twice"
    for name in ("qemu-img", "qemu-io", "nbdfuse", "fusermount3", "nbdinfo", "nbdcopy", "nbdkit"):
        assert name in table.commands(), name
    venv = set(table.packages("venv"))
    assert {"python3.11", "python3.11-venv", "python3.11-dev", "gcc", "libc6-dev"} <= venv
    assert "libbtrfsutil-dev" in venv


def test_bash_and_python_read_the_same_packages():
    script = f'source "{REPO}/tools/lib.sh"; table_packages "$@"'
    for users in (["test", "bench", "venv"], ["demo", "venv"], ["bench"]):
        out = subprocess.run(
            ["bash", "-c", script, "bash", *users],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        ).stdout.split()
        assert out == table.packages(*users), users


STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_installed_commands_come_from_the_packages_named():
    """A package dpkg does not report installed (a virtual one, a typo) would make the
    installers run apt-get on every run; a wrong one installs the wrong thing."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian system")
    present = {
        name: path
        for name, row in table.commands().items()
        if (path := shutil.which(name, path=STANDARD_PATH))
    }
    rows = table.commands()
    wanted = sorted({rows[name].package for name in present})
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *wanted],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if "install ok installed" in line}
    wrong = []
    for name, path in sorted(present.items()):
        package = rows[name].package
        if package not in installed:
            owner = subprocess.run(
                ["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True, timeout=60
            ).stdout.strip()
            wrong.append(
                f"{name} is installed ({path}) but package {package} (tools/commands.txt line"
                f" {rows[name].line}) is not; dpkg -S says: {owner or 'no package'}"
            )
    assert not wrong, "\n".join(wrong)
