"""Catalog backend on SQLAlchemy 2: SQLite (embedded default) or PostgreSQL (shared).

Searches run in the database: every ``match``/``match_not`` term becomes a
condition in the WHERE clause, and lists page by the creation sequence, so a
page is stable and never needs the whole table in Python.  A plain field name
matches that key at any depth, as freezer-api does (``json_tree`` on SQLite,
``jsonb_path_query`` with ``$.**`` on PostgreSQL); a dotted one is an exact
path (``json_extract`` / ``#>``).  A term on one of the hot fields with a
scalar value (the scheduler's poll, the backup list's filters) is answered
from the document's search tokens instead (plugins/sql/terms.py): a GIN index
on PostgreSQL, a plain substring test on SQLite.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy.dialects import postgresql

from stowkit.corelib.catalog import Catalog, Stored, Term, VersionConflict, check_kind
from stowkit.corelib.errors import (
    AlreadyExists,
    BackendUnavailable,
    ConfigError,
    InvalidArgument,
    NotFound,
    StowkitError,
)
from stowkit.plugins.sql import terms as _terms
from stowkit.plugins.sql.tables import PG_TERMS_ARRAY
from stowkit.plugins.sql.tables import documents as T

LOG = logging.getLogger(__name__)

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
#: Search fields meaning "anywhere in the document" (freezerclient sends ``_all``).
FULL_TEXT = frozenset({"_all", "*"})


def normalise_url(url: str) -> str:
    """Pick the psycopg (v3) driver for a bare postgresql:// URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class SqlCatalog(Catalog):
    options = [
        cfg.StrOpt(
            "connection",
            default="sqlite:///$state_dir/catalog.sqlite",
            secret=True,
            help="SQLAlchemy URL of the catalog database: sqlite:///PATH (embedded) or "
            "postgresql+psycopg://USER:PASSWORD@HOST/DB (shared by several servers).",
        ),
        cfg.IntOpt("pool_size", default=5, min=1, help="Connections kept open per process."),
        cfg.IntOpt(
            "busy_timeout",
            default=15000,
            min=0,
            help="SQLite only: milliseconds a writer waits for another writer's lock.",
        ),
    ]

    client_modules = ("sqlalchemy", "alembic")

    @classmethod
    def unavailable(cls, opts=None) -> str | None:
        """SQLAlchemy and Alembic, then the DB-API module the configured URL names.

        psycopg (or any other database driver) is needed only when the
        connection names it; SQLite's comes with Python.
        """
        logging.getLogger("alembic").setLevel(logging.WARNING)  # as in sync(): quiet import
        reason = super().unavailable(opts)
        if reason is not None or opts is None:
            return reason
        try:
            dialect = sa.make_url(normalise_url(opts.connection)).get_dialect()
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            return f"connection: {exc}"
        try:
            dialect.import_dbapi()
        except ImportError as exc:
            return f"connection needs the {dialect.driver} database driver: {exc}"
        return None

    def __init__(self, conf: cfg.ConfigOpts, group: str) -> None:
        super().__init__(conf, group)
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()

    # -- engine -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return normalise_url(self.opts.connection)

    @property
    def engine(self) -> sa.Engine:
        # One engine per process: a server forks its workers after loading the
        # app, and a pooled connection must never cross a fork.
        if self._engine is None or self._pid != os.getpid():
            with self._lock:
                if self._engine is None or self._pid != os.getpid():
                    self._engine = self._make_engine()
                    self._pid = os.getpid()
        return self._engine

    def _make_engine(self) -> sa.Engine:
        url = self.url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"[{self.group}] connection is not a database URL: {exc}") from None
        if parsed.get_backend_name() == "sqlite":
            return self._sqlite_engine(parsed)
        try:
            return sa.create_engine(
                parsed, pool_size=self.opts.pool_size, pool_pre_ping=True, max_overflow=10
            )
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"[{self.group}] connection: no driver for {url!r}: {exc}") from None

    def _sqlite_engine(self, parsed: sa.URL) -> sa.Engine:
        if parsed.database and parsed.database != ":memory:":
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": self.opts.busy_timeout / 1000},
            pool_size=self.opts.pool_size,
        )
        busy = int(self.opts.busy_timeout)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run during a write; NORMAL sync is durable at
            # every checkpoint and an order of magnitude faster than FULL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={busy}")
            cur.close()

        return engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _unavailable(self, exc: Exception) -> BackendUnavailable:
        orig = getattr(exc, "orig", exc)
        return BackendUnavailable(f"catalog database error: {orig}")

    def _db_error(self, exc: Exception, searching: bool = False) -> StowkitError:
        """What a database error means for the caller; never the database's own text
        unless it only says the database is unreachable (a refused statement's
        message may quote a stored document: it goes to the log).

        * the database cannot be reached, is busy or out of resources: 503;
        * its catalog tables are not there (never synced): 503, naming the fix;
        * the request exceeds a database limit, or a written value is refused: 400;
        * a search the stored data cannot answer: 500 (logged), as that is ours.
        """
        orig = getattr(exc, "orig", exc)
        verdict = classify_db_error(orig)
        if verdict == "unavailable":
            return self._unavailable(exc)
        if verdict == "schema":
            # No URL: API clients see this message too.
            return BackendUnavailable(
                "the catalog database has no catalog tables: "
                "run `stowkit catalog db-sync` (as `catalog serve` does at start)"
            )
        LOG.warning("catalog database refused a statement (%s): %s", verdict, orig)
        if verdict == "limit":
            return InvalidArgument("the request is too large or complex for the catalog database")
        if searching:
            return _ServerFault("the catalog database could not run this search (logged)")
        return InvalidArgument("the catalog database refused the document's data")

    # -- raw DBAPI fast path ----------------------------------------------------
    # The three statements every request runs (insert, fetch one, fetch a page)
    # skip SQLAlchemy's statement building: plain SQL on a pooled DBAPI
    # connection costs a fraction of a millisecond, compiled Core a few.
    def _sql(self, text: str) -> str:
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def _raw(self, text: str, params: tuple, fetch: str | None, commit: bool = False) -> Any:
        try:
            conn = self.engine.raw_connection()
        except (sa.exc.OperationalError, sa.exc.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._sql(text), params)
                if fetch == "one":
                    result = cur.fetchone()
                elif fetch == "all":
                    result = cur.fetchall()
                else:
                    result = cur.rowcount
            finally:
                cur.close()
            if commit:
                conn.commit()
            else:
                conn.rollback()
            return result
        except Exception as exc:
            try:
                conn.rollback()
            except Exception:
                pass
            if _is_integrity(exc):
                raise AlreadyExists("duplicate") from None
            if _is_db_error(exc):
                raise self._db_error(exc, searching=fetch == "all") from None
            raise
        finally:
            conn.close()

    # -- schema -----------------------------------------------------------------
    def alembic_config(self, connection: sa.Connection) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"version_table": "catalog_alembic_version"}
            )
            return ctx.get_current_revision()

    def sync(self) -> str:
        # Quiet before the import: alembic logs its plugin set-up while loading.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from alembic import command
        from alembic.script import ScriptDirectory

        try:
            before = self.current_revision()
            with self.engine.begin() as conn:
                config = self.alembic_config(conn)
                head = ScriptDirectory.from_config(config).get_current_head()
                command.upgrade(config, "head")
        except sa.exc.OperationalError as exc:
            raise self._unavailable(exc) from None
        where = self.engine.url.render_as_string(hide_password=True)
        if before == head:
            return f"catalog database {where} is up to date (revision {head})"
        return f"catalog database {where} upgraded from {before or 'empty'} to {head}"

    # -- documents --------------------------------------------------------------
    def create(self, project: str, kind: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        check_kind(kind)
        now = time.time()
        try:
            self._raw(
                "INSERT INTO catalog_documents "
                "(project_id, kind, doc_id, version, created_at, updated_at, body, terms) "
                "VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                (project, kind, doc_id, now, now, _encode(doc), _terms.terms_of(doc)),
                None,
                commit=True,
            )
        except AlreadyExists:
            raise AlreadyExists(f"{kind[:-1]} {doc_id!r} already exists") from None

    def get_versioned(self, project: str, kind: str, doc_id: str) -> Stored:
        check_kind(kind)
        stmt = sa.select(T.c.body, T.c.version).where(
            T.c.project_id == project, T.c.kind == kind, T.c.doc_id == doc_id
        )
        try:
            with self.engine.connect() as conn:
                row = conn.execute(stmt).first()
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc) from None
        if row is None:
            raise NotFound(f"{kind[:-1]} {doc_id!r} not found")
        return Stored(json.loads(row.body), row.version)

    def get_json(self, project: str, kind: str, doc_id: str) -> str:
        """The stored JSON text of one document (served without re-encoding)."""
        return self.get_json_versioned(project, kind, doc_id)[0]

    def get_json_versioned(self, project: str, kind: str, doc_id: str) -> tuple[str, int]:
        """:meth:`get_json` and the document's version (the API's ETag)."""
        check_kind(kind)
        row = self._raw(
            "SELECT body, version FROM catalog_documents "
            "WHERE project_id = ? AND kind = ? AND doc_id = ?",
            (project, kind, doc_id),
            "one",
        )
        if row is None:
            raise NotFound(f"{kind[:-1]} {doc_id!r} not found")
        return row[0], int(row[1])

    def put(
        self,
        project: str,
        kind: str,
        doc_id: str,
        doc: Mapping[str, Any],
        version: int | None = None,
    ) -> int:
        check_kind(kind)
        where = [T.c.project_id == project, T.c.kind == kind, T.c.doc_id == doc_id]
        if version is not None:
            where.append(T.c.version == version)
        stmt = (
            T.update()
            .where(*where)
            .values(
                body=_encode(doc),
                terms=_terms.terms_of(doc),
                version=T.c.version + 1,
                updated_at=time.time(),
            )
            .returning(T.c.version)
        )
        try:
            with self.engine.begin() as conn:
                new = conn.execute(stmt).scalar()
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc) from None
        if new is None:
            if version is not None and self._exists(project, kind, doc_id):
                raise VersionConflict(f"{kind[:-1]} {doc_id!r} was changed concurrently")
            raise NotFound(f"{kind[:-1]} {doc_id!r} not found")
        return int(new)

    def _exists(self, project: str, kind: str, doc_id: str) -> bool:
        stmt = sa.select(T.c.seq).where(
            T.c.project_id == project, T.c.kind == kind, T.c.doc_id == doc_id
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def delete(self, project: str, kind: str, doc_id: str) -> None:
        check_kind(kind)
        stmt = T.delete().where(T.c.project_id == project, T.c.kind == kind, T.c.doc_id == doc_id)
        try:
            with self.engine.begin() as conn:
                count = conn.execute(stmt).rowcount
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc) from None
        if not count:
            raise NotFound(f"{kind[:-1]} {doc_id!r} not found")

    # -- search -----------------------------------------------------------------
    def _path_value(self, path: list[str], value: Any) -> sa.ColumnElement[bool]:
        if self.dialect == "postgresql":
            doc = sa.cast(T.c.body, postgresql.JSONB)
            return doc.op("#>")(sa.literal(path, postgresql.ARRAY(sa.Text))) == sa.cast(
                sa.literal(json.dumps(value)), postgresql.JSONB
            )
        jpath = "$" + "".join(f'."{p}"' for p in path)
        extracted = sa.func.json_extract(T.c.body, jpath)
        if isinstance(value, bool):
            return sa.and_(
                extracted == int(value), sa.func.json_type(T.c.body, jpath) == str(value).lower()
            )
        if isinstance(value, dict | list):
            return extracted == json.dumps(value, separators=(",", ":"))
        if value is None:
            return sa.func.json_type(T.c.body, jpath) == "null"
        return extracted == value

    def _any_depth(self, key: str, value: Any) -> sa.ColumnElement[bool]:
        """Some member named ``key``, in any object at any depth, equals ``value``."""
        if self.dialect == "postgresql":
            # lax mode: a key missing from a node, or a scalar node, yields nothing.
            found = (
                sa.func.jsonb_path_query(
                    sa.cast(T.c.body, postgresql.JSONB),
                    sa.cast(sa.literal(f'lax $.**."{key}"'), postgresql.JSONPATH),
                )
                .table_valued(sa.column("v", postgresql.JSONB))
                .render_derived(name="found")
            )
            wanted = sa.cast(sa.literal(json.dumps(value)), postgresql.JSONB)
            return sa.exists(sa.select(1).select_from(found).where(found.c.v == wanted))
        tree = (
            sa.func.json_tree(T.c.body).table_valued("key", "type", "atom", "value").alias("node")
        )
        if isinstance(value, bool):
            same = tree.c.type == ("true" if value else "false")
        elif value is None:
            same = tree.c.type == "null"
        elif isinstance(value, int | float):
            same = sa.and_(tree.c.type.in_(("integer", "real")), tree.c.atom == value)
        elif isinstance(value, str):
            same = sa.and_(tree.c.type == "text", tree.c.atom == value)
        else:  # an object or a list: compare the minified JSON texts
            text = json.dumps(value, separators=(",", ":"))
            same = sa.and_(tree.c.type.in_(("object", "array")), tree.c.value == sa.func.json(text))
        # Array elements have integer keys, so only object members can match.
        return sa.exists(sa.select(1).select_from(tree).where(tree.c.key == key, same))

    def _has_token(self, field: str, value: Any) -> sa.ColumnElement[bool]:
        """``{field: scalar}`` at any depth, from the document's search tokens (terms.py)."""
        if self.dialect == "postgresql":
            # The very expression of the GIN index, so the planner can use it.
            return sa.literal_column(PG_TERMS_ARRAY).op("@>")(
                sa.cast(sa.literal([_terms.token(field, value)]), postgresql.ARRAY(sa.Text))
            )
        return sa.func.instr(T.c.terms, _terms.needle(field, value)) > 0

    def _term(self, kind: str, term: Term) -> sa.ColumnElement[bool]:
        if not isinstance(term, Mapping) or not term:
            raise InvalidArgument('each search term must be an object like {"field": value}')
        clauses = []
        for field, value in term.items():
            if field in FULL_TEXT:
                text = value if isinstance(value, str) else json.dumps(value)
                escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append(T.c.body.ilike(f"%{escaped}%", escape="\\"))
                continue
            if not isinstance(field, str) or not _FIELD.match(field):
                raise InvalidArgument(
                    f"invalid search field {field!r}: use letters, digits, _ and - "
                    "(dots reach into nested objects)"
                )
            path = field.split(".")
            if _terms.indexed(field, value):
                clauses.append(self._has_token(field, value))
            elif len(path) == 1:
                clauses.append(self._any_depth(field, value))
            else:
                clauses.append(self._path_value(path, value))
        return sa.and_(*clauses)

    def _select(
        self,
        project: str | None,
        kind: str,
        limit: int,
        offset: int,
        match: Sequence[Term],
        match_not: Sequence[Term],
        central: bool = False,
    ) -> sa.Select:
        check_kind(kind)
        if limit < 0 or offset < 0:
            raise InvalidArgument("limit and offset must not be negative")
        stmt = sa.select(T.c.body).where(T.c.kind == kind)
        if project is not None:
            own = T.c.project_id == project
            if central:
                # freezer-api's central clients: seen from every project
                own = sa.or_(own, self._path_value(["client", "is_central"], True))
            stmt = stmt.where(own)
        for term in match:
            stmt = stmt.where(self._term(kind, term))
        for term in match_not:
            # A field missing from a document compares as NULL: without the
            # COALESCE, NOT(NULL) would drop that document from the result.
            stmt = stmt.where(sa.not_(sa.func.coalesce(self._term(kind, term), sa.false())))
        return stmt.order_by(T.c.seq).limit(limit).offset(offset)

    def search_json(
        self,
        project: str | None,
        kind: str,
        limit: int = 10,
        offset: int = 0,
        match: Sequence[Term] = (),
        match_not: Sequence[Term] = (),
        central: bool = False,
    ) -> list[str]:
        if central and project is not None:
            # own documents or any project's central ones: the general statement
            stmt = self._select(project, kind, limit, offset, match, match_not, central)
            return self._run_search(stmt)
        if not match and not match_not and project is not None:
            check_kind(kind)
            if limit < 0 or offset < 0:
                raise InvalidArgument("limit and offset must not be negative")
            rows = self._raw(
                "SELECT body FROM catalog_documents WHERE project_id = ? AND kind = ? "
                "ORDER BY seq LIMIT ? OFFSET ?",
                (project, kind, limit, offset),
                "all",
            )
            return [r[0] for r in rows]
        fast = self.token_sql(project, kind, limit, offset, match, match_not)
        if fast is not None:
            return [r[0] for r in self._raw(*fast, "all")]
        return self._run_search(self._select(project, kind, limit, offset, match, match_not))

    def _run_search(self, stmt: sa.Select) -> list[str]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).scalars())
        except sa.exc.DBAPIError as exc:
            raise self._db_error(exc, searching=True) from None
        except OverflowError:
            raise InvalidArgument("invalid search: a number is too large") from None

    def token_sql(
        self,
        project: str | None,
        kind: str,
        limit: int,
        offset: int,
        match: Sequence[Term],
        match_not: Sequence[Term],
    ) -> tuple[str, tuple] | None:
        """A search whose every term is on the tokens (the poll) as plain SQL and its
        parameters (``?`` placeholders, see :meth:`_sql`); None for any other search.

        The same conditions as :meth:`_has_token` (so the same index), without
        building and compiling a statement per request.
        """
        terms = [*match, *match_not]
        if project is None or not all(
            isinstance(t, Mapping) and t and all(_terms.indexed(f, v) for f, v in t.items())
            for t in terms
        ):
            return None
        check_kind(kind)
        if limit < 0 or offset < 0:
            raise InvalidArgument("limit and offset must not be negative")
        where, params = ["project_id = ?", "kind = ?"], [project, kind]
        pg = self.dialect == "postgresql"
        for term, negate in [(t, False) for t in match] + [(t, True) for t in match_not]:
            tokens = [_terms.token(f, v) for f, v in term.items()]
            if pg:
                cond = f"{PG_TERMS_ARRAY.replace('%', '%%')} @> ?::text[]"
                params.append(tokens)
            else:
                cond = " AND ".join("instr(terms, ?) > 0" for _ in tokens)
                params.extend(_terms.SEP + t + _terms.SEP for t in tokens)
            where.append(f"NOT ({cond})" if negate else f"({cond})")
        sql = f"SELECT body FROM catalog_documents WHERE {' AND '.join(where)} ORDER BY seq"
        return f"{sql} LIMIT ? OFFSET ?", (*params, limit, offset)

    def search(
        self,
        project: str | None,
        kind: str,
        limit: int = 10,
        offset: int = 0,
        match: Sequence[Term] = (),
        match_not: Sequence[Term] = (),
        central: bool = False,
    ) -> list[dict[str, Any]]:
        found = self.search_json(project, kind, limit, offset, match, match_not, central)
        return [json.loads(b) for b in found]


def _is_integrity(exc: BaseException) -> bool:
    return type(exc).__name__ in ("IntegrityError", "UniqueViolation")


def _is_db_error(exc: BaseException) -> bool:
    """A DB-API error (sqlite3's or psycopg's), as opposed to a bug of ours."""
    return any(
        c.__name__ == "DatabaseError" or c.__name__ == "InterfaceError" for c in type(exc).__mro__
    )


class _ServerFault(StowkitError):
    """The stored data, not the request, is at fault (HTTP 500, logged)."""

    http_status = 500


#: SQLite messages that mean "not now" rather than "not this".
_SQLITE_UNAVAILABLE = (
    "locked",
    "busy",
    "unable to open",
    "disk i/o",
    "readonly",
    "read-only",
    "disk is full",
    "not a database",
    "interrupted",
)
_SQLITE_LIMIT = ("too many", "too large", "too big", "too complex", "stack overflow", "depth")


def classify_db_error(orig: BaseException) -> str:
    """``unavailable``, ``schema`` (the catalog's tables are not there), ``limit`` (the
    request exceeds a database limit) or ``data``."""
    if type(orig).__name__ == "InterfaceError":
        return "unavailable"
    state = getattr(orig, "sqlstate", None)
    if state == "42P01" or (not state and "no such table" in str(orig).lower()):
        return "schema"  # PostgreSQL's undefined_table; SQLite's own words
    if state:  # PostgreSQL (psycopg): the SQLSTATE class says it
        if state[:2] in ("08", "53", "57", "58", "40", "XX") and state != "57014":
            return "unavailable"
        if state[:2] == "54" or state == "57014":  # program limit; statement timeout
            return "limit"
        return "data"
    text = str(orig).lower()
    if any(word in text for word in _SQLITE_UNAVAILABLE):
        return "unavailable"
    if any(word in text for word in _SQLITE_LIMIT):
        return "limit"
    return "data"


def _encode(doc: Mapping[str, Any]) -> str:
    """Compact JSON; never NaN or Infinity, which would be stored as invalid JSON."""
    try:
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise InvalidArgument("a document may not hold NaN or infinite numbers") from None
