"""A small, safe evaluator for GlanceSync's ``metadata_condition``.

GlanceSync ran the condition through Python's ``eval`` with ``image`` and
``metadata_set`` in scope.  Configuration files are not trusted code, so
here the expression is parsed with :mod:`ast`, every node is checked against
a whitelist, and the tree is turned into plain closures once; evaluating an
image is then a few function calls.

Accepted, which covers every form GlanceSync documents:

* names ``image`` and ``metadata_set`` and the constants ``True``/``False``/``None``;
* attribute access on ``image`` (``image.is_public``, ``image.user_properties``,
  ``image.name``...) - only the attributes listed in :data:`IMAGE_ATTRIBUTES`;
* ``and``, ``or``, ``not``, ``x if c else y``, comparisons (``==`` ``!=`` ``<``
  ``<=`` ``>`` ``>=`` ``in`` ``not in`` ``is`` ``is not``), ``+``/``-`` on numbers;
* subscripts (``image.user_properties['type']``, a missing key is ``None``);
* literals: strings, numbers, tuples, lists, sets;
* the methods in :data:`METHODS` (``.get()``, ``.intersection()``,
  ``.startswith()``...) and the functions ``len``, ``int``, ``str``, ``set``.

Anything else (other names, imports, lambdas, dunder attributes, calls of
arbitrary objects) is rejected when the configuration is loaded.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib.errors import ConfigError

IMAGE_ATTRIBUTES = frozenset(
    {
        "id",
        "name",
        "region",
        "owner",
        "size",
        "checksum",
        "status",
        "is_public",
        "visibility",
        "user_properties",
        "os_hash_value",
        "disk_format",
        "container_format",
    }
)

#: method name -> the types it may be called on
METHODS: dict[str, tuple[type, ...]] = {
    "get": (dict,),
    "keys": (dict,),
    "values": (dict,),
    "items": (dict,),
    "intersection": (set, frozenset),
    "union": (set, frozenset),
    "issubset": (set, frozenset),
    "issuperset": (set, frozenset),
    "startswith": (str,),
    "endswith": (str,),
    "lower": (str,),
    "upper": (str,),
    "strip": (str,),
    "split": (str,),
}

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "int": int,
    "str": str,
    "set": set,
    "bool": bool,
}

NAMES = frozenset({"image", "metadata_set"})

_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub}

Env = Mapping[str, Any]
Fn = Callable[[Env], Any]


#: deepest expression tree accepted (GlanceSync's conditions are a few levels deep)
MAX_DEPTH = 100

#: a line break that is not a backslash continuation (ConfigParser's multi-line values)
_NEWLINE = re.compile(r"(?<!\\)\n")


class ConditionError(ConfigError):
    """The condition cannot be parsed or uses something outside the whitelist."""


class Condition:
    """A compiled condition; call :meth:`evaluate` with the image view."""

    def __init__(self, source: str) -> None:
        self.source = source
        # Only line breaks are joined (a backslash continuation is Python's own
        # and stays as it is); whitespace inside string literals is kept.
        text = _NEWLINE.sub(" ", source).strip()
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise ConditionError(
                f"malformed metadata_condition {_short(text)}: {exc.msg} at column {exc.offset}"
            ) from None
        except ValueError as exc:  # a NUL byte (Python 3.11 says ValueError)
            raise ConditionError(f"malformed metadata_condition {_short(text)}: {exc}") from None
        except (RecursionError, MemoryError):
            # CPython's parser gives up on a few thousand nested operators.
            raise ConditionError(_too_deep(text)) from None
        # Compiling and evaluating recurse once per level: bounded here, so a
        # deep expression is a configuration error, not a crash.
        if _depth(tree.body) > MAX_DEPTH:
            raise ConditionError(_too_deep(text))
        self._fn = _compile(tree.body, text)

    def evaluate(self, image: Any, metadata_set: frozenset[str] | set[str]) -> bool:
        try:
            return bool(self._fn({"image": image, "metadata_set": set(metadata_set)}))
        except (TypeError, ValueError, AttributeError) as exc:
            # GlanceSync crashed here; one bad image must not stop a sync.
            name = getattr(image, "name", "?")
            raise ConditionError(
                f"metadata_condition {self.source!r} failed on image {name!r}: {exc}"
            ) from None

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _too_deep(text: str) -> str:
    return f"metadata_condition {_short(text)} is nested deeper than {MAX_DEPTH} levels"


def _depth(root: ast.AST) -> int:
    """How deep the tree goes, without recursing (the tree may be very deep)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _reject(node: ast.AST, text: str, why: str) -> ConditionError:
    snippet = ast.get_source_segment(text, node) or type(node).__name__
    return ConditionError(f"metadata_condition not allowed: {why} ({snippet!r})")


def _compile(node: ast.AST, text: str) -> Fn:
    if isinstance(node, ast.Constant):
        value = node.value
        if not isinstance(value, str | int | float | bool | type(None)):
            raise _reject(node, text, "only string, number, boolean and None literals")
        return lambda env: value
    if isinstance(node, ast.Name):
        name = node.id
        if name in NAMES:
            return lambda env: env[name]
        raise _reject(node, text, f"unknown name {name!r}; use image or metadata_set")
    if isinstance(node, ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id == "image"):
            raise _reject(node, text, "attributes may only be read from image")
        attr = node.attr
        if attr not in IMAGE_ATTRIBUTES:
            raise _reject(node, text, f"image has no attribute {attr!r}")
        return lambda env: getattr(env["image"], attr)
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, text) for v in node.values]
        if isinstance(node.op, ast.And):

            def and_(env: Env) -> Any:
                result: Any = True
                for part in parts:
                    result = part(env)
                    if not result:
                        return result
                return result

            return and_

        def or_(env: Env) -> Any:
            result: Any = False
            for part in parts:
                result = part(env)
                if result:
                    return result
            return result

        return or_
    if isinstance(node, ast.UnaryOp):
        operand = _compile(node.operand, text)
        if isinstance(node.op, ast.Not):
            return lambda env: not operand(env)
        if isinstance(node.op, ast.USub):
            return lambda env: -operand(env)
        raise _reject(node, text, "only 'not' and '-' as unary operators")
    if isinstance(node, ast.BinOp):
        func = _BINOPS.get(type(node.op))
        if func is None:
            raise _reject(node, text, "only + and - as arithmetic")
        left, right = _compile(node.left, text), _compile(node.right, text)
        return lambda env: func(left(env), right(env))
    if isinstance(node, ast.Compare):
        first = _compile(node.left, text)
        steps = [
            (_COMPARE[type(op)], _compile(comp, text))
            for op, comp in zip(node.ops, node.comparators, strict=True)
        ]

        def compare(env: Env) -> bool:
            left = first(env)
            for func, get_right in steps:
                right = get_right(env)
                if not func(left, right):
                    return False
                left = right
            return True

        return compare
    if isinstance(node, ast.IfExp):
        test, body, orelse = (_compile(n, text) for n in (node.test, node.body, node.orelse))
        return lambda env: body(env) if test(env) else orelse(env)
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Slice):
            raise _reject(node, text, "slices are not supported")
        container, key = _compile(node.value, text), _compile(node.slice, text)

        def subscript(env: Env) -> Any:
            obj = container(env)
            if isinstance(obj, Mapping):
                return obj.get(key(env))
            if isinstance(obj, str | tuple | list):
                try:
                    return obj[key(env)]
                except IndexError:
                    return None
            raise TypeError(f"cannot index {type(obj).__name__}")

        return subscript
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = [_compile(e, text) for e in node.elts]
        kind = {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)]
        return lambda env: kind(item(env) for item in items)
    if isinstance(node, ast.Call):
        if node.keywords:
            raise _reject(node, text, "keyword arguments are not supported")
        args = [_compile(a, text) for a in node.args]
        if isinstance(node.func, ast.Name):
            func = FUNCTIONS.get(node.func.id)
            if func is None:
                raise _reject(node, text, f"unknown function {node.func.id!r}")
            return lambda env: func(*(a(env) for a in args))
        if isinstance(node.func, ast.Attribute):
            method = node.func.attr
            allowed = METHODS.get(method)
            if allowed is None:
                raise _reject(node, text, f"method {method!r} is not allowed")
            target = _compile(node.func.value, text)

            def call(env: Env) -> Any:
                obj = target(env)
                if not isinstance(obj, allowed):
                    raise TypeError(f"{method}() cannot be called on {type(obj).__name__}")
                return getattr(obj, method)(*(a(env) for a in args))

            return call
        raise _reject(node, text, "only named functions and methods may be called")
    raise _reject(node, text, f"{type(node).__name__} expressions are not supported")


def compile_condition(source: str | None) -> Condition | None:
    """``None`` for an empty condition (GlanceSync's ``metadata_condition=``)."""
    if source is None or not source.strip():
        return None
    return Condition(source)
