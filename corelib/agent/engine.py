"""The agent's loop: register, poll, decide (claims.py), run (runner.py), report.

Each claimed run goes to a thread of its own, so the loop keeps polling:
it sends the run's heartbeat and passes ``abort``/``stop``/``remove``
events to it.  Every write that moves a job's state is made with
``If-Match`` on the version the decision was taken from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib.agent import actions, claims, runner, sessions
from stowkit.corelib.catalogclient import CatalogClient, ClaimLost
from stowkit.corelib.errors import NotFound, StowkitError
from stowkit.corelib.process import pid_alive

LOG = logging.getLogger(__name__)
#: Conditional writes of one step tried this many times before the next poll.
_WRITE_TRIES = 5


@dataclasses.dataclass
class Run:
    job_id: str
    number: int
    ctx: actions.Context
    thread: threading.Thread | None = None
    #: the catalog of the job's project (a central agent's trust), else the agent's
    catalog: CatalogClient | None = None
    #: the job's session document as read when the run was claimed
    session: Mapping[str, Any] | None = None


class Agent:
    def __init__(
        self,
        catalog: CatalogClient,
        client_id: str,
        hostname: str,
        make_context: Callable[[], actions.Context],
        poll_interval: float = 60.0,
        claim_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
        alive: Callable[[int], bool] = pid_alive,
        pid: int | None = None,
        run_action: runner.RunAction = actions.run,
        catalog_for: Callable[[Mapping[str, Any]], CatalogClient | None] | None = None,
        central: bool = False,
    ) -> None:
        """``catalog_for(job)``: the catalog to run a polled job with (a central
        agent's, scoped to the job's project by its trust), None to leave the
        job alone; default: ``catalog`` for every job."""
        self.catalog = catalog
        self.catalog_for = catalog_for or (lambda job: self.catalog)
        #: registered as a central client (the catalog then makes trusts for its jobs)
        self.central = central
        self.client_id = client_id
        self.hostname = hostname
        self.make_context = make_context
        self.poll_interval = poll_interval
        self.claim_timeout = claim_timeout
        self.clock = clock
        self.alive = alive
        self.pid = os.getpid() if pid is None else pid
        self.token = uuid.uuid4().hex[:12]
        #: "HOST PID TOKEN": who owns a claim; the token tells this process from
        #: an earlier one that had the same pid.
        self.me = f"{hostname} {self.pid} {self.token}"
        self.run_action = run_action
        self.runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake: float | None = None
        #: the session documents read during the current poll
        self._sessions: dict[tuple[str, str], Mapping[str, Any] | None] = {}

    # -- registration -----------------------------------------------------------------
    def register(self) -> None:
        client: dict[str, Any] = {
            "client_id": self.client_id,
            "hostname": self.hostname,
            "description": "stowkit agent",
        }
        if self.central:
            client["is_central"] = True  # as freezer-scheduler --centralized-scheduler
        self.catalog.register_client(client)

    # -- liveness of other agents' runs -------------------------------------------------
    def dead(self, owner: str, heartbeat: int) -> bool:
        parts = owner.split(" ")
        if len(parts) == 3 and parts[0] == self.hostname and parts[1].isdigit():
            pid = int(parts[1])
            if pid == self.pid:
                return parts[2] != self.token  # this pid's earlier process: gone
            if not self.alive(pid):
                return True
        return self.clock() - heartbeat > self.claim_timeout

    # -- one poll ------------------------------------------------------------------------
    def poll_once(self) -> None:
        """Look at every job of this client once."""
        self._wake = None
        self._sessions = {}
        for job in self.catalog.poll_jobs(self.client_id):
            job_id = job.get("job_id")
            if not job_id:
                continue
            try:
                catalog = self.catalog_for(job)
                if catalog is None:
                    continue
                self._look(catalog, job_id, job)
            except ClaimLost:
                LOG.debug("job %s changed while deciding; next poll", job_id)
            except StowkitError as err:
                LOG.error("job %s: %s", job_id, err)
            except Exception:
                # A bug, or a job the rules above did not foresee: say so, with the
                # traceback, and go on to the host's other jobs.  One job must never
                # stop the loop that runs them all.
                LOG.exception("job %s could not be handled; the other jobs go on", job_id)

    def _note_wake(self, when: float | None) -> None:
        if when is not None and (self._wake is None or when < self._wake):
            self._wake = when

    def _session(self, catalog: CatalogClient, job: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The job's session document, read once per poll; None for a job of no session."""
        session_id = job.get("session_id")
        if not session_id or not isinstance(session_id, str):
            return None
        key = (getattr(catalog, "project", ""), session_id)
        if key not in self._sessions:
            try:
                self._sessions[key] = catalog.get_session(session_id)
            except NotFound:
                LOG.warning("job %s: its session %s is gone: run alone", job.get("job_id"), key[1])
                self._sessions[key] = None
        return self._sessions[key]

    def _look(self, catalog: CatalogClient, job_id: str, job: Mapping[str, Any]) -> None:
        with self._lock:
            current = self.runs.get(job_id)
        if current is not None:
            self._tend(current, job)
            return
        session = self._session(catalog, job)
        step = claims.decide(job, self.clock(), self.me, self.pid, self.dead, session)
        self._note_wake(step.wake)
        if step.patch is None:
            if step.session_end and session is not None:
                LOG.warning("job %s: %s", job_id, step.note)
                self._end_session(catalog, job_id, session, sessions.tag(session), step.session_end)
            return
        # Decide again on the version the write is conditioned on.
        fresh, version = catalog.get_job(job_id)
        step = claims.decide(fresh, self.clock(), self.me, self.pid, self.dead, session)
        self._note_wake(step.wake)
        if step.patch is None:
            return
        catalog.patch_job(job_id, {"job_schedule": step.patch}, version)
        if step.note:
            LOG.info("job %s: %s", job_id, step.note)
        if step.session_end and session is not None:
            self._end_session(catalog, job_id, session, sessions.tag(session), step.session_end)
        if step.run:
            fresh = {**fresh, "job_schedule": {**claims.schedule_of(fresh), **step.patch}}
            self._start(catalog, job_id, fresh, step.patch["claim"]["run"], session)

    def _tend(self, run: Run, job: Mapping[str, Any]) -> None:
        """A run of ours: pass it its job's event, and tell others it is alive."""
        event = claims.schedule_of(job).get("event") or ""
        if event in ("abort", "remove") and not run.ctx.cancel.is_set():
            LOG.info("job %s: %s requested: aborting run %d", run.job_id, event, run.number)
            run.ctx.cancel.set()
            proc = run.ctx.process
            if proc is not None and proc.poll() is None:
                proc.terminate()
        catalog = run.catalog or self.catalog
        for _ in range(_WRITE_TRIES):
            fresh, version = catalog.get_job(run.job_id)
            schedule = claims.schedule_of(fresh)
            if not claims.owns(schedule, self.me, run.number):
                return  # finished meanwhile, or declared lost by another agent
            try:
                catalog.patch_job(
                    run.job_id, {"job_schedule": claims.heartbeat(schedule, self.clock())}, version
                )
                return
            except ClaimLost:
                continue

    # -- runs -----------------------------------------------------------------------------
    def _start(
        self,
        catalog: CatalogClient,
        job_id: str,
        job: Mapping[str, Any],
        number: int,
        session: Mapping[str, Any] | None = None,
    ) -> None:
        ctx = self.make_context()
        if catalog is not self.catalog:
            # a central agent's job: its parents are in the job's project
            ctx.find_backups = lambda match: catalog.find_backups(match, limit=100)
            if ctx.forget_backup is not None:
                ctx.forget_backup = catalog.delete_backup
        run = Run(job_id, number, ctx, catalog=catalog, session=session)
        thread = threading.Thread(
            target=self._run, args=(run, job), name=f"job-{job_id}", daemon=True
        )
        run.thread = thread
        with self._lock:
            self.runs[job_id] = run
        thread.start()

    def _run(self, run: Run, job: Mapping[str, Any]) -> None:
        catalog = run.catalog or self.catalog
        tag: int | None = None
        try:
            refused = None
            if run.session is not None:
                tag, refused = self._start_session(catalog, run)
            if refused is not None:
                result, message = claims.Result.FAIL, refused
            else:
                result, message = runner.run_job(job, run.ctx, catalog.add_backup, self.run_action)
        except Exception:  # never leave a claimed run without a result
            LOG.exception("job %s: run %d crashed", run.job_id, run.number)
            result, message = claims.Result.FAIL, "the agent's run crashed (see its log)"
        try:
            if run.session is not None:
                if run.ctx.cancel.is_set() and result == claims.Result.SUCCESS:
                    result = claims.Result.ABORTED
                current = sessions.tag(run.session) if tag is None else tag
                self._end_session(catalog, run.job_id, run.session, current, result)
            self._finish(run, result, message, tag)
        finally:
            with self._lock:
                self.runs.pop(run.job_id, None)

    # -- sessions ---------------------------------------------------------------------
    def _start_session(self, catalog: CatalogClient, run: Run) -> tuple[int | None, str | None]:
        """``start`` the run's session: (the session's tag, None) or (None, why refused)."""
        assert run.session is not None
        session_id = str(run.session.get("session_id") or "")
        # The tag the session had when the run was decided: equal to the
        # session's, it opens a run; one behind within hold_off, it joins.
        current = sessions.tag(run.session)
        why = ""
        for _ in range(_WRITE_TRIES):
            try:
                answer = catalog.session_action(session_id, "start", run.job_id, current)
            except StowkitError as err:
                why = str(err)
                LOG.error("job %s: session %s start: %s", run.job_id, session_id, err)
                if run.ctx.cancel.wait(1):
                    break
                continue
            if answer.get("result") == "success":
                tag = answer.get("session_tag")
                LOG.info("job %s: session %s run %s started", run.job_id, session_id, tag)
                return (tag if isinstance(tag, int) else current), None
            why = str(answer.get("result") or answer)
            break
        return None, f"session {session_id}: start refused ({why}); actions not run"

    def _end_session(
        self,
        catalog: CatalogClient,
        job_id: str,
        session: Mapping[str, Any],
        current: int,
        result: str,
    ) -> None:
        session_id = str(session.get("session_id") or "")
        for _ in range(_WRITE_TRIES):
            try:
                answer = catalog.session_action(session_id, "end", job_id, current, result)
            except StowkitError as err:
                LOG.error("job %s: session %s end: %s", job_id, session_id, err)
                time.sleep(1)
                continue
            LOG.info(
                "job %s: session %s end (%s): %s", job_id, session_id, result, answer.get("result")
            )
            return
        LOG.error("job %s: gave up reporting %s to session %s", job_id, result, session_id)

    def _finish(self, run: Run, result: str, message: str, tag: int | None = None) -> None:
        LOG.info("job %s: run %d: %s (%s)", run.job_id, run.number, result, message)
        catalog = run.catalog or self.catalog
        for _ in range(_WRITE_TRIES * 4):
            try:
                fresh, version = catalog.get_job(run.job_id)
            except NotFound:
                LOG.warning("job %s was deleted during run %d", run.job_id, run.number)
                return
            except StowkitError as err:
                LOG.error(
                    "job %s: cannot read it to report run %d: %s", run.job_id, run.number, err
                )
                time.sleep(1)
                continue
            schedule = claims.schedule_of(fresh)
            if not claims.owns(schedule, self.me, run.number):
                LOG.warning(
                    "job %s: run %d was taken as lost meanwhile; result %s not written",
                    run.job_id,
                    run.number,
                    result,
                )
                return
            if run.ctx.cancel.is_set() and result == claims.Result.SUCCESS:
                result = claims.Result.ABORTED
            member = run.session is not None
            if member:
                schedule = sessions.schedule_view(schedule, run.session)
            patch = claims.finished(schedule, result, self.clock(), session_member=member)
            patch["claim"]["message"] = message[:2000]
            body: dict[str, Any] = {"job_schedule": patch}
            if tag is not None:
                body["session_tag"] = tag  # as freezer-scheduler keeps it in the job
            try:
                catalog.patch_job(run.job_id, body, version)
                return
            except ClaimLost:
                continue
            except StowkitError as err:
                LOG.error("job %s: cannot report run %d: %s", run.job_id, run.number, err)
                time.sleep(1)
        LOG.error("job %s: gave up reporting run %d (%s)", run.job_id, run.number, result)

    def wait_runs(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [r.thread for r in self.runs.values() if r.thread is not None]
            if not threads:
                return
            for thread in threads:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)
            if deadline is not None and time.monotonic() >= deadline:
                return

    # -- the loop -------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> None:
        """Register, then poll until :meth:`stop`; runs in progress are aborted and reported."""
        while not self._stop.is_set():
            try:
                self.register()
                break
            except StowkitError as err:
                LOG.error("cannot register client %s: %s (retrying)", self.client_id, err)
                self._stop.wait(self.poll_interval)
        LOG.info(
            "agent %s polling as client %s every %ss", self.me, self.client_id, self.poll_interval
        )
        while not self._stop.is_set():
            try:
                self.poll_once()
            except StowkitError as err:
                LOG.error("poll failed: %s", err)
            pause = self.poll_interval
            if self._wake is not None:
                pause = min(pause, max(0.05, self._wake - self.clock()))
            self._stop.wait(pause)
        with self._lock:
            running = list(self.runs.values())
        for run in running:
            LOG.info("job %s: agent stopping: aborting run %d", run.job_id, run.number)
            run.ctx.cancel.set()
            if run.ctx.process is not None and run.ctx.process.poll() is None:
                run.ctx.process.terminate()
        self.wait_runs()
