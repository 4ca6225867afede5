"""The catalog as the agent's engine sees it, in memory: jobs with versions, and backups."""

from __future__ import annotations

import copy
import threading
from typing import Any

from stowkit.corelib.catalogclient import CatalogClient, ClaimLost
from stowkit.corelib.errors import NotFound

T0 = 1_800_000_000  # a fixed "now"


class FakeCatalog(CatalogClient):
    """Jobs with versions, PATCH merging job_schedule as the catalog does, If-Match honoured."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.backups: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        #: called before a conditional write lands (to make another writer race in)
        self.before_write = None

    def add(self, job_id: str, schedule: dict[str, Any] | None = None, n_actions: int = 1, **kw):
        acts = kw.pop("job_actions", None) or [
            {"freezer_action": {"action": "fake", "n": i}} for i in range(n_actions)
        ]
        self.jobs[job_id] = {
            "job_id": job_id,
            "client_id": "p_host",
            "job_actions": acts,
            "job_schedule": {
                "time_created": T0,
                "time_started": -1,
                "time_ended": -1,
                **(schedule or {}),
            },
            **kw,
        }
        self.versions[job_id] = 1

    def schedule(self, job_id: str) -> dict[str, Any]:
        return self.jobs[job_id]["job_schedule"]

    def event(self, job_id: str, event: str) -> None:
        with self.lock:
            sched = self.schedule(job_id)
            if sched.get("event") == event:
                return
            sched["event"] = event
            if event == "start":
                sched.update(status="", result="")
            self.versions[job_id] += 1

    def register_client(self, client):
        self.clients.append(dict(client))

    def poll_jobs(self, client_id):
        with self.lock:
            return [
                copy.deepcopy(j)
                for j in self.jobs.values()
                if j["client_id"] == client_id and j["job_schedule"].get("status") != "completed"
            ]

    def get_job(self, job_id):
        with self.lock:
            if job_id not in self.jobs:
                raise NotFound(job_id)
            return copy.deepcopy(self.jobs[job_id]), self.versions[job_id]

    def patch_job(self, job_id, body, if_version):
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()
        with self.lock:
            if if_version is not None and self.versions[job_id] != if_version:
                raise ClaimLost(job_id)
            doc = self.jobs[job_id]
            for key, value in body.items():
                if key == "job_schedule":
                    doc[key] = {**doc.get(key, {}), **copy.deepcopy(value)}
                else:
                    doc[key] = copy.deepcopy(value)
            self.versions[job_id] += 1
            return self.versions[job_id]

    def add_backup(self, meta):
        self.backups.append(dict(meta))
        return f"b{len(self.backups)}"

    def find_backups(self, match, limit=10):
        return []
