"""Hostile JSON for the catalog API: hypothesis strategies and an encoder that writes what
Python's json will not (lone surrogates, 1e400, objects nested hundreds deep)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


class Raw:
    """A JSON token sent as is (numbers Python's json cannot write, like 1e400)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def encode(value: Any) -> str:
    """JSON text of ``value``; lone surrogates escaped (as a client may send them)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)  # NaN / Infinity tokens too


# Any code point, lone surrogates and NUL included.
texts = st.text(st.characters(exclude_categories=()), max_size=20)

raw_numbers = st.sampled_from(
    ["1e400", "-1e400", "1e-400", "123456789012345678901234567890", "-0", "0.0e99999"]
).map(Raw)


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
    raw_numbers,
)


values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def deep(depth: int) -> Raw:
    """Objects nested ``depth`` deep, as text (no recursion on either side)."""
    return Raw('{"n":' * depth + "1" + "}" * depth)


hostile = st.one_of(values, st.integers(10, 700).map(deep))
