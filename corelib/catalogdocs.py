"""The backup catalog as stowkit's commands reach it: the agent's client, its options.

``volume pull`` reads every backup document of a volume and records its own;
the catalog schedule store (``[scheduler] store = catalog``) lists, creates,
stops, starts and deletes this host's jobs.  Both reach the catalog exactly as
``stowkit agent`` does: :class:`~stowkit.corelib.agent.client.HttpCatalog`
with the ``[agent]`` options (URL, project, no-auth user, hostname, client
id PROJECT_HOSTNAME), so the jobs written here are the ones the agent runs.

:class:`CommandCatalog` adds the few requests the agent never makes; the
agent's client module is used as it is (its HTTP call and error mapping).
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from oslo_config import cfg

from stowkit.corelib.agent import options as agent_options
from stowkit.corelib.agent.client import Document, HttpCatalog, noauth_headers
from stowkit.corelib.catalogapi.schemas import check_id

#: The catalog's largest page (``limit`` above it is cut to it).
PAGE = 1000


class CommandCatalog(HttpCatalog):
    """:class:`HttpCatalog` plus what commands need: whole searches, job edits."""

    def _pages(self, kind: str, search: Mapping[str, Any]) -> list[Document]:
        found: list[Document] = []
        offset = 0
        while True:
            status, body, _ = self._call("GET", f"{kind}?limit={PAGE}&offset={offset}", search)
            if status != 200:
                raise self._fail(status, body, f"listing {kind}")
            page = list((body or {}).get(kind, []))
            found.extend(page)
            if len(page) < PAGE:
                return found
            offset += len(page)

    def search_backups(self, match: Sequence[Mapping[str, Any]]) -> list[Document]:
        """Every backup matching all terms (not just a first page)."""
        return self._pages("backups", {"match": list(match)})

    def client_jobs(self, client_id: str) -> list[Document]:
        """Every job of ``client_id``, completed ones included."""
        jobs = self._pages("jobs", {"match": [{"client_id": client_id}]})
        # The search matches client_id at any depth: keep the job's own.
        return [j for j in jobs if j.get("client_id") == client_id]

    def create_job(self, job: Mapping[str, Any]) -> str:
        status, body, _ = self._call("POST", "jobs", dict(job))
        if status != 201:
            raise self._fail(status, body, "creating a job")
        return str(body["job_id"])

    def delete_job(self, job_id: str) -> None:
        status, body, _ = self._call("DELETE", f"jobs/{urllib.parse.quote(job_id)}")
        if status not in (200, 204):
            raise self._fail(status, body, f"deleting job {job_id}")

    def job_event(self, job_id: str, event: str) -> None:
        """``freezer job-start|job-stop``: POST the event; the agent acts on it."""
        path = f"jobs/{urllib.parse.quote(job_id)}/event"
        status, body, _ = self._call("POST", path, {event: None})
        if status not in (200, 202):
            raise self._fail(status, body, f"sending {event} to job {job_id}")


@dataclasses.dataclass(frozen=True)
class Reach:
    """How this host meets the catalog: the client, and who it is there."""

    catalog: CommandCatalog
    url: str
    project: str
    hostname: str
    client_id: str


def identity(conf: cfg.ConfigOpts, project: str, client_id: str | None = None) -> tuple[str, str]:
    """``(hostname, client id)`` of this host in the catalog: the agent's rule.

    ``[agent] hostname`` (else the machine's name); the client id given, else
    ``[agent] client_id``, else ``PROJECT_HOSTNAME``.
    """
    agent_options.register_opts(conf)
    opts = conf[agent_options.GROUP]
    hostname = opts.hostname or socket.gethostname()
    return hostname, check_id(client_id or opts.client_id or f"{project}_{hostname}", "client_id")


def connect(conf: cfg.ConfigOpts, url: str | None = None, project: str | None = None) -> Reach:
    """The catalog as ``stowkit agent`` reaches it (``[agent]`` options, its defaults)."""
    agent_options.register_opts(conf)
    opts = conf[agent_options.GROUP]
    project = check_id(project or opts.project, "project")
    hostname, client_id = identity(conf, project)
    url = url or opts.catalog_url
    catalog = CommandCatalog(url, project, noauth_headers(opts.user_id))
    return Reach(catalog, url, project, hostname, client_id)


#: Actions whose backup documents record a snapshot kept on their own host.  A
#: replication's record stays when the sender deletes its snapshot: the copy it
#: records lives on the peer too (``volume pull`` counts it there).
LOCAL_SNAPSHOT_ACTIONS = frozenset(
    {"stowkit-volume-snapshot", "stowkit-volume-sync", "stowkit-volume-pull"}
)


def forget_snapshots(
    find: Callable[[list[dict[str, Any]]], list[Document]],
    forget: Callable[[str], None],
    hostname: str,
    volume: str,
    snapshots: Sequence[str],
) -> int:
    """Remove the catalog's records of ``snapshots`` of ``volume`` deleted on ``hostname``.

    The catalog must not go on listing (nor ``volume pull`` choosing) snapshots
    that are gone.  Returns how many records were removed.
    """
    forgotten = 0
    for name in snapshots:
        match = [{"container": volume}, {"backup_name": name}, {"hostname": hostname}]
        for doc in find(match):
            meta = doc.get("backup_metadata", doc)
            if meta.get("action") in LOCAL_SNAPSHOT_ACTIONS and doc.get("backup_id"):
                forget(str(doc["backup_id"]))
                forgotten += 1
    return forgotten
