"""GlanceSync REST tasks on SQLAlchemy 2: SQLite (embedded default) or PostgreSQL.

One table, ``glancesync_tasks``, created by :meth:`SqlTaskStore.sync` (it is
the only table of this store and has no history to migrate yet).  "One
running task per region" is a UNIQUE column: ``running_region`` holds the
region while the task is ``syncing`` and NULL afterwards (NULLs never
collide), so two servers starting the same region at once cannot both win.
"""

from __future__ import annotations

import pathlib
import threading
import time
import uuid
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg

from stowkit.corelib.errors import BackendUnavailable, ConfigError, Conflict, NotFound
from stowkit.corelib.imagesync.tasks import FAILED, INTERRUPTED, SYNCED, SYNCING, Task, TaskStore
from stowkit.plugins.sql.catalog import normalise_url

metadata = sa.MetaData()

tasks = sa.Table(
    "glancesync_tasks",
    metadata,
    sa.Column("task_id", sa.String(36), primary_key=True),
    sa.Column("region", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text(), nullable=True),
    sa.Column("user_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
    sa.Column("running_region", sa.String(255), nullable=True, unique=True),
)


class SqlTaskStore(TaskStore):
    options = [
        cfg.StrOpt(
            "connection",
            default="sqlite:///$state_dir/imagetasks.sqlite",
            secret=True,
            help="SQLAlchemy URL of the GlanceSync task database: sqlite:///PATH (embedded) "
            "or postgresql+psycopg://USER:PASSWORD@HOST/DB.",
        ),
        cfg.IntOpt(
            "busy_timeout",
            default=15000,
            min=0,
            help="SQLite only: milliseconds a writer waits for another writer's lock.",
        ),
    ]

    client_modules = ("sqlalchemy",)

    def __init__(self, conf: cfg.ConfigOpts, group: str) -> None:
        super().__init__(conf, group)
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()

    # -- engine -----------------------------------------------------------------
    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._make_engine()
            return self._engine

    def _make_engine(self) -> sa.Engine:
        url = normalise_url(self.opts.connection)
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(f"[{self.group}] connection is not a database URL: {exc}") from None
        if parsed.get_backend_name() != "sqlite":
            try:
                return sa.create_engine(parsed, pool_pre_ping=True)
            except (sa.exc.NoSuchModuleError, ImportError) as exc:
                raise ConfigError(f"[{self.group}] connection: no driver: {exc}") from None
        if parsed.database and parsed.database != ":memory:":
            pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": self.opts.busy_timeout / 1000},
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def _db(self, func: Any) -> Any:
        try:
            with self.engine.begin() as conn:
                return func(conn)
        except sa.exc.OperationalError as exc:
            raise BackendUnavailable(f"task database error: {getattr(exc, 'orig', exc)}") from None

    # -- TaskStore --------------------------------------------------------------
    def sync(self) -> str:
        self._db(lambda conn: metadata.create_all(conn, checkfirst=True))
        where = self.engine.url.render_as_string(hide_password=True)
        return f"task database {where} is ready"

    @staticmethod
    def _task(row: Any) -> Task:
        return Task(
            row.task_id,
            row.region,
            row.status,
            row.message,
            row.user_name,
            row.created_at,
            row.updated_at,
        )

    def start(self, region: str, user: str) -> tuple[Task, bool]:
        for _ in range(10):
            now = time.time()
            task = Task(str(uuid.uuid4()), region, SYNCING, None, user, now, now)
            values = {
                "task_id": task.task_id,
                "region": region,
                "status": SYNCING,
                "message": None,
                "user_name": user,
                "created_at": now,
                "updated_at": now,
                "running_region": region,
            }
            try:
                self._db(lambda conn, v=values: conn.execute(tasks.insert().values(**v)))
                return task, True
            except sa.exc.IntegrityError:
                pass
            row = self._db(
                lambda conn: conn.execute(
                    sa.select(tasks).where(tasks.c.running_region == region)
                ).first()
            )
            if row is not None:
                return self._task(row), False
            # It finished between our insert and our read: try again.
        raise BackendUnavailable(f"cannot start a task for region {region!r}: too much contention")

    def get(self, task_id: str) -> Task:
        row = self._db(
            lambda conn: conn.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()
        )
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return self._task(row)

    def finish(self, task_id: str, status: str, message: str | None) -> None:
        if status not in (SYNCED, FAILED):
            raise ValueError(f"a task ends as synced or failed, not {status!r}")
        self._db(
            lambda conn: conn.execute(
                tasks.update()
                .where(tasks.c.task_id == task_id, tasks.c.status == SYNCING)
                .values(status=status, message=message, running_region=None, updated_at=time.time())
            )
        )

    def delete(self, task_id: str) -> None:
        def remove(conn: sa.Connection) -> None:
            gone = conn.execute(
                tasks.delete().where(tasks.c.task_id == task_id, tasks.c.status != SYNCING)
            ).rowcount
            if gone:
                return
            exists = conn.execute(
                sa.select(tasks.c.status).where(tasks.c.task_id == task_id)
            ).first()
            if exists is None:
                raise NotFound(f"no task {task_id!r}")
            raise Conflict("Task status is syncing. Unable to delete it.")

        self._db(remove)

    def interrupt(self, message: str = INTERRUPTED) -> int:
        return self._db(
            lambda conn: (
                conn.execute(
                    tasks.update()
                    .where(tasks.c.status == SYNCING)
                    .values(
                        status=FAILED, message=message, running_region=None, updated_at=time.time()
                    )
                ).rowcount
            )
        )
