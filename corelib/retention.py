"""Retention patterns: which snapshots a purge deletes (pure functions).

The language is buttervolume's, with exactly its meaning (buttervolume 3.13,
``compute_purges``).  A pattern is two or more ``NUMBERUNIT`` items joined by
``:``; units are ``m`` (minute), ``h`` (hour), ``d`` (day), ``w`` (week,
7 days) and ``y`` (year, 365 days).  Sorted from the longest to the shortest,
the items ``L0 >= L1 >= ... >= Ln`` cut the past into segments:

* snapshots younger than ``Ln`` (the shortest) are all kept;
* in the segment between ``L(i+1)`` and ``Li`` (ages in ``[L(i+1), Li]``),
  one snapshot is kept per *timeframe* of length ``L(i+1)``, the timeframe
  of a snapshot being ``age // L(i+1)`` with the age counted back from *now*
  in minutes: walking from the oldest snapshot to the youngest, the first
  one met in a timeframe is kept and the others in it are deleted;
* snapshots older than ``L0`` (the longest) are deleted.  The outermost
  segment's walk starts with them, so they still count as the first of their
  timeframe: the timeframe straddling ``L0`` loses all its snapshots.

So ``4h:1d:2w:2y`` keeps everything from the last 4 hours, one snapshot per
4 hours up to a day old, one per day up to two weeks old, one per two weeks
up to two years old, and nothing older; ``2h:2h`` keeps only the last two
hours.  Details kept from the seed on purpose, since "exactly its meaning"
is the point: ages are whole seconds divided by 60 (a float), a snapshot
exactly on a boundary belongs to both segments (deleted if either condemns
it), and timeframes are counted on the age, so they move with *now* from one
purge to the next.  tests/unit/test_retention.py pins these cases.

What stowkit adds is outside this module: the driver never deletes the
volume's newest snapshot nor the newest one each peer holds
(:func:`plan_purge` takes those as ``protect``).  Unlike the seed, items must be positive whole
numbers (``0h`` or ``-1d`` are refused rather than silently misbehaving).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence

from stowkit.corelib.errors import InvalidArgument

#: minutes per unit, as the seed counts them (a year is 365 days)
UNITS: Mapping[str, int] = {"m": 1, "h": 60, "d": 60 * 24, "w": 60 * 24 * 7, "y": 60 * 24 * 365}

_ITEM = re.compile(r"([0-9]{1,9})([mhdwy])")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A parsed retention pattern: ``text`` as given, ``minutes`` longest first."""

    text: str
    minutes: tuple[int, ...]

    def __str__(self) -> str:
        return self.text


def parse_pattern(text: object) -> Pattern:
    """Parse ``4h:1d:2w:2y``; :class:`InvalidArgument` with the reason otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("invalid purge pattern: it must not be empty (e.g. 4h:1d:2w:2y)")
    items = text.split(":")
    if len(items) < 2:
        raise InvalidArgument(
            f"invalid purge pattern {text!r}: give at least two items, e.g. 2h:2h or 4h:1d:2w"
        )
    minutes = []
    for item in items:
        match = _ITEM.fullmatch(item)
        if not match:
            raise InvalidArgument(
                f"invalid purge pattern {text!r}: {item!r} is not a number followed by "
                "one of m, h, d, w, y"
            )
        value = int(match.group(1)) * UNITS[match.group(2)]
        if value <= 0:
            raise InvalidArgument(f"invalid purge pattern {text!r}: {item!r} must be positive")
        minutes.append(value)
    return Pattern(text, tuple(sorted(minutes, reverse=True)))


def age_minutes(created: dt.datetime, now: dt.datetime) -> float:
    """The seed's age: whole seconds elapsed, divided by 60."""
    return int((now - created).total_seconds()) / 60


def condemned(
    snapshots: Iterable[tuple[str, dt.datetime]],
    pattern: Pattern | str,
    now: dt.datetime,
) -> list[str]:
    """Names the pattern deletes, oldest first, from ``(name, created)`` pairs.

    ``created`` and ``now`` must both be aware (or both naive) datetimes.
    """
    if not isinstance(pattern, Pattern):
        pattern = parse_pattern(pattern)
    ordered = sorted(snapshots, key=lambda item: (item[1], item[0]))
    ages = [(name, age_minutes(created, now)) for name, created in ordered]
    lengths = pattern.minutes
    longest = lengths[0]
    doomed: set[str] = set()
    # Walk each segment from its oldest snapshot to its youngest; the first
    # snapshot met in a timeframe survives, later ones in it do not.
    for outer, inner in zip(lengths, lengths[1:], strict=False):
        previous_frame: float | None = None
        for name, age in ages:
            in_segment = inner <= age and (age <= outer or outer == longest)
            if not in_segment:
                continue
            frame = age // inner
            if age > longest or frame == previous_frame:
                doomed.add(name)
            previous_frame = frame
    return [name for name, _ in ages if name in doomed]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a purge will do: ``delete`` and ``keep`` oldest first, ``protected`` why."""

    delete: Sequence[str]
    keep: Sequence[str]
    protected: Mapping[str, str]


def plan_purge(
    snapshots: Iterable[tuple[str, dt.datetime]],
    pattern: Pattern | str,
    now: dt.datetime,
    protect: Mapping[str, str] | None = None,
) -> Plan:
    """:func:`condemned`, minus the newest snapshot and the ``protect`` names.

    ``protect`` maps a snapshot name to the reason it must stay (e.g. "last
    sent to HOST"); the newest snapshot is always protected ("newest snapshot").
    A protected snapshot still *occupies* its timeframe, so protecting one never
    makes the pattern spare a neighbour it would otherwise delete.
    """
    items = sorted(snapshots, key=lambda item: (item[1], item[0]))
    doomed = condemned(items, pattern, now)
    reasons = dict(protect or {})
    if items:
        reasons.setdefault(items[-1][0], "newest snapshot")
    protected = {name: reasons[name] for name in doomed if name in reasons}
    delete = [name for name in doomed if name not in protected]
    gone = set(delete)
    keep = [name for name, _ in items if name not in gone]
    return Plan(delete, keep, protected)
