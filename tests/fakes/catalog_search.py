"""The catalog search as freezer defines it, worked out by hand (``expected``) and through
the SQL JSON walk (``walked``): the references an indexed search must agree with."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from stowkit.plugins.sql.catalog import SqlCatalog
from stowkit.plugins.sql.tables import documents as T


def same(a: Any, b: Any) -> bool:
    """freezer's equality of a stored value and a searched one: types count, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def has(doc: Any, field: str, value: Any) -> bool:
    """Some member ``field`` of some object at any depth equals ``value``."""
    if isinstance(doc, dict):
        return any((k == field and same(v, value)) or has(v, field, value) for k, v in doc.items())
    if isinstance(doc, list):
        return any(has(v, field, value) for v in doc)
    return False


def expected(docs: list[dict], match: list[dict], match_not: list[dict]) -> list[int]:
    def holds(doc: dict, term: dict) -> bool:
        return all(has(doc, f, v) for f, v in term.items())

    return [
        d["n"]
        for d in docs
        if all(holds(d, t) for t in match) and not any(holds(d, t) for t in match_not)
    ]


def walked(catalog: SqlCatalog, match: list[dict], match_not: list[dict]) -> list[int]:
    """The same search through the JSON walk (json_tree), bypassing the tokens."""
    stmt = sa.select(T.c.body).where(T.c.project_id == "p", T.c.kind == "jobs")
    for term in match:
        stmt = stmt.where(sa.and_(*(catalog._any_depth(f, v) for f, v in term.items())))
    for term in match_not:
        cond = sa.and_(*(catalog._any_depth(f, v) for f, v in term.items()))
        stmt = stmt.where(sa.not_(sa.func.coalesce(cond, sa.false())))
    with catalog.engine.connect() as conn:
        return [json.loads(b)["n"] for b in conn.execute(stmt.order_by(T.c.seq)).scalars()]
