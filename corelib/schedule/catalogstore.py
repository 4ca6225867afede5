"""This host's jobs in the backup catalog (``[scheduler] store = catalog``).

The same commands edit them, ``freezer job-list`` shows them, ``stowkit
agent`` runs them and the embedded scheduler does not
(:attr:`~stowkit.corelib.schedule.jobs.JobStore.runs_here`).  A job is
stored as :meth:`stowkit.corelib.volumejobs.VolumeJob.freezer_action`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from stowkit.corelib.agent.claims import IDLE, Result, Status
from stowkit.corelib.agent.triggers import parse_interval
from stowkit.corelib.errors import InvalidArgument, NotFound
from stowkit.corelib.names import check_name
from stowkit.corelib.schedule.csvfile import parse_buttervolume_csv
from stowkit.corelib.schedule.jobs import FAILED, OK, Job, JobStore, Schedule
from stowkit.corelib.volumejobs import VolumeJob, decode

if TYPE_CHECKING:
    from stowkit.corelib.catalogclient import CatalogClient

#: freezer's job results as the schedule names them
_RESULTS = {Result.SUCCESS: OK, Result.FAIL: FAILED, Result.ABORTED: FAILED}


def action_of(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(volume, action)`` of a catalog job made of one stowkit volume action, else None."""
    steps = job.get("job_actions")
    if not isinstance(steps, list) or len(steps) != 1 or not isinstance(steps[0], Mapping):
        return None
    found = decode(steps[0].get("freezer_action"))
    return None if found is None else (found.volume, found.text)


def interval_text(minutes: float) -> str:
    """Minutes as a ``schedule_interval`` (whole seconds: what the agent reads)."""
    if minutes == int(minutes):
        return f"{int(minutes)} minutes"
    seconds = round(minutes * 60)
    if seconds < 1:
        raise InvalidArgument(f"invalid interval {minutes!r}: the catalog counts whole seconds")
    return f"{seconds} seconds"


class CatalogScheduleStore(JobStore):
    """This host's jobs in the backup catalog, one stowkit volume action per job.

    A job is ``job_actions`` = one ``freezer_action`` of the agent
    (``stowkit-volume-snapshot``, ``-replicate``, ``-purge``, ``-sync``) and
    ``job_schedule.schedule_interval``; pause and resume are freezer's
    ``stop`` and ``start`` events, remove deletes the job.  The last run,
    result and message are the agent's (``time_started``, ``result``,
    ``claim.message``).  Jobs of the client that are not one such action
    (freezer backups, image syncs) are left out.  There is no global switch:
    ``--all`` stops or starts every job.
    """

    runs_here = False

    def __init__(self, catalog: CatalogClient, client_id: str, hostname: str) -> None:
        self.catalog = catalog
        self.client_id = client_id
        self.hostname = hostname

    def _jobs(self) -> list[tuple[str, Job]]:
        found = []
        for doc in self.catalog.client_jobs(self.client_id):
            which = action_of(doc)
            if which is None or not doc.get("job_id"):
                continue
            found.append((str(doc["job_id"]), self._job(which, doc)))
        return found

    @staticmethod
    def _job(which: tuple[str, str], doc: Mapping[str, Any]) -> Job:
        sched = doc.get("job_schedule") or {}
        try:
            minutes = parse_interval(str(sched.get("schedule_interval", ""))) / 60.0
        except InvalidArgument:
            minutes = 0.0  # another schedule (cron, a date): not an interval
        status, event = sched.get("status") or "", sched.get("event") or ""
        active = event == "start" or (
            status not in IDLE and event not in ("stop", "abort", "remove")
        )
        claim = sched.get("claim") if isinstance(sched.get("claim"), Mapping) else {}
        started, ended = sched.get("time_started"), sched.get("time_ended")
        ran = isinstance(started, int) and started > 0
        created = sched.get("time_created")
        return Job(
            volume=which[0],
            action=which[1],
            minutes=minutes,
            active=active,
            # The agent's first run is one interval after the job is scheduled.
            added=(created if isinstance(created, int) else 0) + minutes * 60.0,
            last_run=float(started) if ran else None,
            last_result=_RESULTS.get(sched.get("result") or "") if ran else None,
            last_message=str(claim.get("message", "")),
            last_duration=(
                float(ended - started)
                if ran and isinstance(ended, int) and ended >= started
                else None
            ),
            runs=int(claim.get("run", 0) or 0),
        )

    def load(self) -> Schedule:
        return Schedule(jobs=[job for _, job in self._jobs()], paused=False)

    def _find(self, volume: str, action: str) -> tuple[str, Job]:
        for job_id, job in self._jobs():
            if job.volume == volume and job.action == action:
                return job_id, job
        raise NotFound(f"no scheduled job {action!r} for volume {volume!r}")

    def _add(self, job: VolumeJob, minutes: float, active: bool, now: float) -> Job:
        volume, action, body = job.volume, job.text, job.freezer_action()
        interval = interval_text(minutes)
        try:
            job_id, found = self._find(volume, action)
        except NotFound:
            self.catalog.register_client(
                {
                    "client_id": self.client_id,
                    "hostname": self.hostname,
                    "description": "stowkit agent",
                }
            )
            schedule: dict[str, Any] = {"schedule_interval": interval}
            if not active:
                schedule["status"] = Status.STOP  # an idle status: the agent leaves it alone
            self.catalog.create_job(
                {
                    "description": f"stowkit schedule: {action} {volume}",
                    "client_id": self.client_id,
                    "job_actions": [{"freezer_action": body, "max_retries": 1}],
                    "job_schedule": schedule,
                }
            )
        else:
            self.catalog.patch_job(job_id, {"job_schedule": {"schedule_interval": interval}}, None)
            if found.active != active:
                self.catalog.job_event(job_id, "start" if active else "stop")
        return self._find(volume, action)[1]

    def remove(self, volume: str, action: str) -> None:
        check_name(volume, "volume name")
        self.catalog.delete_job(self._find(volume, action)[0])

    def set_active(self, active: bool, volume: str | None = None, action: str | None = None) -> int:
        if volume is not None:
            check_name(volume, "volume name")
        jobs = self._jobs()
        if action is not None and volume:
            jobs = [self._find(volume, action)]
        elif action is not None:
            jobs = [(i, j) for i, j in jobs if j.action == action]
        elif volume is not None:
            jobs = [(i, j) for i, j in jobs if j.volume == volume]
        if not jobs and (volume is not None or action is not None):
            raise NotFound(f"no scheduled job matches volume {volume!r} action {action!r}")
        for job_id, job in jobs:
            if job.active != active:
                # A start on an active job would reschedule it from now: only real changes.
                self.catalog.job_event(job_id, "start" if active else "stop")
        return len(jobs)

    def import_csv(self, text: str, now: float | None = None) -> list[Job]:
        parsed = parse_buttervolume_csv(text)  # every line checked before any write
        return [self.add(v, a, m, active) for v, a, m, active in parsed]
