"""The catalog as the agent sees it: freezer-scheduler's requests, plus ``If-Match`` claims.

:class:`CatalogClient` is the interface the engine uses (a fake one in the
unit tests); :class:`HttpCatalog` speaks HTTP to ``stowkit catalog serve`` or
freezer-api's URL layout (``/v2/{project}/...``).  Authentication is a
callable giving extra headers per request (``X-User-Id`` with no auth, a
Keystone token from the plugins' login), so this module imports no client
library.
"""

from __future__ import annotations

import abc
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stowkit.corelib.agent.options import NOAUTH_USER
from stowkit.corelib.errors import (
    BackendUnavailable,
    ConfigError,
    Conflict,
    NotFound,
    StowkitError,
)

Document = dict[str, Any]


class ClaimLost(Conflict):
    """A conditional write found the job at another version: someone else moved first."""


class CatalogClient(abc.ABC):
    """What the agent asks of the catalog."""

    @abc.abstractmethod
    def register_client(self, client: Mapping[str, Any]) -> None:
        """Register this host (``POST clients``); an existing registration is fine."""

    @abc.abstractmethod
    def poll_jobs(self, client_id: str) -> list[Document]:
        """The client's jobs that are not completed (freezer-scheduler's search)."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> tuple[Document, int]:
        """One job and its version (the ``ETag``); NotFound when deleted."""

    @abc.abstractmethod
    def patch_job(self, job_id: str, body: Mapping[str, Any], if_version: int | None) -> int:
        """Merge ``body``; with ``if_version`` only at that version (else :class:`ClaimLost`)."""

    @abc.abstractmethod
    def add_backup(self, meta: Mapping[str, Any]) -> str:
        """Record a backup (``POST backups``); returns its id."""

    @abc.abstractmethod
    def find_backups(self, match: Sequence[Mapping[str, Any]], limit: int = 10) -> list[Document]:
        """Backups matching every term (for a parent's level)."""

    def delete_backup(self, backup_id: str) -> None:
        """Remove a backup's record (``DELETE backups/ID``); one already gone is fine."""
        raise BackendUnavailable("this catalog client cannot remove backup records")

    # Sessions: a catalog without them (an old fake) makes session jobs fail clearly.
    def get_session(self, session_id: str) -> Document:
        """One session document (NotFound when deleted)."""
        raise BackendUnavailable("this catalog client has no sessions")

    def session_action(
        self, session_id: str, action: str, job_id: str, current_tag: int, result: str = ""
    ) -> Document:
        """``start`` or ``end`` for ``job_id``: the catalog's ``{"result", "session_tag"}``."""
        raise BackendUnavailable("this catalog client has no sessions")


def noauth_headers(user_id: str | None) -> Callable[[], dict[str, str]]:
    """The headers of a ``--no-auth`` catalog: who we are, nothing to prove it.

    ``[agent] user_id`` unset: ``stowkit-agent``.
    """
    user = user_id or NOAUTH_USER
    return lambda: {"X-User-Id": user}


class HttpCatalog(CatalogClient):
    def __init__(
        self,
        url: str,
        project: str,
        headers: Callable[[], Mapping[str, str]] = lambda: {},
        timeout: float = 30.0,
        all_projects: bool = False,
    ) -> None:
        self.base = url.rstrip("/")
        self.project = project
        self.headers = headers
        self.timeout = timeout
        #: poll the client's jobs of every project (a central agent's service user)
        self.all_projects = all_projects

    # -- HTTP --------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        url = f"{self.base}/v2/{urllib.parse.quote(self.project)}/{path}"
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.headers(), **(extra or {})}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None, dict(answer.headers)
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                detail = json.loads(raw).get("description") or raw.decode()[:200]
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")[:200]
            return err.code, {"description": detail}, dict(err.headers)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise BackendUnavailable(f"catalog at {self.base} unreachable: {reason}") from None

    @staticmethod
    def _fail(status: int, body: Any, what: str) -> StowkitError:
        detail = (body or {}).get("description", "") if isinstance(body, dict) else ""
        if status in (401, 403):
            # Not an outage: waiting will not help, the credentials must change.
            return ConfigError(
                f"catalog: {what}: HTTP {status}: the catalog refused this host's credentials "
                "([agent] auth options, --os-cloud or OS_*; or [agent] user_id without Keystone)"
            )
        cls = NotFound if status == 404 else BackendUnavailable
        return cls(f"catalog: {what}: HTTP {status} {detail}".strip())

    # -- the agent's requests ------------------------------------------------------------
    def register_client(self, client: Mapping[str, Any]) -> None:
        status, body, _ = self._call("POST", "clients", dict(client))
        if status not in (201, 409):
            raise self._fail(status, body, "registering the client")

    def poll_jobs(self, client_id: str) -> list[Document]:
        search = {"match": [{"client_id": client_id}], "match_not": [{"status": "completed"}]}
        jobs: list[Document] = []
        offset = 0
        while True:
            every = "&all_projects=True" if self.all_projects else ""
            query = f"jobs?limit=1000&offset={offset}{every}"
            status, body, _ = self._call("GET", query, search)
            if status != 200:
                raise self._fail(status, body, "listing jobs")
            page = body.get("jobs", [])
            # The search matches client_id at any depth: keep the job's own.
            jobs.extend(j for j in page if j.get("client_id") == client_id)
            if len(page) < 1000:
                return jobs
            offset += len(page)

    def get_job(self, job_id: str) -> tuple[Document, int]:
        status, body, headers = self._call("GET", f"jobs/{urllib.parse.quote(job_id)}")
        if status != 200:
            raise self._fail(status, body, f"reading job {job_id}")
        etag = {k.lower(): v for k, v in headers.items()}.get("etag", "")
        try:
            return body, int(etag.strip('"'))
        except ValueError:
            raise BackendUnavailable(
                "catalog: jobs carry no version (ETag): a stowkit catalog is needed "
                "for at-most-once runs"
            ) from None

    def patch_job(self, job_id: str, body: Mapping[str, Any], if_version: int | None) -> int:
        extra = {} if if_version is None else {"If-Match": f'"{if_version}"'}
        status, answer, _ = self._call("PATCH", f"jobs/{urllib.parse.quote(job_id)}", body, extra)
        if status == 412:
            raise ClaimLost(f"job {job_id} changed since version {if_version}")
        if status != 200:
            raise self._fail(status, answer, f"updating job {job_id}")
        return int(answer.get("version", 0))

    def add_backup(self, meta: Mapping[str, Any]) -> str:
        status, body, _ = self._call("POST", "backups", dict(meta))
        if status != 201:
            raise self._fail(status, body, "recording a backup")
        return str(body["backup_id"])

    def delete_backup(self, backup_id: str) -> None:
        status, body, _ = self._call("DELETE", f"backups/{urllib.parse.quote(backup_id)}")
        if status not in (200, 204, 404):
            raise self._fail(status, body, f"removing the record of backup {backup_id}")

    def get_session(self, session_id: str) -> Document:
        status, body, _ = self._call("GET", f"sessions/{urllib.parse.quote(session_id)}")
        if status != 200:
            raise self._fail(status, body, f"reading session {session_id}")
        return dict(body)

    def session_action(
        self, session_id: str, action: str, job_id: str, current_tag: int, result: str = ""
    ) -> Document:
        args: dict[str, Any] = {"job_id": job_id, "current_tag": int(current_tag)}
        if action == "end":
            args["result"] = result
        path = f"sessions/{urllib.parse.quote(session_id)}/action"
        status, body, _ = self._call("POST", path, {action: args})
        if status not in (200, 201, 202):
            raise self._fail(status, body, f"session {session_id} {action}")
        return dict(body or {})

    def find_backups(self, match: Sequence[Mapping[str, Any]], limit: int = 10) -> list[Document]:
        status, body, _ = self._call("GET", f"backups?limit={limit}", {"match": list(match)})
        if status != 200:
            raise self._fail(status, body, "searching backups")
        return list(body.get("backups", []))
