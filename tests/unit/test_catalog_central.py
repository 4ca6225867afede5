"""Central clients as freezer-api keeps them: registered with ``"is_central": true`` by an
admin, seen from every project, and unique by (client_id, hostname) across projects."""

from __future__ import annotations

import contextlib
import io
import json
import wsgiref.util
from typing import Any

import pytest

from stowkit.corelib import config
from stowkit.corelib.catalogapi import server

ADMIN_A = {"X-Roles": "admin", "X-User-Id": "root"}
MEMBER_B = {"X-Roles": "member", "X-User-Id": "bob"}
CENTRAL = {"client_id": "backup-host", "hostname": "backup-1", "is_central": True}


class Client:
    """Requests as one caller (noauth: the project from the URL, roles from X-Roles)."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app, self.headers = app, headers

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in self.headers.items()}
        environ.update(REQUEST_METHOD=method, PATH_INFO=path, CONTENT_LENGTH=str(len(data) or ""))
        environ["wsgi.input"] = io.BytesIO(data)
        wsgiref.util.setup_testing_defaults(environ)
        seen: list[str] = []
        payload = b"".join(self.app(environ, lambda status, _headers: seen.append(status)))
        return int(seen[0].split()[0]), (json.loads(payload) if payload else None)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)


@pytest.fixture()
def app(tmp_path):
    """The catalog API without Keystone (roles as sent in X-Roles), on its own SQLite file."""
    pipeline = server.build_app(
        config.load_conf(overrides=[(None, "state_dir", str(tmp_path))]), auth="noauth"
    )
    with contextlib.closing(pipeline.service.catalog) as catalog:
        catalog.sync()
        yield pipeline


def _ids(answer) -> list[str]:
    return sorted(c["client_id"] for c in answer["clients"])


def test_a_central_client_is_listed_in_every_project(app):
    admin, member = Client(app, ADMIN_A), Client(app, MEMBER_B)
    assert admin.post("/v2/a/clients", CENTRAL)[0] == 201
    assert admin.post("/v2/a/clients", {"client_id": "a-only"})[0] == 201
    assert member.post("/v2/b/clients", {"client_id": "b-own"})[0] == 201
    status, listed = member.get("/v2/b/clients")
    assert status == 200 and _ids(listed) == ["b-own", "backup-host"]
    assert _ids(admin.get("/v2/a/clients")[1]) == ["a-only", "backup-host"]
    # what a search narrows applies to the central ones too
    found = member.request("GET", "/v2/b/clients", {"match": [{"client_id": "b-own"}]})[1]
    assert _ids(found) == ["b-own"]


def test_only_an_admin_registers_a_central_client(app):
    status, err = Client(app, MEMBER_B).post("/v2/b/clients", CENTRAL)
    assert status == 403
    assert err["description"] == "only an admin or a service user may register a central client"


def test_two_central_clients_cannot_share_a_client_id_and_hostname(app):
    admin = Client(app, ADMIN_A)
    assert admin.post("/v2/a/clients", CENTRAL)[0] == 201
    status, err = admin.post("/v2/c/clients", CENTRAL)  # another project, same pair
    assert status == 409 and "backup-1" in err["description"]
    assert admin.post("/v2/c/clients", {**CENTRAL, "hostname": "backup-2"})[0] == 201
    # a client of the same id that is not central belongs to its project alone
    assert admin.post("/v2/d/clients", {**CENTRAL, "is_central": False})[0] == 201


def test_the_service_follows_the_scope_it_is_given_not_the_roles(app):
    """Authorization is decided once, by the API's policy: an admin's roles alone give the
    service no reach beyond the caller's project, the resolved scope does."""
    from stowkit.corelib.catalogapi.service import Identity, Scope
    from stowkit.corelib.errors import Forbidden

    service = app.service
    service.create(Identity("a", "u"), "jobs", {"job_actions": [], "client_id": "h"})
    admin = Identity("b", "root", roles=frozenset({"admin", "service"}))
    assert service.list_json(admin, "jobs", 10, 0) == []
    granted = Identity("b", "root", scope=Scope(every_project=True))
    assert len(service.list_json(granted, "jobs", 10, 0)) == 1
    with pytest.raises(Forbidden):
        service.create(admin, "clients", CENTRAL)
    assert service.create(Identity("b", "u", scope=Scope(central=True)), "clients", CENTRAL)
