"""When a ``job_schedule`` fires: freezer-scheduler's (APScheduler's) meaning of its fields.

freezer-scheduler turns a schedule into one APScheduler trigger:

* ``schedule_date``: a ``date`` trigger, one run at that time;
* ``schedule_interval`` (``N weeks|days|hours|minutes|seconds`` or
  ``continuous``, which is every second): an ``interval`` trigger; without a
  ``schedule_start_date`` the first run is one interval after the job was
  scheduled, with one the runs are ``start + k * interval``;
* any of ``schedule_year|month|day|week|day_of_week|hour|minute|second``: a
  ``cron`` trigger (APScheduler's fields: ``day_of_week`` 0 = Monday or
  ``mon``..``sun``; a field left out is ``*`` when a less significant field
  is given and its minimum otherwise, ``week`` and ``day_of_week`` always ``*``);
* none of these: one run at once.

``schedule_start_date``/``schedule_end_date`` bound interval and cron runs.
Naive dates and cron fields are local time, as APScheduler's default.

The agent polls, so a run is due at the first look at or after its slot;
slots missed while no agent ran are coalesced into one run (APScheduler's
``coalesce``).  Everything here is pure: times are seconds since the epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

from stowkit.corelib.errors import InvalidArgument

_UNITS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
#: APScheduler's cron fields, most significant first, with their ranges.
CRON_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("year", 1970, 9999),
    ("month", 1, 12),
    ("day", 1, 31),
    ("week", 1, 53),
    ("day_of_week", 0, 6),
    ("hour", 0, 23),
    ("minute", 0, 59),
    ("second", 0, 59),
)
_NAMES = {
    "month": {
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    "day_of_week": {d: i for i, d in enumerate(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])},
}
#: How far ahead a cron search looks before saying the expression never fires.
_CRON_HORIZON_DAYS = 366 * 8


def parse_time(text: str) -> int:
    """An ISO-8601 date of the catalog (``2030-01-01T02:00:00``, ``Z`` or offset allowed)."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{text!r} is not an ISO-8601 date") from None
    # Naive: local time, as APScheduler.  Whole seconds: every slot is an
    # integer, so a slot written back to the catalog compares equal to itself.
    try:
        return math.floor(when.timestamp())
    except (OverflowError, ValueError, OSError):
        # A naive year 1 is year 0 once moved to UTC: a job's date must never
        # reach the poll loop as anything but a schedule the job cannot use.
        raise InvalidArgument(f"{text!r} is out of the range of dates a schedule can use") from None


def parse_interval(text: str) -> int:
    """``"5 minutes"`` -> 300, ``"continuous"`` -> 1 (freezer-scheduler's every second)."""
    text = text.strip()
    if text == "continuous":
        return 1
    match = re.fullmatch(r"(\d+) +(\w+?)s?", text)
    unit = match and _UNITS.get(match.group(2) + "s")
    if not match or not unit or int(match.group(1)) == 0:
        raise InvalidArgument(
            f"schedule_interval {text!r}: use 'continuous' or "
            "'N weeks|days|hours|minutes|seconds' with N > 0"
        )
    return int(match.group(1)) * unit


def parse_cron_field(name: str, text: str) -> frozenset[int]:
    """One cron field (``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, ``a/n``, names, lists)."""
    low, high = next((lo, hi) for n, lo, hi in CRON_FIELDS if n == name)
    names = _NAMES.get(name, {})

    def number(part: str) -> int:
        part = part.strip().lower()
        if part in names:
            return names[part]
        if not part.isdigit():
            raise InvalidArgument(f"schedule_{name}: {part!r} is not a number of {low}..{high}")
        value = int(part)
        if not low <= value <= high:
            raise InvalidArgument(f"schedule_{name}: {value} is outside {low}..{high}")
        return value

    values: set[int] = set()
    for item in str(text).split(","):
        item = item.strip()
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidArgument(f"schedule_{name}: bad step in {item!r}")
            step = int(step_text)
        if base in ("*", ""):
            first, last = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = number(a), number(b)
            if last < first:
                raise InvalidArgument(f"schedule_{name}: range {base!r} goes backwards")
        else:
            first = number(base)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    if not values:
        raise InvalidArgument(f"schedule_{name}: {text!r} selects nothing")
    return frozenset(values)


@dataclasses.dataclass(frozen=True)
class Cron:
    fields: Mapping[str, frozenset[int]]

    @classmethod
    def from_schedule(cls, given: Mapping[str, str]) -> Cron:
        names = [n for n, _, _ in CRON_FIELDS]
        least = max(names.index(n) for n in given)
        fields: dict[str, frozenset[int]] = {}
        for index, (name, low, _) in enumerate(CRON_FIELDS):
            if name in given:
                text = given[name]
            elif index < least or name in ("week", "day_of_week"):
                text = "*"
            else:
                text = str(low)
            fields[name] = parse_cron_field(name, text)
        return cls(fields)

    def _day_matches(self, day: dt.date) -> bool:
        f = self.fields
        return (
            day.year in f["year"]
            and day.month in f["month"]
            and day.day in f["day"]
            and day.isocalendar()[1] in f["week"]
            and day.weekday() in f["day_of_week"]
        )

    def next_after(self, after: float) -> float | None:
        """The first firing time strictly after ``after`` (local time), None if never."""
        start = dt.datetime.fromtimestamp(math.floor(after) + 1)
        hours, minutes, seconds = (sorted(self.fields[k]) for k in ("hour", "minute", "second"))
        day = start.date()
        for _ in range(_CRON_HORIZON_DAYS):
            if self._day_matches(day):
                for h in hours:
                    for m in minutes:
                        for s in seconds:
                            when = dt.datetime.combine(day, dt.time(h, m, s))
                            if when >= start:
                                return math.floor(when.timestamp())
            day += dt.timedelta(days=1)
        return None


@dataclasses.dataclass(frozen=True)
class Trigger:
    """A parsed schedule.  ``kind``: ``now``, ``date``, ``interval`` or ``cron``."""

    kind: str
    run_date: float | None = None
    interval: int | None = None
    cron: Cron | None = None
    start: float | None = None
    end: float | None = None

    @property
    def one_shot(self) -> bool:
        return self.kind in ("now", "date")

    def due(self, since: float, last_due: float | None, now: float) -> float | None:
        """The slot of the next run: a time after ``last_due``; None when no run is left.

        ``since``: when the job was (re)scheduled (its first sighting or its
        last ``start`` event); ``last_due``: the slot of the last run claimed
        since then.  A slot at or before ``now`` is due now; several missed
        slots give one, the latest.
        """
        if self.kind == "now":
            return since if last_due is None else None
        if self.kind == "date":
            return self.run_date if last_due is None else None
        if self.kind == "interval":
            slot = self._interval_slot(since, last_due, now)
        else:
            slot = self._cron_slot(since, last_due, now)
        if slot is None or (self.end is not None and slot > self.end):
            return None
        return slot

    def _interval_slot(self, since: float, last_due: float | None, now: float) -> float:
        assert self.interval
        step = self.interval
        base = self.start if self.start is not None else since
        first_k = 0 if self.start is not None else 1
        after = last_due if last_due is not None else -math.inf
        # The first slot after the last run (and not before the first slot) ...
        k = max(first_k, math.floor((after - base) / step) + 1) if after > -math.inf else first_k
        slot = base + k * step
        if slot <= now:
            # ... or, when several were missed, the latest one reached.
            k = max(k, math.floor((now - base) / step))
            slot = base + k * step
        return slot

    def _cron_slot(self, since: float, last_due: float | None, now: float) -> float | None:
        assert self.cron
        after = max(since - 1, last_due if last_due is not None else -math.inf)
        if self.start is not None:
            after = max(after, self.start - 1)
        slot = self.cron.next_after(after)
        if slot is not None and slot <= now:
            return math.floor(now)  # coalesced: one run now for every missed slot
        return slot


def parse_schedule(schedule: Mapping[str, Any]) -> Trigger:
    """A ``job_schedule`` as freezer-scheduler reads it (see the module's docstring)."""
    start = schedule.get("schedule_start_date")
    end = schedule.get("schedule_end_date")
    bounds = {
        "start": parse_time(start) if start else None,
        "end": parse_time(end) if end else None,
    }
    if schedule.get("schedule_date"):
        return Trigger("date", run_date=parse_time(schedule["schedule_date"]))
    if schedule.get("schedule_interval"):
        return Trigger("interval", interval=parse_interval(schedule["schedule_interval"]), **bounds)
    given = {
        name: str(schedule[f"schedule_{name}"])
        for name, _, _ in CRON_FIELDS
        if schedule.get(f"schedule_{name}") not in (None, "")
    }
    if given:
        return Trigger("cron", cron=Cron.from_schedule(given), **bounds)
    return Trigger("now")
