"""Alembic environment: the caller hands us an open connection (see stowkit.plugins.sql.catalog)."""

from __future__ import annotations

from alembic import context

from stowkit.plugins.sql.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="catalog_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
