"""Search tokens: the ``terms`` column, filled for existing rows, and its GIN index.

Revision ID: 0002
Revises: 0001

Every existing document gets its tokens (plugins/sql/terms.py) in batches, by
``seq``, so an upgrade of a large catalog holds no more than a batch in memory.
On PostgreSQL the tokens are indexed with GIN (``string_to_array`` of the
column, the expression the searches use); SQLite tests the text and needs no
index.
"""

import json

import sqlalchemy as sa
from alembic import op

from stowkit.plugins.sql.tables import PG_TERMS_ARRAY, PG_TERMS_INDEX
from stowkit.plugins.sql.terms import terms_of

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BATCH = 2000


def _backfill(conn: sa.Connection) -> None:
    docs = sa.table("catalog_documents", sa.column("seq"), sa.column("body"), sa.column("terms"))
    last = -1
    while True:
        rows = conn.execute(
            sa.select(docs.c.seq, docs.c.body)
            .where(docs.c.seq > last)
            .order_by(docs.c.seq)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        updates = []
        for seq, body in rows:
            try:
                terms = terms_of(json.loads(body))
            except ValueError:  # a document stored before bodies were checked: not searchable
                terms = "\n"
            updates.append({"s": seq, "t": terms})
        conn.execute(
            docs.update().where(docs.c.seq == sa.bindparam("s")).values(terms=sa.bindparam("t")),
            updates,
        )
        last = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table("catalog_documents") as batch:
        batch.add_column(sa.Column("terms", sa.Text(), nullable=False, server_default="\n"))
    _backfill(op.get_bind())
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            PG_TERMS_INDEX,
            "catalog_documents",
            [sa.text(PG_TERMS_ARRAY)],
            postgresql_using="gin",
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(PG_TERMS_INDEX, table_name="catalog_documents")
    with op.batch_alter_table("catalog_documents") as batch:
        batch.drop_column("terms")
