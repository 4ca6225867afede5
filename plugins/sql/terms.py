"""The search index of a document: one token per (hot field, scalar value) at any depth.

freezer's searches match a field name at any depth, which no B-tree or GIN
index on the JSON itself can answer (PostgreSQL's GIN ``jsonb_path_ops`` does
not index ``$.**``).  So each document carries, in the ``terms`` column, one
token ``field=value`` for every member named one of :data:`INDEXED_FIELDS`
whose value is a scalar, wherever it sits (nested objects, objects inside
lists).  A ``match`` term ``{field: scalar}`` on such a field holds exactly
when the document has that token, so the search asks the token list instead
of walking the JSON: a GIN index on PostgreSQL, a substring test (no JSON
parsing) on SQLite.

The tokens are kept in one text column, separated (and framed) by newlines:
a value is JSON-encoded, and JSON never holds a raw newline, so a token
cannot be confused with two.

This module owns the token format: :func:`terms_of` (what is stored) and
:func:`token` (what a search asks) must agree, and a change to either, or to
:data:`INDEXED_FIELDS`, needs a migration that recomputes every row's terms
(as 0002 does).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

#: The fields polls and searches use: the scheduler's poll (client_id, status),
#: the backup list's filters, and the ids the service itself looks up across
#: projects (``all_projects``, a trust's last job).
INDEXED_FIELDS = frozenset(
    {
        "client_id",
        "status",
        "container",
        "hostname",
        "backup_name",
        "time_stamp",
        "job_id",
        "backup_id",
        "action_id",
        "session_id",
        "trust_id",
    }
)

SEP = "\n"
#: Longer tokens are stored as a digest: a GIN entry must stay well below a page.
MAX_TOKEN = 200
_INT_FLOAT = float(2**63)


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)


def _value_text(value: Any) -> str:
    """One text per value that compares equal as the searches compare (1 == 1.0, 1 != true)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < _INT_FLOAT:
            return str(int(value))
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def token(field: str, value: Any) -> str:
    """The token a document has when some member ``field`` equals the scalar ``value``."""
    text = f"{field}={_value_text(value)}"
    if len(text) > MAX_TOKEN:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        text = f"{field}#{digest}"
    return text


def indexed(field: str, value: Any) -> bool:
    """Whether a search term ``{field: value}`` can be answered from the tokens."""
    return field in INDEXED_FIELDS and is_scalar(value)


def terms_of(doc: Any) -> str:
    """The ``terms`` column of a document: its tokens, each framed by newlines."""
    found: set[str] = set()
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key in INDEXED_FIELDS and is_scalar(value):
                    found.add(token(key, value))
                elif isinstance(value, Mapping | list | tuple):
                    stack.append(value)
        elif isinstance(node, list | tuple):
            stack.extend(v for v in node if isinstance(v, Mapping | list | tuple))
    if not found:
        return SEP
    return SEP + SEP.join(sorted(found)) + SEP


def needle(field: str, value: Any) -> str:
    """What a framed ``terms`` text contains when it has the token (SQLite's test)."""
    return SEP + token(field, value) + SEP
