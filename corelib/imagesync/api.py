"""GlanceSync's REST service (its v1 API) on the stowkit sync engine: plain WSGI.

Routes::

    GET    /                                  the service's identity; no token needed
    GET    /regions/{region}[?image=NAME]     {"images": [{"id", "name", "status", "message"}]}
    POST   /regions/{region}                  start a sync task: {"taskId": ...}
    GET    /regions/{region}/tasks/{task}     {"taskId", "status", "message"}
    DELETE /regions/{region}/tasks/{task}     remove a finished task

Errors are GlanceSync's ``{"error": {"message", "code"}}``: 400 a request
that makes no sense, 401 no token or a role that may not do this, 404 an
unknown task or route, or a token Keystone does not accept (GlanceSync
relays Keystone's 404), 405 a method the route lacks, 410 a region that does
not exist, 503 a service that cannot be reached.

Behind keystonemiddleware (``auth_strategy = keystone``, with
``delay_auth_decision`` so this app, not the middleware, answers a bad
token); ``noauth`` trusts every caller (one host, tests).
"""

from __future__ import annotations

import datetime
import json
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from oslo_config import cfg

from stowkit.corelib import imagesync
from stowkit.corelib.errors import Conflict, InvalidArgument, NotFound, StowkitError
from stowkit.corelib.imagesync import plan as P
from stowkit.corelib.imagesync.config import region_parts
from stowkit.corelib.imagesync.engine import ImageSync
from stowkit.corelib.imagesync.tasks import INTERRUPTED, Task, TaskRunner, TaskStore
from stowkit.corelib.web import keystone, request, serving
from stowkit.corelib.web.responses import JSON_TYPE, HTTPError, JsonErrors, method_allowed
from stowkit.corelib.web.responses import status_line as _status_line

LOG = logging.getLogger("stowkit.imagesync.api")

GROUP = "image_sync_api"
#: The server's name in its log lines and the ``Server`` header.
SERVER_NAME = "stowkit-glancesync"

api_opts = [
    *serving.listen_opts("GlanceSync API", 8080),
    cfg.IntOpt(
        "workers",
        default=1,
        min=1,
        help="Server processes. Syncs are I/O-bound and run on threads, so one is "
        "usually enough; every process runs tasks of its own.",
    ),
    cfg.IntOpt(
        "task_workers",
        default=2,
        min=1,
        help="Sync tasks run at once per server process (others wait their turn, "
        "already `syncing`).",
    ),
    cfg.StrOpt(
        "auth_strategy",
        default="keystone",
        choices=["keystone", "noauth"],
        help="keystone: validate tokens with keystonemiddleware ([keystone_authtoken]); "
        "noauth: every caller may do everything (one trusted host, tests).",
    ),
    cfg.ListOpt(
        "admin_roles",
        default=["admin"],
        help="Roles that may start syncs (POST) and delete tasks (DELETE).",
    ),
    cfg.StrOpt(
        "href",
        help="The URL `GET /` reports as href (default: the URL the request came to).",
    ),
    cfg.StrOpt("owner", default="stowkit", help="The owner `GET /` reports."),
    # Requests are short (syncs run on the task workers): few threads, patient clients.
    *serving.timing_opts(threads=8, client_timeout=30, request_timeout=30),
]

#: When this API's shape last changed (GET / ``updated``).
UPDATED = "2026-12-01T00:00:00Z"
API_VERSION = "1"

#: The statuses GlanceSync answers; an error of another status answers 500.
STATUSES = frozenset({200, 400, 401, 404, 405, 410, 500, 503})
_NO_URL = (
    "The requested URL was not found on the server. If you entered the URL manually "
    "please check your spelling and try again."
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(api_opts, group=GROUP)


def _version() -> str:
    try:
        return metadata.version("stowkit")
    except metadata.PackageNotFoundError:  # running from a bare checkout
        return "0"


#: GlanceSync's error body: ``{"error": {"message", "code"}}``.
ERRORS = JsonErrors(
    lambda status, message: {"error": {"message": message, "code": status}},
    "GlanceSync API",
    LOG,
    STATUSES,
)


def image_rows(plan: P.RegionPlan, name: str | None = None) -> list[dict[str, Any]]:
    """GlanceSync's view of a region: every image to sync, its status and a message."""
    rows = []
    for entry in plan.entries:
        if name is not None and entry.master.name != name:
            continue
        image = entry.region_image or entry.master
        message = None
        if entry.status == P.ERROR_CHECKSUM and entry.region_image is not None:
            message = f"different checksum ({entry.region_image.checksum}) in this region"
        rows.append(
            {"id": image.id, "name": entry.master.name, "status": entry.status, "message": message}
        )
    return rows


class GlanceSyncApp:
    """The WSGI callable.

    ``make_sync()`` returns a fresh :class:`ImageSync` per request (the sync
    configuration is read again, as GlanceSync does, so an edited file takes
    effect without a restart); ``runner`` runs the tasks it records in its store.
    """

    def __init__(
        self,
        make_sync: Callable[[], ImageSync],
        runner: TaskRunner,
        auth: str = "keystone",
        admin_roles: Sequence[str] = ("admin",),
        href: str | None = None,
        owner: str = "stowkit",
    ) -> None:
        if auth not in ("keystone", "noauth"):
            raise InvalidArgument(f"unknown auth strategy {auth!r} (keystone or noauth)")
        self.make_sync = make_sync
        self.runner = runner
        self.store: TaskStore = runner.store
        self.auth = auth
        self.admin_roles = frozenset(r.strip().lower() for r in admin_roles if r.strip())
        self.href = href
        self.owner = owner
        self.version = _version()
        self.started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    # -- WSGI ---------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        headers: list[tuple[str, str]] = []
        try:
            status, payload = self.dispatch(environ)
            body = b"" if payload is None else json.dumps(payload).encode()
        except Exception as exc:
            status, body, headers = ERRORS.answer(exc)
        start_response(
            _status_line(status),
            [JSON_TYPE, ("Content-Length", str(len(body))), *headers],
        )
        return [body]

    def dispatch(self, environ: dict[str, Any]) -> tuple[int, Any]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        parts = [p for p in (environ.get("PATH_INFO") or "/").split("/") if p]
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if not parts:
            self._allow(method, ("GET",))
            return 200, self.info(environ)
        if (
            parts[0] != "regions"
            or len(parts) not in (2, 4)
            or (len(parts) == 4 and parts[2] != "tasks")
        ):
            raise HTTPError(404, _NO_URL)
        region = parts[1]
        if len(parts) == 2:
            self._allow(method, ("GET", "POST"))
            self._check_query(query, ("image",) if method == "GET" else ())
            self._authorise(environ, admin=method == "POST")
            sync = self._region(region)
            if method == "GET":
                names = query.get("image")
                return 200, self.region_status(sync, region, names[-1] if names else None)
            return 200, {"taskId": self.runner.submit(region, self._user(environ)).task_id}
        task_id = parts[3]
        self._allow(method, ("GET", "DELETE"))
        self._check_query(query, ())
        self._authorise(environ, admin=method == "DELETE")
        self._region(region)
        task = self._task(region, task_id)
        if method == "GET":
            return 200, {"taskId": task.task_id, "status": task.status, "message": task.message}
        try:
            self.store.delete(task.task_id)
        except Conflict as exc:
            raise HTTPError(400, exc.message) from None
        return 200, None

    # -- routes -----------------------------------------------------------------------
    def info(self, environ: dict[str, Any]) -> dict[str, str]:
        return {
            "id": f"v{API_VERSION}",
            "owner": self.owner,
            "status": "SUPPORTED",
            "version": self.version,
            "updated": UPDATED,
            "runningfrom": self.started.isoformat().replace("+00:00", "Z"),
            "href": self.href or request.base_url(environ) + "/",
        }

    def region_status(self, sync: ImageSync, region: str, name: str | None) -> dict[str, Any]:
        result = sync.status([region])[0]
        if not result.ok:
            cls = result.error_type or StowkitError
            raise cls(f"{region}: {result.error}")
        assert result.plan is not None
        return {"images": image_rows(result.plan, name)}

    # -- checks -------------------------------------------------------------------------
    @staticmethod
    def _allow(method: str, allowed: Sequence[str]) -> None:
        method_allowed(method, allowed)

    @staticmethod
    def _check_query(query: dict[str, list[str]], known: Sequence[str]) -> None:
        unknown = sorted(set(query) - set(known))
        if unknown:
            raise HTTPError(400, f"unknown query parameter {unknown[0]!r}")
        for key in known:
            for value in query.get(key, []):
                if not value:
                    raise HTTPError(400, f"query parameter {key!r} is empty")

    def _authorise(self, environ: dict[str, Any], admin: bool) -> None:
        if self.auth == "noauth":
            return
        if not environ.get("HTTP_X_AUTH_TOKEN"):
            raise HTTPError(
                401, "a token is required (X-Auth-Token)", [("WWW-Authenticate", "Keystone")]
            )
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            # GlanceSync answers what Keystone answered for such a token: 404.
            raise HTTPError(404, "The token is not valid or has expired")
        if admin:
            roles = request.roles(environ)
            if not roles & self.admin_roles:
                raise HTTPError(
                    401,
                    "this operation needs one of the roles "
                    f"{', '.join(sorted(self.admin_roles))}; the token has "
                    f"{', '.join(sorted(roles)) or 'none'}",
                )

    @staticmethod
    def _user(environ: dict[str, Any]) -> str:
        return environ.get("HTTP_X_USER_NAME") or environ.get("HTTP_X_USER_ID") or "anonymous"

    def _region(self, region: str) -> ImageSync:
        """A fresh engine, once ``region`` is known to be one region (else 400/410)."""
        target, name = region_parts(region)
        if not name:
            raise HTTPError(400, f"{region!r} names no region (one region per request)")
        sync = self.make_sync()
        if target not in sync.config.targets:
            raise HTTPError(410, f"unknown target {target!r} in region {region!r}")
        try:
            sync.resolve([region])
        except NotFound:
            raise HTTPError(410, f"Invalid region {region}") from None
        except InvalidArgument as exc:
            raise HTTPError(400, exc.message) from None
        return sync

    def _task(self, region: str, task_id: str) -> Task:
        try:
            task = self.store.get(task_id)
        except NotFound:
            raise HTTPError(404, _NO_URL) from None
        if task.region != region:
            raise HTTPError(404, _NO_URL)
        return task


def sync_runner(make_sync: Callable[[], ImageSync]) -> Callable[[str], tuple[bool, str]]:
    """The work of one task: sync one region, (ok, the report's summary)."""

    def run(region: str) -> tuple[bool, str]:
        report = make_sync().sync([region])
        return not report.failed, report.summary()

    return run


def build_app(
    conf: cfg.ConfigOpts,
    store: Any,
    tasks: TaskStore,
    *,
    auth: str | None = None,
    sync_config: str | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[Any, GlanceSyncApp]:
    """(the WSGI pipeline, the app) the configuration describes."""
    register_opts(conf)
    opts = conf[GROUP]
    imagesync.load_config(conf, sync_config, overrides)  # a broken file fails now, not per request

    def make_sync() -> ImageSync:
        return imagesync.build(conf, store, sync_config, overrides)

    runner = TaskRunner(tasks, sync_runner(make_sync), opts.task_workers)
    strategy = auth or opts.auth_strategy
    app = GlanceSyncApp(
        make_sync, runner, strategy, opts.admin_roles, href=opts.href, owner=opts.owner
    )
    if strategy == "noauth":
        return app, app
    # delay_auth_decision: a missing or bad token reaches the app, which answers
    # as GlanceSync does (401 without a token, 404 for a token Keystone refuses).
    # GET / is public.
    return keystone.with_keystone(app, conf, public=("",), delay_auth_decision=True), app


def start(tasks: TaskStore) -> int:
    """What a starting service does first: tasks left ``syncing`` become ``failed``."""
    tasks.sync()
    return tasks.interrupt(INTERRUPTED)


__all__ = [
    "GlanceSyncApp",
    "api_opts",
    "build_app",
    "register_opts",
    "start",
]
