"""What the catalog's documents mean: ids, defaults, job events, session runs.

Every method takes the caller's project (and user where it matters); a
document of another project is simply not found.  Read-modify-write steps use
the backend's versioned ``put`` and retry when another writer got there
first, so concurrent job events or session starts never lose an update.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stowkit.corelib.catalog import ID_FIELDS, Catalog, Document, VersionConflict, check_kind
from stowkit.corelib.catalogapi import schemas
from stowkit.corelib.errors import (
    Conflict,
    Forbidden,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)

if TYPE_CHECKING:
    from stowkit.corelib.catalogapi.trusts import TrustKeeper

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
#: How long (seconds) after a session started other jobs may still join that run.
DEFAULT_HOLD_OFF = 30
_RETRIES = 50
#: More central clients of one id than this would be a registry gone wrong: not looked at.
_CENTRAL_LOOKUP = 100


@dataclass(frozen=True)
class Scope:
    """What the API's policy granted one request beyond the caller's own project.

    Resolved once, by the HTTP layer (:mod:`stowkit.corelib.catalogapi.app`);
    the service only reads it.
    """

    #: Jobs of every project (``all_projects=true`` asked and ``jobs:get_all_projects`` granted).
    every_project: bool = False
    #: May register a central client (``clients:create_central`` granted).
    central: bool = False


@dataclass(frozen=True)
class Identity:
    project: str
    user_id: str
    user_name: str = ""
    roles: frozenset[str] = frozenset()
    #: the request's Keystone token (a trust for a centralized job is made with it)
    token: str = field(default="", repr=False, compare=False)
    scope: Scope = Scope()


#: The search term of a client registered as central (seen from every project).
CENTRAL_CLIENT = {"client.is_central": True}


def backup_id(meta: Mapping[str, Any]) -> str:
    """``container_hostname_backupname_timestamp_level``, usable in a URL."""
    # The agent sends "" for a level it has none for: the next field, else 0.
    level = next(
        (meta[k] for k in ("curr_backup_level", "level") if meta.get(k) not in (None, "")), 0
    )
    parts = [meta["container"], meta["hostname"], meta["backup_name"], meta["time_stamp"], level]
    ident = "_".join(_UNSAFE.sub("-", str(p)) for p in parts)
    if len(ident) > 255:
        # A plain cut drops the time stamp and level, so every later backup of a
        # long container (a local storage path) would collide with the first:
        # keep the head and a digest of the whole id instead.
        ident = ident[:222] + "-" + hashlib.sha256(ident.encode()).hexdigest()[:32]
    return ident


def merge_defaults(job: Document) -> None:
    """Fold ``action_defaults`` into each action's ``freezer_action`` (the action wins)."""
    defaults = job.pop("action_defaults", None) or {}
    for action in job.get("job_actions", []):
        action["freezer_action"] = {**defaults, **(action.get("freezer_action") or {})}


def parse_search(body: Any) -> tuple[list[dict], list[dict]]:
    """The ``match``/``match_not`` lists of a list request's search body."""
    if body is None:
        return [], []
    schemas.check_storable(body, "search")
    schemas.validate(schemas.SEARCH, body, "search")
    match = list(body.get("match", []))
    match_not = list(body.get("match_not", []))
    schemas.check_search_terms(match, match_not)
    return match, match_not


def session_jobs(value: Any) -> dict[str, dict[str, Any]]:
    """A session's ``jobs``: the stored map, or a list of objects naming their job."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    jobs: dict[str, dict[str, Any]] = {}
    for item in value:
        if "job_id" in item:
            entry = {k: v for k, v in item.items() if k != "job_id"}
            pairs = [(item["job_id"], entry)]
        elif item and all(isinstance(v, dict) for v in item.values()):
            pairs = list(item.items())  # [{job_id: {...}}, ...]
        else:
            raise InvalidArgument("session: each item of jobs needs a job_id")
        for job_id, entry in pairs:
            if not isinstance(job_id, str):
                raise InvalidArgument("session: jobs: a job_id must be a string")
            schemas.check_id(job_id, "job id")
            jobs[job_id] = {
                "client_id": "",
                "status": "",
                "result": "",
                "time_started": -1,
                "time_ended": -1,
                **entry,
            }
    return jobs


def _session_jobs_of(doc: Document, session_id: str) -> dict[str, dict[str, Any]]:
    """A stored session's ``jobs`` map; entries that are not objects (stored before
    the schema refused them) become empty entries instead of failing every action."""
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict):
        jobs = {}
    for key, entry in list(jobs.items()):
        if not isinstance(entry, dict):
            jobs[key] = {}
    doc["jobs"] = jobs
    return jobs


class CatalogService:
    def __init__(self, catalog: Catalog, trusts: TrustKeeper | None = None) -> None:
        self.catalog = catalog
        #: makes the Keystone trusts of centralized jobs (None: no trusts, e.g. noauth)
        self.trusts = trusts

    # -- generic ----------------------------------------------------------------
    @staticmethod
    def _everywhere(who: Identity, kind: str) -> bool:
        """Jobs of every project, when the request's scope grants it (else its own)."""
        return kind == "jobs" and who.scope.every_project

    def list_json(
        self, who: Identity, kind: str, limit: int, offset: int, search: Any = None
    ) -> list[str]:
        """A page of the caller's documents; clients include every project's central ones."""
        check_kind(kind)
        match, match_not = parse_search(search)
        project = None if self._everywhere(who, kind) else who.project
        central = kind == "clients"
        return self.catalog.search_json(
            project, kind, limit, offset, match, match_not, central=central
        )

    def get_json(self, who: Identity, kind: str, doc_id: str) -> str:
        return self.get_json_versioned(who, kind, doc_id)[0]

    def get_json_versioned(self, who: Identity, kind: str, doc_id: str) -> tuple[str, int | None]:
        """The document's JSON and its version (None when found in another project)."""
        schemas.check_id(doc_id, f"{kind[:-1]} id")
        try:
            getter = getattr(self.catalog, "get_json_versioned", None)
            if getter is not None:
                return getter(who.project, kind, doc_id)
            stored = self.catalog.get_versioned(who.project, kind, doc_id)
            return json.dumps(stored.doc), stored.version
        except NotFound:
            if not self._everywhere(who, kind):
                raise
            # Ids are unique per project only: the oldest job of that id wins.
            found = self.catalog.search_json(None, kind, 1, 0, [{f"{kind[:-1]}_id": doc_id}])
            if not found:
                raise
            return found[0], None

    def get(self, who: Identity, kind: str, doc_id: str) -> Document:
        schemas.check_id(doc_id, f"{kind[:-1]} id")
        return self.catalog.get(who.project, kind, doc_id)

    def delete(self, who: Identity, kind: str, doc_id: str) -> None:
        schemas.check_id(doc_id, f"{kind[:-1]} id")
        trust_id = None
        if kind == "jobs":
            trust_id = (self.get(who, "jobs", doc_id).get("user_credentials") or {}).get("trust_id")
            self._detach_job_from_sessions(who, doc_id)
        self.catalog.delete(who.project, kind, doc_id)
        if trust_id and self.trusts is not None:
            # as freezer-api: the trust goes with the last job that names it
            if not self.catalog.search_json(None, "jobs", 1, 0, [{"trust_id": trust_id}]):
                self.trusts.delete(who, trust_id)

    def _modify(
        self,
        who: Identity,
        kind: str,
        doc_id: str,
        change: Callable[[Document], Any],
        if_version: int | None = None,
    ) -> tuple[Document, int, Any]:
        """Read, ``change`` in place, write back if the version did not move; retry.

        With ``if_version`` (the client's ``If-Match``) there is one attempt,
        on that version only: :class:`PreconditionFailed` when it moved.
        """
        for _ in range(_RETRIES):
            stored = self.catalog.get_versioned(who.project, kind, doc_id)
            if if_version is not None and stored.version != if_version:
                raise PreconditionFailed(
                    f"{kind[:-1]} {doc_id!r} is at version {stored.version}, not {if_version}"
                )
            doc = stored.doc
            outcome = change(doc)
            try:
                version = self.catalog.put(who.project, kind, doc_id, doc, stored.version)
            except VersionConflict:
                if if_version is not None:
                    raise PreconditionFailed(
                        f"{kind[:-1]} {doc_id!r} changed after version {if_version}"
                    ) from None
                continue
            return doc, version, outcome
        raise Conflict(f"{kind[:-1]} {doc_id!r} is being changed by others; try again")

    def _stamp(self, who: Identity, doc: Document) -> None:
        doc["project_id"] = who.project
        doc["user_id"] = who.user_id

    # -- create -----------------------------------------------------------------
    def create(self, who: Identity, kind: str, body: Any, doc_id: str | None = None) -> str:
        check_kind(kind)
        schemas.check_storable(body, kind[:-1])
        return getattr(self, f"_create_{kind}")(who, body, doc_id)

    def _create_backups(self, who: Identity, body: Any, doc_id: str | None) -> str:
        if doc_id is not None:
            raise InvalidArgument("a backup's id is made from its metadata; POST to backups/")
        schemas.validate(schemas.BACKUP, body, "backup")
        new_id = backup_id(body)
        meta = dict(body)
        doc = {
            "backup_id": new_id,
            "project_id": who.project,
            "user_id": who.user_id,
            "status": meta.pop("status", "available"),
            "backup_metadata": meta,
        }
        self.catalog.create(who.project, "backups", new_id, doc)
        return new_id

    def _create_clients(self, who: Identity, body: Any, doc_id: str | None) -> str:
        if isinstance(body, dict) and isinstance(body.get("client"), dict):
            body = body["client"]  # a document read back from the API, re-posted
        schemas.validate(schemas.CLIENT, body, "client")
        if body.get("is_central") and not who.scope.central:
            raise Forbidden("only an admin or a service user may register a central client")
        client_id = schemas.check_id(body["client_id"], "client_id")
        if doc_id is not None and doc_id != client_id:
            raise InvalidArgument(f"client_id {client_id!r} differs from the URL's {doc_id!r}")
        if body.get("is_central"):
            self._check_central_unique(client_id, body.get("hostname"))
        doc = {
            "client": body,
            "client_id": client_id,
            "uuid": body.get("uuid") or uuid.uuid4().hex,
            "project_id": who.project,
            "user_id": who.user_id,
        }
        self.catalog.create(who.project, "clients", client_id, doc)
        return client_id

    def _prepare_job(self, who: Identity, body: Any, doc_id: str | None) -> Document:
        schemas.validate(schemas.JOB, body, "job")
        doc = copy.deepcopy(body)
        job_id = self._pick_id(doc, "job_id", doc_id)
        schedule = doc.setdefault("job_schedule", {})
        schemas.check_schedule(schedule)
        # As freezer-api: status, event and result stay unset, so a scheduler
        # starts a new job at once (no job-start needed).
        schedule.setdefault("time_created", int(time.time()))
        schedule.setdefault("time_started", -1)
        schedule.setdefault("time_ended", -1)
        merge_defaults(doc)
        doc.pop("user_credentials", None)  # the server's to set, never a client's
        if doc.get("description") is None:
            doc["description"] = ""
        if doc.get("session_id") is None:
            doc["session_id"] = ""
        doc["job_id"] = job_id
        self._stamp(who, doc)
        doc.pop("_version", None)
        return doc

    def _create_jobs(self, who: Identity, body: Any, doc_id: str | None) -> str:
        doc = self._prepare_job(who, body, doc_id)
        if self.trusts is not None and self.trusts.wanted(self._central(who, doc)):
            # before the job exists: a trust that cannot be made leaves no job behind
            doc["user_credentials"] = self.trusts.create(who)
        self.catalog.create(who.project, "jobs", doc["job_id"], doc)
        return doc["job_id"]

    def _central_clients(self, client_id: str) -> list[Document]:
        """The central clients of every project registered as ``client_id``."""
        match = [{**CENTRAL_CLIENT, "client_id": client_id}]
        found = self.catalog.search(None, "clients", _CENTRAL_LOOKUP, 0, match)
        return [c for c in found if c.get("client_id") == client_id]

    def _check_central_unique(self, client_id: str, hostname: Any) -> None:
        """Two central clients never share a (client_id, hostname): jobs name one of them."""
        for other in self._central_clients(client_id):
            if (other.get("client") or {}).get("hostname") == hostname:
                raise Conflict(
                    f"a central client {client_id!r} on host {hostname!r} is already registered"
                )

    def _central(self, who: Identity, job: Document) -> bool:
        """Whether the job's client is central: in the job's project, or any project's
        central client of that id (as freezer-api: central clients serve every project)."""
        client_id = job.get("client_id")
        if not client_id:
            return False
        try:
            client = self.catalog.get(who.project, "clients", client_id)
        except NotFound:
            return bool(self._central_clients(client_id))
        return bool((client.get("client") or {}).get("is_central"))

    def _prepare_action(self, who: Identity, body: Any, doc_id: str | None) -> Document:
        schemas.validate(schemas.ACTION, body, "action")
        doc = copy.deepcopy(body)
        doc["action_id"] = self._pick_id(doc, "action_id", doc_id)
        doc.setdefault("freezer_action", {})
        self._stamp(who, doc)
        return doc

    def _create_actions(self, who: Identity, body: Any, doc_id: str | None) -> str:
        doc = self._prepare_action(who, body, doc_id)
        self.catalog.create(who.project, "actions", doc["action_id"], doc)
        return doc["action_id"]

    def _prepare_session(self, who: Identity, body: Any, doc_id: str | None) -> Document:
        schemas.validate(schemas.SESSION, body, "session")
        doc = copy.deepcopy(body)
        doc["session_id"] = self._pick_id(doc, "session_id", doc_id)
        schemas.check_schedule(doc.get("schedule", {}), "schedule")
        doc.setdefault("session_tag", 0)
        doc.setdefault("description", "")
        doc.setdefault("hold_off", DEFAULT_HOLD_OFF)
        doc.setdefault("schedule", {})
        doc["jobs"] = session_jobs(doc.get("jobs"))
        doc.setdefault("status", "active")
        doc.setdefault("result", "")
        doc.setdefault("time_start", -1)
        doc.setdefault("time_end", -1)
        doc.setdefault("last_start", -1)
        self._stamp(who, doc)
        doc.pop("_version", None)
        return doc

    def _create_sessions(self, who: Identity, body: Any, doc_id: str | None) -> str:
        doc = self._prepare_session(who, body, doc_id)
        self.catalog.create(who.project, "sessions", doc["session_id"], doc)
        return doc["session_id"]

    @staticmethod
    def _pick_id(doc: Document, field: str, url_id: str | None) -> str:
        given = doc.get(field)
        if url_id is not None and given and given != url_id:
            raise InvalidArgument(f"{field} {given!r} differs from the URL's {url_id!r}")
        # The schema's pattern lets a trailing newline through (Python's "$"):
        # an id is checked once more as the URL would check it.
        return schemas.check_id(url_id or given or uuid.uuid4().hex, field)

    # -- replace (POST to an item) ------------------------------------------------
    def replace(self, who: Identity, kind: str, doc_id: str, body: Any) -> int:
        """Create or replace the whole document (freezer's POST to ``kind/{id}``)."""
        schemas.check_id(doc_id, f"{kind[:-1]} id")
        if kind not in ("jobs", "actions", "sessions"):
            raise InvalidArgument(f"{kind} cannot be replaced; delete and create instead")
        schemas.check_storable(body, kind[:-1])
        doc = getattr(self, f"_prepare_{kind[:-1]}")(who, body, doc_id)
        try:
            return self.catalog.put(who.project, kind, doc_id, doc)
        except NotFound:
            self.catalog.create(who.project, kind, doc_id, doc)
            return 1

    # -- patch --------------------------------------------------------------------
    def patch(
        self, who: Identity, kind: str, doc_id: str, body: Any, if_version: int | None = None
    ) -> int:
        """Merge ``body`` into the document; fields not given are kept.

        ``if_version``: only if the document is still at that version (else
        :class:`PreconditionFailed`): how stowkit's agent claims a job's run.
        """
        schemas.check_id(doc_id, f"{kind[:-1]} id")
        schema = {
            "jobs": schemas.JOB_PATCH,
            "sessions": schemas.SESSION_PATCH,
            "actions": schemas.ACTION_PATCH,
            "backups": schemas.BACKUP_PATCH,
        }.get(kind)
        if schema is None:
            raise InvalidArgument(f"{kind} cannot be changed; delete and register again")
        schemas.check_storable(body, f"{kind[:-1]} update")
        schemas.validate(schema, body, f"{kind[:-1]} update")
        id_field = ID_FIELDS[kind]
        if body.get(id_field, doc_id) != doc_id:
            raise InvalidArgument(f"{id_field} cannot be changed")
        server_set = ("project_id", "user_id", "_version", "user_credentials")
        patch = {k: v for k, v in body.items() if k not in server_set}
        if kind == "sessions" and "jobs" in patch:
            patch["jobs"] = session_jobs(patch["jobs"])

        def change(doc: Document) -> None:
            for key, value in patch.items():
                if key in ("job_schedule", "schedule", "backup_metadata", "freezer_action"):
                    # Nested objects merge too: a PATCH of the schedule's status
                    # keeps its dates (the reference replaced the whole object).
                    merged = {**(doc.get(key) or {}), **value}
                    if key in ("job_schedule", "schedule"):
                        schemas.check_schedule(merged, key)
                    doc[key] = merged
                elif key != "action_defaults":
                    doc[key] = value
            if "action_defaults" in patch:
                merge_defaults(
                    {"action_defaults": patch["action_defaults"], "job_actions": doc["job_actions"]}
                )

        _, version, _ = self._modify(who, kind, doc_id, change, if_version)
        return version

    # -- job events -----------------------------------------------------------------
    def job_event(self, who: Identity, job_id: str, body: Any) -> str:
        """start/stop/abort/remove: record the request for the job's scheduler."""
        schemas.check_id(job_id, "job id")
        schemas.validate(schemas.JOB_EVENT, body, "job event")
        (event,) = body

        def change(doc: Document) -> str:
            # freezer-api's rules: an event is recorded unless it is the current
            # one; start also clears status and result for the scheduler.
            schedule = doc.setdefault("job_schedule", {})
            if schedule.get("event") == event:
                return f"{event} already requested"
            schedule["event"] = event
            if event == "start":
                schedule.update(status="", result="")
            return "success"

        _, _, result = self._modify(who, "jobs", job_id, change)
        return result

    # -- sessions -----------------------------------------------------------------
    def session_add_job(self, who: Identity, session_id: str, job_id: str) -> None:
        schemas.check_id(session_id, "session id")
        schemas.check_id(job_id, "job id")
        self.catalog.get(who.project, "sessions", session_id)  # 404 before touching the job
        job = self.catalog.get(who.project, "jobs", job_id)

        def join(doc: Document) -> None:
            doc["jobs"][job_id] = {
                "client_id": job.get("client_id", ""),
                "status": job.get("job_schedule", {}).get("status", ""),
                "result": job.get("job_schedule", {}).get("result", ""),
                "time_started": -1,
                "time_ended": -1,
            }

        session, _, _ = self._modify(who, "sessions", session_id, join)

        def tag(doc: Document) -> None:
            doc["session_id"] = session_id
            doc["session_tag"] = session.get("session_tag", 0)

        self._modify(who, "jobs", job_id, tag)

    def session_remove_job(self, who: Identity, session_id: str, job_id: str) -> None:
        schemas.check_id(session_id, "session id")
        schemas.check_id(job_id, "job id")

        def leave(doc: Document) -> None:
            if job_id not in doc.get("jobs", {}):
                raise NotFound(f"job {job_id!r} is not in session {session_id!r}")
            del doc["jobs"][job_id]

        self._modify(who, "sessions", session_id, leave)

        def untag(doc: Document) -> None:
            if doc.get("session_id") == session_id:
                doc["session_id"] = ""

        try:
            self._modify(who, "jobs", job_id, untag)
        except NotFound:
            pass

    def _detach_job_from_sessions(self, who: Identity, job_id: str) -> None:
        try:
            job = self.catalog.get(who.project, "jobs", job_id)
        except NotFound:
            return
        session_id = job.get("session_id")
        if not session_id:
            return

        def leave(doc: Document) -> None:
            doc.get("jobs", {}).pop(job_id, None)

        try:
            self._modify(who, "sessions", session_id, leave)
        except NotFound:
            pass

    def session_action(self, who: Identity, session_id: str, body: Any) -> dict[str, Any]:
        """``start`` opens a run (or joins the current one); ``end`` reports a job's result."""
        schemas.check_id(session_id, "session id")
        schemas.validate(schemas.SESSION_ACTION, body, "session action")
        ((action, args),) = body.items()
        job_id, tag = args["job_id"], int(args["current_tag"])
        now = int(time.time())

        def start(doc: Document) -> str:
            jobs = _session_jobs_of(doc, session_id)
            if job_id not in jobs:
                raise NotFound(f"job {job_id!r} is not in session {session_id!r}")
            current = doc.get("session_tag", 0)
            if tag > current:
                raise InvalidArgument(f"current_tag {tag} is ahead of the session's tag {current}")
            running = doc.get("status") == "running"
            if running and now - doc.get("time_start", 0) < doc.get("hold_off", 0):
                result = "success"  # join the run that just started
            elif tag == current:
                doc["session_tag"] = current + 1
                doc.update(status="running", result="", time_start=now, time_end=-1)
                doc["last_start"] = now
                for entry in jobs.values():
                    entry.update(status="scheduled", result="", time_ended=-1)
                result = "success"
            else:
                return "out of sync"  # another node started this run before us
            jobs[job_id].update(status="running", result="", time_started=now, time_ended=-1)
            return result

        def end(doc: Document) -> str:
            jobs = _session_jobs_of(doc, session_id)
            if job_id not in jobs:
                raise NotFound(f"job {job_id!r} is not in session {session_id!r}")
            jobs[job_id].update(
                status="completed", result=args.get("result") or "success", time_ended=now
            )
            if all(j.get("status") == "completed" for j in jobs.values()):
                results = {j.get("result") for j in jobs.values()}
                doc["result"] = "success" if results <= {"success"} else "fail"
                doc.update(status="completed", time_end=now)
            return "success"

        doc, _, result = self._modify(
            who, "sessions", session_id, start if action == "start" else end
        )
        return {"result": result, "session_tag": doc.get("session_tag", 0)}

    # -- for the CLI ------------------------------------------------------------------
    def list_docs(
        self, who: Identity, kind: str, limit: int = 100, offset: int = 0, match: Sequence = ()
    ) -> list[Document]:
        schemas.check_search_terms(list(match), [])
        return self.catalog.search(who.project, kind, limit, offset, list(match))
