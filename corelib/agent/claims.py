"""What the agent does with a job it reads: the one owner of the job state machine.

A job's ``job_schedule`` carries freezer's fields (``status``, ``event``,
``result``, ``time_started``, ``time_ended``, ``current_pid``) and stowkit's
``claim``: ``run`` (how many runs were ever claimed), ``due`` (the slot of
the last run claimed since ``since``, when the schedule was last started),
``owner`` (``"HOST PID TOKEN"`` of the agent running it) and ``heartbeat``.

**At most once.**  A run starts only after a PATCH of the claim (status
``running``, ``run + 1``, the slot in ``due``) made with ``If-Match`` on the
version the decision was taken from: of two agents deciding on one version
one write wins, the other gets 412 and reads again, and then sees the slot
taken.  A slot is claimed only when it is after ``claim.due``, so a run that
was claimed is never claimed again, whatever happens to its agent: a run
whose owner died (same host and its pid gone, or no heartbeat for
``claim_timeout``) is recorded as failed, never repeated.

Every function here is pure: the engine reads, calls, and writes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

from stowkit.corelib.agent import sessions
from stowkit.corelib.agent.triggers import Trigger, parse_schedule
from stowkit.corelib.errors import InvalidArgument


class Status(enum.StrEnum):
    """A job's ``job_schedule.status``, freezer-scheduler's words ("": new or restarted)."""

    NEW = ""
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    STOP = "stop"
    REMOVED = "removed"


class Result(enum.StrEnum):
    """How a run ended: ``job_schedule.result``."""

    SUCCESS = "success"
    FAIL = "fail"
    ABORTED = "aborted"


#: Statuses after which nothing runs until a ``start`` event.
IDLE = frozenset({Status.STOP, Status.REMOVED, Status.COMPLETED})


@dataclasses.dataclass(frozen=True)
class Step:
    """One decision: a PATCH of ``job_schedule`` (or none), and whether a run starts."""

    patch: dict[str, Any] | None = None
    run: bool = False
    #: when to look at the job again (None: at the next poll)
    wake: float | None = None
    note: str = ""
    #: a result to report to the job's session without running (a run missed)
    session_end: str | None = None


def schedule_of(job: Mapping[str, Any]) -> dict[str, Any]:
    return dict(job.get("job_schedule") or {})


def claim_of(schedule: Mapping[str, Any]) -> dict[str, Any]:
    claim = schedule.get("claim")
    return dict(claim) if isinstance(claim, dict) else {}


def _trigger(schedule: Mapping[str, Any]) -> Trigger:
    return parse_schedule(schedule)


def _since(schedule: Mapping[str, Any], claim: Mapping[str, Any], now: float) -> int:
    since = claim.get("since")
    if isinstance(since, int):
        return since
    created = schedule.get("time_created")
    return created if isinstance(created, int) and created > 0 else math.floor(now)


def decide(
    job: Mapping[str, Any],
    now: float,
    me: str,
    pid: int,
    dead: Callable[[str, int], bool],
    session: Mapping[str, Any] | None = None,
) -> Step:
    """The next step for ``job`` seen at ``now`` by agent ``me`` (``"HOST PID TOKEN"``).

    ``dead(owner, heartbeat)`` says whether another agent's run is lost.
    Runs of this agent itself (owner ``me``) are the engine's: no step.
    ``session``: the document of the job's session (``session_id``), read
    now; its schedule and open run decide the job's runs (sessions.py).
    """
    schedule = schedule_of(job)
    if session is not None:
        schedule = sessions.schedule_view(schedule, session)
    status = schedule.get("status") or ""
    event = schedule.get("event") or ""
    claim = claim_of(schedule)
    now_i = math.floor(now)

    if status == Status.RUNNING:
        owner = str(claim.get("owner", ""))
        if owner == me:
            return Step()
        heartbeat = claim.get("heartbeat")
        heartbeat = heartbeat if isinstance(heartbeat, int) else schedule.get("time_started", 0)
        if not dead(owner, heartbeat if isinstance(heartbeat, int) else 0):
            return Step(note=f"running on {owner or 'another agent'}")
        # Lost: recorded as failed; its slot stays claimed, so it never runs again.
        patch = finished(
            schedule, Result.FAIL, now, keep_event=True, session_member=session is not None
        )
        return Step(
            patch=patch,
            note=f"run {claim.get('run', '?')} lost: {owner} is gone",
            # its session must not wait for it
            session_end=Result.FAIL if session is not None else None,
        )

    try:
        trigger = _trigger(schedule)
    except InvalidArgument as err:
        if status == Status.STOP and not event:
            return Step()
        return Step(
            patch={"status": Status.STOP, "result": Result.FAIL, "event": ""},
            note=f"cannot schedule: {err}",
        )

    if event == "remove":
        return Step(patch={"status": Status.REMOVED, "event": ""}, note="removed")
    if event in ("stop", "abort"):
        return Step(
            patch={"status": Status.STOP, "event": ""}, note=f"{event}: not scheduled any more"
        )
    if status in IDLE and event != "start":
        return Step()

    if event == "start" or status == "":
        # (Re)scheduled now: slots count from here; the run counter goes on.
        since, last_due = now_i, None
        fresh: dict[str, Any] = {"run": int(claim.get("run", 0)), "since": since}
        base_patch: dict[str, Any] = {"event": ""}
    else:  # "scheduled" (or a status freezer-scheduler left, taken as scheduled)
        since = _since(schedule, claim, now)
        last_due = claim.get("due") if isinstance(claim.get("due"), int) else None
        fresh = {**claim, "since": since}
        base_patch = {}

    due = trigger.due(since, last_due, now_i)
    if session is not None:
        if trigger.kind == "now":
            due = None  # a member without a schedule runs only with its session
        step = _session_step(job, session, due, last_due, now_i, base_patch, fresh, me, pid)
        if step is not None:
            return step
        if due is None and trigger.kind == "now":
            # No schedule of its own: the job waits for the session's next run.
            if status == Status.SCHEDULED and not base_patch and claim.get("since") == since:
                return Step()
            return Step(
                patch={**base_patch, "status": Status.SCHEDULED, "claim": fresh},
                note="waiting for its session to start",
            )
    if due is None:
        return Step(
            patch={**base_patch, "status": Status.COMPLETED, "event": "", "claim": fresh},
            note="no run left in the schedule",
        )
    if due > now_i:
        if status == Status.SCHEDULED and not base_patch and claim.get("since") == since:
            return Step(wake=due)
        return Step(
            patch={**base_patch, "status": Status.SCHEDULED, "claim": fresh},
            wake=due,
            note=f"scheduled, next run at {due}",
        )
    return _claim(base_patch, fresh, int(due), since, me, pid, now_i)


def _claim(
    base_patch: Mapping[str, Any],
    fresh: Mapping[str, Any],
    due: int,
    since: int,
    me: str,
    pid: int,
    now_i: int,
) -> Step:
    run = int(fresh.get("run", 0)) + 1
    patch = {
        **base_patch,
        "status": Status.RUNNING,
        "result": "",
        "event": "",
        "current_pid": pid,
        "time_started": now_i,
        "time_ended": -1,
        "claim": {"run": run, "due": due, "since": since, "owner": me, "heartbeat": now_i},
    }
    return Step(patch=patch, run=True, note=f"run {run} claimed (slot {due})")


def _session_step(
    job: Mapping[str, Any],
    session: Mapping[str, Any],
    due: float | None,
    last_due: int | None,
    now_i: int,
    base_patch: dict[str, Any],
    fresh: dict[str, Any],
    me: str,
    pid: int,
) -> Step | None:
    """A run of the session the job has not taken part in: join it, or end it as missed.

    None when the session has no such run (the job's own slots decide).  The
    job's own slot, when due now, is claimed as usual: its ``start`` opens
    the session's run or joins it.
    """
    if due is not None and due <= now_i:
        return None
    start = sessions.open_run(session, str(job.get("job_id", "")), last_due)
    if start is None:
        return None
    since = int(fresh["since"])
    if sessions.joinable(session, start, now_i):
        # The run's slot is when the session opened it: claimed once, as any slot.
        return _claim(base_patch, fresh, start, since, me, pid, now_i)
    return Step(
        session_end=Result.FAIL,
        note=f"session run {sessions.tag(session)} (opened at {start}) missed: "
        "ended as failed for this job",
    )


def owns(schedule: Mapping[str, Any], me: str, run: int) -> bool:
    """Whether run ``run`` of this schedule is still ``me``'s (nobody declared it lost)."""
    claim = claim_of(schedule)
    return (
        schedule.get("status") == Status.RUNNING
        and claim.get("owner") == me
        and claim.get("run") == run
    )


def finished(
    schedule: Mapping[str, Any],
    result: str,
    now: float,
    keep_event: bool = False,
    session_member: bool = False,
) -> dict[str, Any]:
    """The PATCH that ends the current run with ``result`` (success, fail or aborted).

    An event that came during the run decides what follows (stop, abort:
    ``stop``; remove: ``removed``) and is cleared; otherwise the job is
    ``scheduled`` when its trigger has runs left, else ``completed``.
    ``keep_event``: for a run another agent lost, leave the event to be
    handled on the next look, as for a job that was not running.
    ``session_member``: the job belongs to a session; without a schedule of
    its own it stays ``scheduled`` for the session's next run.
    """
    claim = claim_of(schedule)
    event = schedule.get("event") or ""
    now_i = math.floor(now)
    patch: dict[str, Any] = {
        "result": result,
        "time_ended": now_i,
        "claim": {**claim, "heartbeat": now_i},
    }
    if event in ("stop", "abort", "remove") and not keep_event:
        patch["status"] = Status.REMOVED if event == "remove" else Status.STOP
        patch["event"] = ""
        if event == "abort" and result != Result.FAIL:
            patch["result"] = Result.ABORTED
        return patch
    try:
        trigger = _trigger(schedule)
        since = _since(schedule, claim, now)
        due = claim.get("due") if isinstance(claim.get("due"), int) else None
        left = not trigger.one_shot and trigger.due(since, due, now_i) is not None
        left = left or (session_member and trigger.kind == "now")
    except InvalidArgument:
        left = False
    patch["status"] = Status.SCHEDULED if left else Status.COMPLETED
    return patch


def heartbeat(schedule: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The PATCH a running agent sends each poll so others know its run is alive."""
    return {"claim": {**claim_of(schedule), "heartbeat": math.floor(now)}}
