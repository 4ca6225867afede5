"""The catalog's one table, as SQLAlchemy Core metadata (migrations create it)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: Every document of every kind.  ``body`` is the JSON text served as is, so a
#: list response is built without parsing a single document; ``seq`` gives
#: lists a stable order (creation order) that limit/offset can page through.
documents = sa.Table(
    "catalog_documents",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("project_id", sa.String(255), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("doc_id", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Column("body", sa.Text(), nullable=False),
    # The search tokens of ``body`` (plugins/sql/terms.py), kept by every write.
    sa.Column("terms", sa.Text(), nullable=False, server_default="\n"),
    sa.UniqueConstraint("project_id", "kind", "doc_id", name="uq_catalog_documents_key"),
    sa.Index("ix_catalog_documents_list", "project_id", "kind", "seq"),
)

#: The ``terms`` tokens as a PostgreSQL array: the expression of the GIN index
#: ``ix_catalog_documents_terms`` (migration 0002), and of every search that
#: wants that index (the planner uses an expression index only for the same
#: expression).  SQLite has no such index: it tests the framed text instead.
PG_TERMS_ARRAY = "string_to_array(terms, E'\\n')"
PG_TERMS_INDEX = "ix_catalog_documents_terms"
