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
    sa.UniqueConstraint("project_id", "kind", "doc_id", name="uq_catalog_documents_key"),
    sa.Index("ix_catalog_documents_list", "project_id", "kind", "seq"),
)
