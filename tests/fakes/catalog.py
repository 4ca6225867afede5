"""The real catalog app (SQLite, in process) and clients that call its WSGI callable.

No socket: a request is an environ handed to the app, so the documents a test
writes pass the catalog's own schemas and policy.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

from stowkit.corelib import catalogclient, config
from stowkit.corelib.catalogapi import server
from stowkit.corelib.catalogclient import CatalogClient

BACKUP = {
    "container": "freezer_backups",
    "hostname": "web-1.example.org",
    "backup_name": "etc",
    "time_stamp": 1_700_000_000,
    "curr_backup_level": 0,
    "path_to_backup": "/etc",
}


JOB = {
    "description": "nightly etc",
    "client_id": "demo_web-1.example.org",
    "job_actions": [
        {"freezer_action": {"action": "backup", "path_to_backup": "/etc"}, "max_retries": 3},
        {"freezer_action": {"action": "backup", "container": "own"}},
    ],
    "action_defaults": {"container": "freezer_backups", "mode": "fs"},
    "job_schedule": {
        "schedule_interval": "1 days",
        "schedule_start_date": "2030-01-01T02:00:00",
        "schedule_end_date": "2031-01-01T02:00:00",
    },
}


def wsgi_call(
    app: Any,
    method: str,
    path: str,
    data: bytes = b"",
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request to the WSGI ``app`` as host catalog.test: (status, JSON answer, headers).

    ``path`` may carry a query string; ``headers`` become ``HTTP_*`` keys.
    """
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(data)) if data else "",
        "wsgi.input": io.BytesIO(data),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "catalog.test",
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    for key, value in (headers or {}).items():
        environ["HTTP_" + key.upper().replace("-", "_")] = value
    seen: list[tuple[str, list]] = []
    payload = b"".join(app(environ, lambda status, hdrs: seen.append((status, hdrs))))
    status, answer_headers = seen[0]
    return int(status.split()[0]), (json.loads(payload) if payload else None), dict(answer_headers)


class Client:
    """A minimal WSGI test client (no server)."""

    def __init__(self, app: Any, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.headers = headers or {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        status, answer, _ = wsgi_call(
            self.app, method, path, data, {**self.headers, **(headers or {})}
        )
        return status, answer

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return self.request("PATCH", path, body, **kw)

    def put(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("DELETE", path, **kw)


CLIENT = "demo_host-a"


class WsgiCatalog(CatalogClient):
    """The command client with its HTTP call answered by the app in process."""

    def __init__(self, app: Any, project: str = "demo") -> None:
        super().__init__(
            "http://catalog.test",
            project,
            lambda: {"X-User-Id": "tester"},
            hostname="host-a",
            client_id=CLIENT,
        )
        self.app = app
        self.requests: list[tuple[str, str]] = []

    def _call(self, method, path, body=None, extra=None):
        self.requests.append((method, path))
        data = b"" if body is None else json.dumps(body).encode()
        headers = {**self.headers(), **(extra or {})}
        path = f"/v2/{self.project}/{path}"
        return wsgi_call(self.app, method, path, data, headers, "application/json")


@contextlib.contextmanager
def served_catalog(state_dir, monkeypatch=None) -> Iterator[WsgiCatalog]:
    """The real catalog app (SQLite under ``state_dir``), in process.

    With ``monkeypatch``, commands reach it too: ``catalogclient.connect`` answers
    with it, as host ``host-a`` of project ``demo``.
    """
    conf = config.load_conf(overrides=[(None, "state_dir", str(state_dir))])
    server.register_opts(conf)
    app = server.build_app(conf, auth="noauth")
    app.service.catalog.sync()
    wsgi = WsgiCatalog(app)

    def connect(conf, login=None, **given):
        return wsgi

    if monkeypatch is not None:
        monkeypatch.setattr(catalogclient, "connect", connect)
    try:
        yield wsgi
    finally:
        app.service.catalog.close()
