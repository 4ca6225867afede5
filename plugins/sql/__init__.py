"""The catalog on SQL (SQLAlchemy 2): SQLite embedded, PostgreSQL shared."""
