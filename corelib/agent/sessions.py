"""freezer sessions as the agent reads them: when a member job starts with the others.

A session (``/v2/{project}/sessions/{id}``) groups jobs of several hosts
that must start together (the volumes of one application).  Its fields
(catalog.md "Sessions"): ``session_tag`` (one more for every run opened),
``status`` (``running`` while a run goes on), ``time_start`` (when the run
was opened), ``hold_off`` (seconds after ``time_start`` during which other
jobs still join that run) and ``jobs`` ``{job_id: {status, result, ...}}``:
opening a run sets every member's entry to ``scheduled``, a job's ``start``
sets its own to ``running``, its ``end`` to ``completed`` with its result,
and the session's result is ``success`` only when every member's is.

What the agent makes of it (the engine calls the catalog, this module decides):

* **The session's schedule is the members' schedule** when it has one (as
  freezer-api copies it into each job it adds): every agent computes the same
  slots, sleeps until the slot and sends ``start`` at it, so the members start
  within the agents' clock skew.  The first ``start`` opens the run, the
  others join it.
* **A run opened by someone else** (``freezer session-start``, or a member
  whose slot came first) is joined at the agent's next look while within
  ``hold_off``: a member without a schedule of its own waits for such runs.
* **A run missed** (seen after ``hold_off`` without having joined) is ended
  for this job with ``fail``, so the session's result says a member is missing
  instead of staying ``running``.

Pure functions; times are seconds since the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: job_schedule fields that say when a job runs (a session's schedule replaces them)
TRIGGER_FIELDS = frozenset(
    {
        "schedule_date",
        "schedule_interval",
        "schedule_start_date",
        "schedule_end_date",
        "schedule_year",
        "schedule_month",
        "schedule_day",
        "schedule_week",
        "schedule_day_of_week",
        "schedule_hour",
        "schedule_minute",
        "schedule_second",
    }
)
#: freezer-api's default hold_off when a session document has none
DEFAULT_HOLD_OFF = 30


def schedule_view(schedule: Mapping[str, Any], session: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job's schedule with the session's trigger fields, when the session has any."""
    view = dict(schedule)
    given = {
        k: v for k, v in (session or {}).get("schedule", {}).items() if k in TRIGGER_FIELDS and v
    }
    if given:
        for key in TRIGGER_FIELDS:
            view.pop(key, None)
        view.update(given)
    return view


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def tag(session: Mapping[str, Any]) -> int:
    return _int(session.get("session_tag"), 0)


def entry(session: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    jobs = session.get("jobs")
    value = jobs.get(job_id) if isinstance(jobs, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def open_run(session: Mapping[str, Any], job_id: str, last_due: int | None) -> int | None:
    """``time_start`` of a run of the session this job has not taken part in, else None.

    ``last_due``: the slot of the job's last claimed run; a run opened at or
    before it was already claimed.  The job's entry is ``scheduled`` (the run
    was opened by another member) or ``running`` (opened for this very job by
    ``freezer session-start``; a run of this job whose agent died is ended as
    failed before, so its entry is ``completed``).
    """
    if session.get("status") != "running":
        return None
    if entry(session, job_id).get("status") not in ("scheduled", "running"):
        return None
    start = _int(session.get("time_start"), -1)
    if start < 0 or (last_due is not None and start <= last_due):
        return None
    return start


def joinable(session: Mapping[str, Any], start: int, now: float) -> bool:
    """Whether a run opened at ``start`` still takes members (within ``hold_off``)."""
    hold_off = _int(session.get("hold_off"), DEFAULT_HOLD_OFF)
    # The catalog joins while now - time_start < hold_off (whole seconds).
    return math.floor(now) - start < hold_off
