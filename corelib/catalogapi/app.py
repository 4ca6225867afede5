"""The catalog's WSGI application: plain WSGI and a table of routes, no framework.

Routes (``{kind}`` is backups, clients, jobs, actions or sessions)::

    GET  /                                     versions (300)
    GET  /v2                                   JSON-home (freezer-api's), whatever Accept
    GET  /v1                                   version document, or JSON-home if asked
    /v2/{project_id}/{kind}                    GET list, POST create
    /v2/{project_id}/{kind}/{id}               GET, POST (replace), PATCH (merge), DELETE
    /v2/{project_id}/jobs/{id}/event           POST {"start"|"stop"|"abort"|"remove": null}
    /v2/{project_id}/sessions/{id}/action      POST {"start"|"end": {...}}
    /v2/{project_id}/sessions/{id}/jobs/{job}  PUT (add), DELETE (remove)
    /v1/...                                    the same without the project segment;
                                               the project comes from the token

Bodies are JSON.  Errors are ``{"title", "description", "code"}`` with a 4xx
status for anything the client got wrong; a 500 only ever means a bug.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from stowkit.corelib.catalog import ID_FIELDS, KINDS
from stowkit.corelib.catalogapi.policy import RoleDefaults
from stowkit.corelib.catalogapi.schemas import check_id, check_storable
from stowkit.corelib.catalogapi.service import CatalogService, Identity, Scope
from stowkit.corelib.errors import InvalidArgument
from stowkit.corelib.web import request
from stowkit.corelib.web.request import LENGTH
from stowkit.corelib.web.responses import (
    JSON_TYPE,
    HTTPError,
    JsonErrors,
    method_allowed,
    reason,
    status_line,
)

LOG = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

MAX_LIMIT = 1000
#: Beyond this an offset cannot be a real position (and overflows SQL integers).
MAX_OFFSET = 2**53
KIND_SET = frozenset(KINDS)


def _titled(status: int, message: str) -> dict[str, Any]:
    return {"title": reason(status), "description": message, "code": status}


#: freezer-api's error body: ``{"title", "description", "code"}``.
ERRORS = JsonErrors(_titled, "catalog", LOG)


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: stored, they would be served back unreadable.
    raise ValueError(f"{name} is not a JSON value")


def _header_text(value: str, name: str) -> str:
    """A header value that ends up stored: short, printable (no NUL, no controls)."""
    if len(value) > 255 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise HTTPError(400, f"{name} must be at most 255 printable characters")
    return value


def _etag(version: int | None) -> list[tuple[str, str]]:
    """The document version as a strong ETag (none for a document of another project)."""
    return [] if version is None else [("ETag", f'"{version}"')]


def _if_match(environ: dict[str, Any]) -> int | None:
    """The version a PATCH's ``If-Match`` requires (an ETag this app gave), None without one."""
    raw = environ.get("HTTP_IF_MATCH")
    if raw is None or raw.strip() == "*":
        return None  # "*": any version of an existing document, as a PATCH needs anyway
    text = raw.strip().strip('"')
    if not LENGTH.fullmatch(text):
        raise HTTPError(400, "If-Match must be one ETag this API gave (a quoted version number)")
    return int(text)


def versions_document(base: str) -> dict[str, Any]:
    return {
        "versions": [
            {
                "id": "v1",
                "status": "SUPPORTED",
                "updated": "2026-11-01T00:00:00Z",
                "links": [{"rel": "self", "href": f"{base}/v1/"}],
            },
            {
                "id": "v2",
                "status": "CURRENT",
                "updated": "2026-11-01T00:00:00Z",
                "links": [{"rel": "self", "href": f"{base}/v2/"}],
            },
        ]
    }


def _resource(template: str, allow: list[str], *variables: str) -> dict[str, Any]:
    return {
        "href-template": template,
        "href-vars": {v: f"param/{v}" for v in variables},
        "hints": {"allow": allow, "formats": {"application/json": {}}},
    }


def json_home(version: str) -> dict[str, Any]:
    """The JSON-home document of a version (draft-nottingham-json-home-03).

    For v2 it starts with freezer-api 19's three relations, named and shaped
    as freezer-api serves them (``rel/backups`` is the item template there),
    then adds the routes freezer-api has but does not list.
    """
    v2 = version == "v2"
    prefix = "/v2/{project_id}" if v2 else "/v1"
    project = ("project_id",) if v2 else ()
    page = "{?offset,limit}"
    resources: dict[str, Any] = {
        "rel/backups": _resource(f"{prefix}/backups/{{backup_id}}", ["GET"], *project, "backup_id"),
        "rel/jobs": _resource(
            f"{prefix}/jobs{{?all_projects,offset,limit}}",
            ["GET", "POST"],
            *project,
            "all_projects",
            "offset",
            "limit",
        ),
        "rel/job": _resource(
            f"{prefix}/jobs/{{job_id}}", ["GET", "PATCH", "POST", "DELETE"], *project, "job_id"
        ),
    }
    resources["rel/backup_list"] = _resource(
        f"{prefix}/backups{page}", ["GET", "POST"], *project, "offset", "limit"
    )
    for kind in ("clients", "actions", "sessions"):
        id_field = ID_FIELDS[kind]
        item_allow = ["GET", "DELETE"] if kind == "clients" else ["GET", "PATCH", "POST", "DELETE"]
        resources[f"rel/{kind}"] = _resource(
            f"{prefix}/{kind}{page}", ["GET", "POST"], *project, "offset", "limit"
        )
        resources[f"rel/{kind[:-1]}"] = _resource(
            f"{prefix}/{kind}/{{{id_field}}}", item_allow, *project, id_field
        )
    resources["rel/job_event"] = _resource(
        f"{prefix}/jobs/{{job_id}}/event", ["POST"], *project, "job_id"
    )
    resources["rel/session_action"] = _resource(
        f"{prefix}/sessions/{{session_id}}/action", ["POST"], *project, "session_id"
    )
    resources["rel/session_job"] = _resource(
        f"{prefix}/sessions/{{session_id}}/jobs/{{job_id}}",
        ["PUT", "DELETE"],
        *project,
        "session_id",
        "job_id",
    )
    return {"resources": resources}


class CatalogApp:
    """The WSGI callable.

    ``auth`` is ``"keystone"`` (identity from the headers keystonemiddleware
    sets, which this app must sit behind) or ``"noauth"`` (project from the
    URL or ``default_project``, user from ``X-User-Id``).
    """

    def __init__(
        self,
        service: CatalogService,
        auth: str = "keystone",
        default_project: str = "default",
        max_body: int = 1 << 20,
        default_limit: int = 10,
        authorize: Any = None,
    ) -> None:
        if auth not in ("keystone", "noauth"):
            raise InvalidArgument(f"unknown auth strategy {auth!r} (keystone or noauth)")
        self.service = service
        self.auth = auth
        self.default_project = default_project
        self.max_body = max_body
        self.default_limit = default_limit
        #: ``authorize(rule, identity)`` and ``authorize.refusal(rule)``: the policy's
        #: Authorizer, or (None) RoleDefaults.  Asked here only: the service gets a Scope.
        self.authorize = authorize if authorize is not None else RoleDefaults()

    # -- WSGI entry ------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        has_body = request.has_body(environ)
        if not has_body:
            request.read_done(environ)  # nothing to wait for: stop the request clock
        try:
            status, body, headers = self.dispatch(environ)
        except Exception as exc:
            status, body, headers = ERRORS.answer(exc)
        finally:
            request.read_done(environ)
        if request.body_unread(environ):
            # A body left unread (or half read) must not become the next request.
            environ["stowkit.close"] = True
        if status == 204:
            start_response(status_line(204), headers)
            return []
        own_type = any(name.lower() == "content-type" for name, _ in headers)
        start_response(
            status_line(status),
            [*([] if own_type else [JSON_TYPE]), ("Content-Length", str(len(body))), *headers],
        )
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []  # the headers GET would send, never a body
        return [body]

    # -- request helpers ---------------------------------------------------------------
    def _read_body(self, environ: dict[str, Any], required: bool) -> Any:
        try:
            raw = request.read_body(environ, self.max_body)
        finally:
            request.read_done(environ)
        if not raw.strip():
            if required:
                raise HTTPError(400, "a JSON body is required")
            return None
        try:
            doc = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise HTTPError(400, "body is not acceptable JSON: nested too deeply") from None
        # Before any schema or copy: deep, non-finite, NUL or surrogate data stops here.
        check_storable(doc, "body")
        return doc

    def _identity(self, environ: dict[str, Any], url_project: str | None) -> Identity:
        roles = request.roles(environ)
        if self.auth == "noauth":
            project = url_project or environ.get("HTTP_X_PROJECT_ID") or self.default_project
            check_id(project, "project id")
            user = _header_text(environ.get("HTTP_X_USER_ID") or "anonymous", "X-User-Id")
            return Identity(project, user, environ.get("HTTP_X_USER_NAME", ""), roles)
        if environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            raise HTTPError(401, "authentication required", [("WWW-Authenticate", "Keystone")])
        project = environ.get("HTTP_X_PROJECT_ID") or environ.get("HTTP_X_TENANT_ID")
        user = environ.get("HTTP_X_USER_ID")
        if not project or not user:
            raise HTTPError(403, "the token is not scoped to a project")
        check_id(project, "project id")
        if url_project is not None and url_project != project:
            # Never reveal whether another project's documents exist.
            raise HTTPError(403, f"the token is not valid for project {url_project!r}")
        token = environ.get("HTTP_X_AUTH_TOKEN", "")
        return Identity(project, user, environ.get("HTTP_X_USER_NAME", ""), roles, token=token)

    @staticmethod
    def _flag(environ: dict[str, Any], name: str) -> bool:
        """A boolean query parameter (freezerclient sends ``True``/``False``)."""
        from urllib.parse import parse_qsl

        for key, value in parse_qsl(environ.get("QUERY_STRING") or "", keep_blank_values=True):
            if key == name:
                text = value.strip().lower()
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("", "0", "false", "no", "off"):
                    return False
                raise HTTPError(400, f"{name} must be true or false, not {value[:40]!r}")
        return False

    def _paging(self, environ: dict[str, Any]) -> tuple[int, int]:
        limit, offset = self.default_limit, 0
        query = environ.get("QUERY_STRING")
        if query:
            from urllib.parse import parse_qsl

            for key, value in parse_qsl(query, keep_blank_values=True):
                if key in ("limit", "offset"):
                    try:
                        number = int(value)
                    except ValueError:
                        raise HTTPError(
                            400, f"{key} must be a whole number, not {value!r}"
                        ) from None
                    if number < 0:
                        raise HTTPError(400, f"{key} must not be negative")
                    if number > MAX_OFFSET:
                        raise HTTPError(400, f"{key} is too large (at most {MAX_OFFSET})")
                    if key == "limit":
                        limit = min(number, MAX_LIMIT)
                    else:
                        offset = number
        return limit, offset

    # -- routing -------------------------------------------------------------------------
    def dispatch(self, environ: dict[str, Any]) -> tuple[int, bytes, list[tuple[str, str]]]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "") or "/"
        parts = [p for p in path.split("/") if p]
        if not parts:
            return self._root(environ, method)
        version = parts[0]
        if version not in ("v1", "v2"):
            raise HTTPError(404, f"no such resource: {path[:200]}")
        if len(parts) == 1:
            return self._version(environ, method, version)
        if version == "v2":
            project = parts[1]
            rest = parts[2:]
            check_id(project, "project id")
            if not rest:
                raise HTTPError(404, f"no such resource: {path[:200]}")
        else:
            project, rest = None, parts[1:]
        kind = rest[0]
        if kind not in KIND_SET:
            raise HTTPError(404, f"no such resource: {kind[:80]!r} (known: {', '.join(KINDS)})")
        who = self._identity(environ, project)
        if len(rest) == 1:
            return self._collection(environ, method, who, kind)
        doc_id = check_id(rest[1], f"{kind[:-1]} id")
        if len(rest) == 2:
            return self._item(environ, method, who, kind, doc_id)
        tail = rest[2:]
        if kind == "jobs" and tail == ["event"]:
            self._allow(method, "POST")
            self._permit("jobs:event:create", who)
            result = self.service.job_event(who, doc_id, self._read_body(environ, True))
            return 202, json.dumps({"result": result}).encode(), []
        if kind == "sessions" and tail == ["action"]:
            self._allow(method, "POST")
            self._permit("sessions:action:create", who)
            answer = self.service.session_action(who, doc_id, self._read_body(environ, True))
            return 202, json.dumps(answer).encode(), []
        if kind == "sessions" and len(tail) == 2 and tail[0] == "jobs":
            job_id = check_id(tail[1], "job id")
            self._allow(method, "PUT", "DELETE")
            self._permit("sessions:job:add" if method == "PUT" else "sessions:job:remove", who)
            if method == "PUT":
                self.service.session_add_job(who, doc_id, job_id)
            else:
                self.service.session_remove_job(who, doc_id, job_id)
            return 204, b"", []
        raise HTTPError(404, f"no such resource: {path[:200]}")

    def _permit(self, rule: str, who: Identity) -> None:
        """403 unless the policy allows ``rule`` (freezer-api's rule names)."""
        if not self.authorize(rule, who):
            raise HTTPError(403, self.authorize.refusal(rule))

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        method_allowed(method, allowed, wording="method {}")

    def _root(self, environ: dict[str, Any], method: str) -> tuple[int, bytes, list]:
        self._allow(method, "GET", "HEAD")
        base = request.base_url(environ)
        return 300, json.dumps(versions_document(base)).encode(), []

    def _version(self, environ: dict[str, Any], method: str, version: str) -> tuple:
        self._allow(method, "GET", "HEAD")
        # v2 answers with JSON-home whatever the Accept header, as freezer-api;
        # v1 (stowkit's own) gives its version document unless JSON-home is asked for.
        if version == "v2" or "application/json-home" in environ.get("HTTP_ACCEPT", ""):
            body = json.dumps(json_home(version), indent=4).encode()
            return 200, body, [("Content-Type", "application/json-home"), ("Vary", "Accept")]
        base = request.base_url(environ)
        doc = next(v for v in versions_document(base)["versions"] if v["id"] == version)
        return 200, json.dumps({"version": doc}).encode(), [("Vary", "Accept")]

    def _collection(self, environ: dict[str, Any], method: str, who: Identity, kind: str):
        if method in ("GET", "HEAD"):
            self._permit(f"{kind}:get_all", who)
            limit, offset = self._paging(environ)
            search = self._read_body(environ, False)
            who = self._scoped(who, every_project=self._everywhere(environ, who, kind))
            found = self.service.list_json(who, kind, limit, offset, search)
            body = f'{{"{kind}":[{",".join(found)}]}}'.encode()
            return 200, body, []
        self._allow(method, "GET", "POST")
        self._permit(f"{kind}:create", who)
        body = self._read_body(environ, True)
        who = self._scoped(who, central=self._central(kind, body, who))
        new_id = self.service.create(who, kind, body)
        return 201, json.dumps({ID_FIELDS[kind]: new_id}).encode(), []

    def _everywhere(self, environ: dict[str, Any], who: Identity, kind: str) -> bool:
        """``all_projects=true``, granted by ``jobs:get_all_projects`` (else: own project)."""
        if not self._flag(environ, "all_projects"):
            return False
        return kind == "jobs" and self.authorize("jobs:get_all_projects", who)

    def _central(self, kind: str, body: Any, who: Identity) -> bool:
        """A central client's registration needs ``clients:create_central`` (else 403)."""
        if kind == "clients" and isinstance(body, dict):
            inner = body.get("client") if isinstance(body.get("client"), dict) else body
            if inner.get("is_central"):
                self._permit("clients:create_central", who)
                return True
        return False

    @staticmethod
    def _scoped(who: Identity, every_project: bool = False, central: bool = False) -> Identity:
        """``who`` with the scope the policy granted this request (the service reads only it)."""
        if not (every_project or central):
            return who
        return dataclasses.replace(who, scope=Scope(every_project=every_project, central=central))

    def _item(self, environ: dict[str, Any], method: str, who: Identity, kind: str, doc_id: str):
        if method in ("GET", "HEAD"):
            self._permit(f"{kind}:get", who)
            who = self._scoped(who, every_project=self._everywhere(environ, who, kind))
            text, version = self.service.get_json_versioned(who, kind, doc_id)
            return 200, text.encode(), _etag(version)
        if method == "DELETE":
            self._permit(f"{kind}:delete", who)
            self.service.delete(who, kind, doc_id)
            return 204, b"", []
        if method == "PATCH":
            self._permit("clients:create" if kind == "clients" else f"{kind}:update", who)
            expected = _if_match(environ)
            body = self._read_body(environ, True)
            version = self.service.patch(who, kind, doc_id, body, expected)
            answer = json.dumps({ID_FIELDS[kind]: doc_id, "version": version}).encode()
            return 200, answer, _etag(version)
        if method == "POST":
            # freezer-api has a replace rule for actions and sessions only.
            rule = f"{kind}:replace" if kind in ("actions", "sessions") else f"{kind}:update"
            self._permit("clients:create" if kind == "clients" else rule, who)
            body = self._read_body(environ, True)
            if kind == "clients":
                who = self._scoped(who, central=self._central(kind, body, who))
                new_id = self.service.create(who, kind, body, doc_id)
                return 201, json.dumps({"client_id": new_id}).encode(), []
            version = self.service.replace(who, kind, doc_id, body)
            return 201, json.dumps({ID_FIELDS[kind]: doc_id, "version": version}).encode(), []
        self._allow(method, "GET", "POST", "PATCH", "DELETE")
        raise AssertionError("unreachable")
