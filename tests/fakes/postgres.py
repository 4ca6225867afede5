"""Scratch databases on the harness PostgreSQL, one per test or module, dropped after."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def scratch_database(pg: dict[str, Any], prefix: str) -> Iterator[str]:
    """A new empty database ``PREFIX_<random>`` on the server of ``pg`` (the harness's
    ``service("postgres")`` record); yields its URL and drops it, connections and all."""
    import psycopg  # the functional tests' dependency only

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg["url"], autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield pg["url"].rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(pg["url"], autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
