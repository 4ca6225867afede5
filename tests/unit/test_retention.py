"""Retention patterns: the seed's language and meaning, plus stowkit's protections."""

from __future__ import annotations

import datetime as dt

import pytest

from stowkit.corelib import retention
from stowkit.corelib.errors import InvalidArgument

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
H = 60  # minutes


def snaps(*ages_minutes: float) -> list[tuple[str, dt.datetime]]:
    """Snapshots named by their age in minutes, for readable assertions."""
    return [(f"v@{age:g}", NOW - dt.timedelta(minutes=age)) for age in ages_minutes]


def deleted_ages(pattern: str, *ages: float) -> set[float]:
    return {float(name[2:]) for name in retention.condemned(snaps(*ages), pattern, NOW)}


# -- parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("4h:1d:2w:2y", (2 * 365 * 24 * H, 2 * 7 * 24 * H, 24 * H, 4 * H)),
        ("4h:1w", (7 * 24 * H, 4 * H)),
        ("2h:2h", (2 * H, 2 * H)),
        ("1y:30m", (365 * 24 * H, 30)),  # order does not matter: sorted longest first
        ("90m:1d:1h", (24 * H, 90, 60)),
    ],
)
def test_parse_valid(text, minutes):
    pattern = retention.parse_pattern(text)
    assert pattern.minutes == minutes
    assert str(pattern) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "4h",
        "4x:1d",
        "h:1d",
        "0h:1d",
        "-1h:2h",
        "4h;1d",
        "4h:1d:",
        "4 h:1d",
        "4H:1D",
        None,
        42,
    ],
)
def test_parse_invalid(text):
    with pytest.raises(InvalidArgument):
        retention.parse_pattern(text)


# -- the seed's documented examples ---------------------------------------------------


def test_2h_2h_keeps_only_the_last_two_hours():
    ages = (10, 60, 119, 121, 180, 300, 3000)
    assert deleted_ages("2h:2h", *ages) == {121, 180, 300, 3000}


def test_4h_1w_hourly_for_ten_days():
    # One snapshot an hour for ten days: all of the last 4 hours, then one per
    # 4-hour timeframe (age // 240 min) up to a week, nothing older.
    ages = [k * H for k in range(0, 241)]
    gone = deleted_ages("4h:1w", *ages)
    kept = sorted(set(ages) - gone)
    assert [a for a in kept if a < 4 * H] == [0, 60, 120, 180]
    # Oldest of each timeframe survives: hours 4f+3 for f = 1..41.  Hour 168
    # (exactly one week) shares timeframe 42 with hours 169-171, which are too
    # old and deleted; the seed still counts them as the timeframe's first, so
    # hour 168 goes too.
    expected_old = [(4 * f + 3) * H for f in range(1, 42)]
    assert [a for a in kept if a >= 4 * H] == expected_old
    assert len(kept) == 45
    assert 168 * H in gone
    assert all(a > 168 * H for a in gone if a > 168 * H)
    assert {a for a in ages if a > 168 * H} <= gone


def test_4h_1d_2w_2y_daily_snapshots():
    # Daily snapshots at noon for three years: within a day none is old enough
    # to thin; between a day and two weeks one per day (all kept); between two
    # weeks and two years one per 2-week timeframe; older than two years gone.
    day = 24 * H
    ages = [d * day for d in range(0, 3 * 365)]
    gone = deleted_ages("4h:1d:2w:2y", *ages)
    kept = sorted(set(ages) - gone)
    # Day 14 sits on the 2w boundary: it is also in the outer segment, where
    # days 15-27 share its timeframe and are older, so it is deleted there.
    assert [a for a in kept if a <= 14 * day] == [d * day for d in range(0, 14)]
    old = [a // day for a in kept if a > 14 * day]
    # one per 14-day timeframe, the oldest of it: day 14f+13 for f = 1..51; the
    # timeframe 52 (days 728-741) starts with days past two years, so all of it goes.
    assert old == [14 * f + 13 for f in range(1, 52)]
    assert all(a > 730 * day for a in gone if a > 730 * day)
    assert {a for a in ages if a > 730 * day} <= gone


def test_4h_1d_2w_2y_frequent_recent_snapshots():
    # Every 30 minutes over two days.
    ages = [k * 30 for k in range(0, 97)]
    gone = deleted_ages("4h:1d:2w:2y", *ages)
    assert not {a for a in gone if a < 4 * H}  # the last 4 hours: all kept
    kept_mid = sorted(a for a in ages if 4 * H <= a <= 24 * H and a not in gone)
    # one per 4-hour timeframe, frames 1..5 of 240 min; age 1440 (frame 6 here)
    # is deleted by the outer segment, where it shares day-timeframe 1 with older ones
    assert [int(a // 240) for a in kept_mid] == [1, 2, 3, 4, 5]
    assert 24 * H in gone
    kept_old = sorted(a for a in ages if a > 24 * H and a not in gone)
    # one per day timeframe, the oldest of each: 2850 (frame 1) and 2880 (frame 2)
    assert kept_old == [2850, 2880]


def test_snapshot_on_a_boundary_belongs_to_both_segments():
    # 240 min is the edge of 4h:1d; it is in [240, 1440] and in [60, 240] of
    # 1h:4h:1d.  The seed can list it twice; we answer each name once.
    result = retention.condemned(snaps(240, 241, 250), "1h:4h:1d", NOW)
    assert len(result) == len(set(result))


def test_older_than_longest_item_always_condemned():
    assert deleted_ages("1h:1d", 5, 24 * H + 1, 100 * 24 * H) == {24 * H + 1, 100 * 24 * H}


def test_young_snapshots_never_condemned():
    assert deleted_ages("1h:1d", 0, 1, 59) == set()


def test_input_order_and_future_snapshots():
    items = snaps(300, 10, 200, -5, 150)
    assert retention.condemned(items, "2h:2h", NOW) == retention.condemned(
        list(reversed(items)), "2h:2h", NOW
    )
    assert "v@-5" not in retention.condemned(items, "2h:2h", NOW)


def test_age_counts_whole_seconds():
    # 119 min 59.9 s is 7199 whole seconds: still inside 2h.
    created = NOW - dt.timedelta(minutes=119, seconds=59, milliseconds=900)
    assert retention.age_minutes(created, NOW) == 7199 / 60


def test_empty():
    assert retention.condemned([], "2h:2h", NOW) == []
    plan = retention.plan_purge([], "2h:2h", NOW)
    assert plan.delete == [] and plan.keep == []


# -- stowkit's protections ---------------------------------------------------------------


def test_newest_snapshot_is_never_deleted():
    plan = retention.plan_purge(snaps(300, 200, 180), "2h:2h", NOW)
    assert plan.delete == ["v@300", "v@200"]
    assert plan.keep == ["v@180"]
    assert plan.protected == {"v@180": "newest snapshot"}


def test_protected_snapshots_are_kept_with_their_reason():
    plan = retention.plan_purge(snaps(500, 400, 300, 10), "2h:2h", NOW, {"v@400": "last sent to b"})
    assert plan.delete == ["v@500", "v@300"]
    assert plan.keep == ["v@400", "v@10"]
    assert plan.protected == {"v@400": "last sent to b"}


def test_protection_does_not_spare_a_neighbour():
    # 300 and 310 share the 4h timeframe of 4h:1w (frame 1); 310 is the oldest and
    # survives, 300 dies.  Protecting 310 changes nothing for 300.
    items = snaps(310, 300, 5)
    plain = retention.plan_purge(items, "4h:1w", NOW)
    guarded = retention.plan_purge(items, "4h:1w", NOW, {"v@310": "last sent to b"})
    assert plain.delete == guarded.delete == ["v@300"]


def test_protected_name_not_condemned_is_not_reported():
    plan = retention.plan_purge(snaps(10, 5), "2h:2h", NOW, {"v@10": "last sent to b"})
    assert plan.protected == {}
    assert plan.delete == []
