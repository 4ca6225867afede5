"""The backup catalog's one client, and the one way this host reaches it.

:class:`CatalogClient` speaks HTTP to ``stowkit catalog serve`` or
freezer-api's URL layout (``/v2/{project}/...``): freezer-scheduler's
requests with ``If-Match`` claims (the agent), whole searches (``volume
pull``, deleted snapshots) and job edits (the catalog schedule store).
Authentication is a callable giving extra headers per request, so this
module imports no client library.

:func:`connect` is how every user gets one, with the ``[agent]`` options:
without a login, the no-auth user and ``[agent] project``; with a Keystone
login (:func:`login`, made through the registry's Keystone owner), the
token's project and the Keystone catalog's ``backup`` endpoint unless
``catalog_url`` is set.  The agent, ``volume pull``, the schedule store and
the commands all connect so, and act as the same client of the same catalog.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from oslo_config import cfg

from stowkit.corelib import errors
from stowkit.corelib.agent import options
from stowkit.corelib.catalogapi.schemas import check_id
from stowkit.corelib.errors import BackendUnavailable, ConfigError, InvalidArgument, NotFound

if TYPE_CHECKING:
    from stowkit.corelib.keystone import ServiceLogin

Document = dict[str, Any]
#: The catalog's largest page (``limit`` above it is cut to it).
PAGE = 1000
#: the Keystone service type of the catalog (freezer's; ``stowkit catalog register``)
SERVICE_TYPE = "backup"


class ClaimLost(errors.Conflict):
    """A conditional write found the job at another version: someone else moved first."""


def noauth_headers(user_id: str | None) -> Callable[[], dict[str, str]]:
    """The headers of a ``--no-auth`` catalog: who we are, nothing to prove it.

    ``[agent] user_id`` unset: ``stowkit-agent``.
    """
    user = user_id or options.NOAUTH_USER
    return lambda: {"X-User-Id": user}


class CatalogClient:
    """The catalog of one project, as this host (``hostname``, ``client_id``) sees it."""

    def __init__(
        self,
        url: str,
        project: str,
        headers: Callable[[], Mapping[str, str]] = lambda: {},
        timeout: float = 30.0,
        all_projects: bool = False,
        *,
        hostname: str = "",
        client_id: str = "",
    ) -> None:
        self.base = url.rstrip("/")
        #: the URL as given or found in the Keystone catalog
        self.url = url
        self.project = project
        self.headers = headers
        self.timeout = timeout
        #: poll the client's jobs of every project (a central agent's service user)
        self.all_projects = all_projects
        #: who this host is in the catalog (its registration, its backup documents)
        self.hostname = hostname
        self.client_id = client_id

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
    def _fail(status: int, body: Any, what: str) -> errors.StowkitError:
        detail = (body or {}).get("description", "") if isinstance(body, dict) else ""
        if status in (401, 403):
            # Not an outage: waiting will not help, the credentials must change.
            return ConfigError(
                f"catalog: {what}: HTTP {status}: the catalog refused this host's credentials "
                "([agent] auth options, --os-cloud or OS_*; or [agent] user_id without Keystone)"
            )
        cls = NotFound if status == 404 else BackendUnavailable
        return cls(f"catalog: {what}: HTTP {status} {detail}".strip())

    def _expect(self, method: str, path: str, body: Any, ok: tuple[int, ...], what: str) -> Any:
        """The answer's body when its status is one of ``ok``; else the error for ``what``."""
        status, answer, _ = self._call(method, path, body)
        if status not in ok:
            raise self._fail(status, answer, what)
        return answer

    def _pages(self, kind: str, search: Mapping[str, Any], every: str = "") -> list[Document]:
        found: list[Document] = []
        offset = 0
        while True:
            query = f"{kind}?limit={PAGE}&offset={offset}{every}"
            status, body, _ = self._call("GET", query, search)
            if status != 200:
                raise self._fail(status, body, f"listing {kind}")
            page = list((body or {}).get(kind, []))
            found.extend(page)
            if len(page) < PAGE:
                return found
            offset += len(page)

    # -- clients and jobs -----------------------------------------------------------
    def register_client(self, client: Mapping[str, Any]) -> None:
        """Register this host (``POST clients``); an existing registration is fine."""
        self._expect("POST", "clients", dict(client), (201, 409), "registering the client")

    def client_jobs(self, client_id: str) -> list[Document]:
        """Every job of ``client_id``, completed ones included."""
        jobs = self._pages("jobs", {"match": [{"client_id": client_id}]})
        # The search matches client_id at any depth: keep the job's own.
        return [j for j in jobs if j.get("client_id") == client_id]

    def poll_jobs(self, client_id: str) -> list[Document]:
        """The client's jobs that are not completed (freezer-scheduler's search)."""
        search = {"match": [{"client_id": client_id}], "match_not": [{"status": "completed"}]}
        every = "&all_projects=True" if self.all_projects else ""
        jobs = self._pages("jobs", search, every)
        return [j for j in jobs if j.get("client_id") == client_id]

    def get_job(self, job_id: str) -> tuple[Document, int]:
        """One job and its version (the ``ETag``); NotFound when deleted."""
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
        """Merge ``body``; with ``if_version`` only at that version (else :class:`ClaimLost`)."""
        extra = {} if if_version is None else {"If-Match": f'"{if_version}"'}
        status, answer, _ = self._call("PATCH", f"jobs/{urllib.parse.quote(job_id)}", body, extra)
        if status == 412:
            raise ClaimLost(f"job {job_id} changed since version {if_version}")
        if status != 200:
            raise self._fail(status, answer, f"updating job {job_id}")
        return int(answer.get("version", 0))

    def create_job(self, job: Mapping[str, Any]) -> str:
        return str(self._expect("POST", "jobs", dict(job), (201,), "creating a job")["job_id"])

    def delete_job(self, job_id: str) -> None:
        path = f"jobs/{urllib.parse.quote(job_id)}"
        self._expect("DELETE", path, None, (200, 204), f"deleting job {job_id}")

    def job_event(self, job_id: str, event: str) -> None:
        """``freezer job-start|job-stop``: POST the event; the agent acts on it."""
        path = f"jobs/{urllib.parse.quote(job_id)}/event"
        self._expect("POST", path, {event: None}, (200, 202), f"sending {event} to job {job_id}")

    # -- backups -------------------------------------------------------------------
    def add_backup(self, meta: Mapping[str, Any]) -> str:
        """Record a backup (``POST backups``); returns its id."""
        made = self._expect("POST", "backups", dict(meta), (201,), "recording a backup")
        return str(made["backup_id"])

    def delete_backup(self, backup_id: str) -> None:
        """Remove a backup's record (``DELETE backups/ID``); one already gone is fine."""
        path = f"backups/{urllib.parse.quote(backup_id)}"
        what = f"removing the record of backup {backup_id}"
        self._expect("DELETE", path, None, (200, 204, 404), what)

    def find_backups(self, match: Sequence[Mapping[str, Any]], limit: int = 10) -> list[Document]:
        """Backups matching every term (a first page: for a parent's level)."""
        search = {"match": list(match)}
        found = self._expect("GET", f"backups?limit={limit}", search, (200,), "searching backups")
        return list(found.get("backups", []))

    def search_backups(self, match: Sequence[Mapping[str, Any]]) -> list[Document]:
        """Every backup matching all terms (not just a first page)."""
        return self._pages("backups", {"match": list(match)})

    # -- sessions ------------------------------------------------------------------
    def get_session(self, session_id: str) -> Document:
        """One session document (NotFound when deleted)."""
        path = f"sessions/{urllib.parse.quote(session_id)}"
        return dict(self._expect("GET", path, None, (200,), f"reading session {session_id}"))

    def session_action(
        self, session_id: str, action: str, job_id: str, current_tag: int, result: str = ""
    ) -> Document:
        """``start`` or ``end`` for ``job_id``: the catalog's ``{"result", "session_tag"}``."""
        args: dict[str, Any] = {"job_id": job_id, "current_tag": int(current_tag)}
        if action == "end":
            args["result"] = result
        path = f"sessions/{urllib.parse.quote(session_id)}/action"
        what = f"session {session_id} {action}"
        return dict(self._expect("POST", path, {action: args}, (200, 201, 202), what) or {})


# -- reaching it ---------------------------------------------------------------------


def identity(conf: cfg.ConfigOpts, project: str, client_id: str | None = None) -> tuple[str, str]:
    """``(hostname, client id)`` of this host in the catalog: the agent's rule.

    ``[agent] hostname`` (else the machine's name); the client id given, else
    ``[agent] client_id``, else ``PROJECT_HOSTNAME``.
    """
    options.register_opts(conf)
    opts = conf[options.GROUP]
    hostname = opts.hostname or socket.gethostname()
    return hostname, check_id(client_id or opts.client_id or f"{project}_{hostname}", "client_id")


def keystone_wanted(conf: cfg.ConfigOpts, environment: bool = True) -> bool:
    """``[agent] auth_strategy``: auto is keystone when any credential source is set
    (``OS_*`` in the environment counts unless ``environment`` is false)."""
    options.register_opts(conf)
    strategy = conf[options.GROUP].auth_strategy
    if strategy != "auto":
        return strategy == "keystone"
    from stowkit.corelib import registry

    return registry.keystone().credentials_configured(conf, options.GROUP, environment)


def configured_url(conf: cfg.ConfigOpts, given: str | None = None) -> str | None:
    """The catalog URL the command line or the configuration sets (None: only the default).

    With Keystone the default gives way to the Keystone catalog's endpoint.
    """
    options.register_opts(conf)
    if given is not None:
        return given
    if conf.get_location("catalog_url", options.GROUP).location != cfg.Locations.opt_default:
        return str(conf[options.GROUP].catalog_url)
    return None


def configured(conf: cfg.ConfigOpts) -> bool:
    """Whether this host is set up as a catalog client: ``catalog_url`` or Keystone
    credentials in its configuration (or ``--os-cloud``).

    ``OS_*`` alone does not count: an operator's openrc, sourced for Glance, must not
    make every ``snapshot delete`` look for a catalog.
    """
    return configured_url(conf) is not None or keystone_wanted(conf, environment=False)


def login(conf: cfg.ConfigOpts) -> ServiceLogin | None:
    """The agent's Keystone login when ``[agent] auth_strategy`` asks for one, else None.

    Made through the registry's Keystone owner with the ``[agent]`` credentials.
    """
    if not keystone_wanted(conf):
        return None
    from stowkit.corelib import registry

    return registry.keystone().service_login(
        conf, options.GROUP, service_type=SERVICE_TYPE, who="the agent's credentials"
    )


def connect(
    conf: cfg.ConfigOpts,
    login: ServiceLogin | None = None,
    *,
    url: str | None = None,
    project: str | None = None,
    client_id: str | None = None,
) -> CatalogClient:
    """This host's catalog client, with the ``[agent]`` options.

    No ``login``: the no-auth user of ``[agent] project`` (or ``project``) at
    ``url`` or ``[agent] catalog_url``.  A Keystone ``login``: the token's
    project, at ``url``, else a configured ``catalog_url``, else the Keystone
    catalog's ``backup`` endpoint; a central agent polls every project.
    """
    options.register_opts(conf)
    opts = conf[options.GROUP]
    if login is None:
        project = check_id(project or opts.project, "project")
        url = url or opts.catalog_url
        headers = noauth_headers(opts.user_id)
    else:
        if project:
            raise InvalidArgument("--project: with Keystone the project is the token's")
        project = login.project
        url = configured_url(conf, url)
        if url is None:
            try:
                url = login.endpoint(opts.interface, opts.region_name)
            except NotFound as err:
                raise ConfigError(
                    f"no '{SERVICE_TYPE}' endpoint in the Keystone catalog ({err}): set "
                    "[agent] catalog_url or run `stowkit catalog register`"
                ) from None
        headers = login.headers
    hostname, client_id = identity(conf, project, client_id)
    return CatalogClient(
        str(url),
        project,
        headers,
        all_projects=login is not None and opts.central,
        hostname=hostname,
        client_id=client_id,
    )
