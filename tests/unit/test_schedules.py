"""Schedules: interval fire times, crontab parsing and words, and every crontab fire
time of a year across daylight saving time, checked against a brute-force reference."""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import re
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor.schedules import Schedule, as_schedule, crontab, schedule

UTC = ZoneInfo("UTC")
MINUTE = dt.timedelta(minutes=1)
YEAR = 2026
YEAR_START = dt.datetime(YEAR, 1, 1, tzinfo=dt.UTC).timestamp()
YEAR_END = dt.datetime(YEAR + 1, 1, 1, tzinfo=dt.UTC).timestamp()


def at(*fields: int, tz: dt.tzinfo = dt.UTC, fold: int = 0) -> float:
    """The UNIX time of a wall time in ``tz``."""
    return dt.datetime(*fields, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def fires(s: Schedule, tz: ZoneInfo, start: float = YEAR_START, end: float = YEAR_END):
    """Every fire time in [start, end), by chaining next_after."""
    out = []
    t = s.next_after(start - 1, tz)
    while t < end:
        out.append(t)
        t = s.next_after(t, tz)
    return out


# -- interval schedules ---------------------------------------------------------------


def test_interval_fires_on_multiples_of_the_interval_since_the_anchor() -> None:
    every_minute = schedule(60)
    # Given a time between two minutes, the next fire is the next whole minute
    assert every_minute.next_after(at(2026, 5, 1, 12, 0, 30), UTC) == at(2026, 5, 1, 12, 1)
    # And a fire time is never returned for itself: strictly after
    assert every_minute.next_after(at(2026, 5, 1, 12, 1), UTC) == at(2026, 5, 1, 12, 2)
    # An anchor shifts the grid: hourly at half past
    half_past = schedule(dt.timedelta(hours=1), anchor=1800)
    assert half_past.next_after(at(2026, 5, 1, 12, 30), UTC) == at(2026, 5, 1, 13, 30)
    assert half_past.next_after(at(2026, 5, 1, 12, 29, 59), UTC) == at(2026, 5, 1, 12, 30)


def test_interval_ignores_the_time_zone() -> None:
    after = at(2026, 3, 29, 0, 59)
    berlin = schedule(3600).next_after(after, ZoneInfo("Europe/Berlin"))
    assert berlin == schedule(3600).next_after(after, UTC) == at(2026, 3, 29, 1, 0)


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "every second"),
        (0.5, "every 0.5 seconds"),
        (90, "every 90 seconds"),
        (60, "every minute"),
        (120, "every 2 minutes"),
        (3600, "every hour"),
        (7200, "every 2 hours"),
        (86400, "every day"),
        (dt.timedelta(days=7), "every 7 days"),
    ],
)
def test_interval_describe(seconds: float | dt.timedelta, words: str) -> None:
    assert schedule(seconds).describe() == words
    assert repr(schedule(seconds)) == f"<schedule: {words}>"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), dt.timedelta(0)])
def test_interval_rejects_non_positive_intervals(bad: Any) -> None:
    with pytest.raises(ValueError, match="run_every > 0"):
        schedule(bad)


def test_interval_equality() -> None:
    assert schedule(60) == schedule(dt.timedelta(minutes=1))
    assert hash(schedule(60)) == hash(schedule(dt.timedelta(minutes=1)))
    assert schedule(60) != schedule(60, anchor=30)
    assert schedule(60) != crontab()


# -- crontab parsing ------------------------------------------------------------------

ALL_DAYS = set(range(7))


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({}, "minute", set(range(60))),
        ({}, "day_of_week", ALL_DAYS),
        ({}, "day_of_month", set(range(1, 32))),
        ({}, "month_of_year", set(range(1, 13))),
        ({"minute": "*/15"}, "minute", {0, 15, 30, 45}),
        ({"minute": "0,30"}, "minute", {0, 30}),
        ({"minute": " 0 , 30 "}, "minute", {0, 30}),
        (
            {"minute": "1,13,30-35,50-59/3"},
            "minute",
            {1, 13, 30, 31, 32, 33, 34, 35, 50, 53, 56, 59},
        ),
        ({"hour": "9-17"}, "hour", set(range(9, 18))),
        ({"hour": "22-2"}, "hour", {22, 23, 0, 1, 2}),  # wraps, as in Celery
        ({"hour": "*/4"}, "hour", {0, 4, 8, 12, 16, 20}),
        ({"day_of_month": "1-10/2"}, "day_of_month", {1, 3, 5, 7, 9}),
        ({"day_of_month": "*/10"}, "day_of_month", {1, 11, 21, 31}),
        ({"month_of_year": "*/3"}, "month_of_year", {1, 4, 7, 10}),
        ({"month_of_year": "jan-mar"}, "month_of_year", {1, 2, 3}),
        ({"month_of_year": "December,JUNE"}, "month_of_year", {6, 12}),
        ({"day_of_week": "mon-fri"}, "day_of_week", {1, 2, 3, 4, 5}),
        ({"day_of_week": "sun"}, "day_of_week", {0}),
        ({"day_of_week": "Sunday,saturday"}, "day_of_week", {0, 6}),
        ({"day_of_week": "fri-mon"}, "day_of_week", {5, 6, 0, 1}),
        ({"day_of_week": "sat-sun"}, "day_of_week", {6, 0}),
        ({"day_of_week": "7"}, "day_of_week", {0}),  # 7 is Sunday too
        ({"day_of_week": 7}, "day_of_week", {0}),
        ({"day_of_week": "1-7"}, "day_of_week", ALL_DAYS),
        ({"day_of_week": "0-7"}, "day_of_week", ALL_DAYS),
        ({"day_of_week": "7-7"}, "day_of_week", {0}),
        ({"day_of_week": "7-2"}, "day_of_week", {0, 1, 2}),
        ({"day_of_week": "fri-7"}, "day_of_week", {5, 6, 0}),
        ({"day_of_week": "*/2"}, "day_of_week", {0, 2, 4, 6}),
        ({"minute": 5}, "minute", {5}),
        ({"minute": [0, 15]}, "minute", {0, 15}),
        ({"minute": range(0, 60, 20)}, "minute", {0, 20, 40}),
        ({"hour": {9, 17}}, "hour", {9, 17}),
        ({"day_of_week": (0, 7, 1)}, "day_of_week", {0, 1}),
    ],
)
def test_crontab_fields(kwargs: dict[str, Any], field: str, expected: set[int]) -> None:
    assert getattr(crontab(**kwargs), field) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": "60"}, "crontab minute: '60' is out of range 0-59"),
        ({"minute": "0,60"}, "crontab minute: '60' in '0,60' is out of range 0-59"),
        ({"hour": "24"}, "crontab hour: '24' is out of range 0-23"),
        ({"hour": "9-25"}, "crontab hour: '25' in '9-25' is out of range 0-23"),
        ({"hour": " 24 "}, "crontab hour: '24' is out of range 0-23"),
        ({"day_of_week": "8"}, "crontab day_of_week: '8' is out of range 0-7"),
        ({"day_of_week": "funday"}, "crontab day_of_week: 'funday' is not a number or a day"),
        ({"day_of_month": "0"}, "crontab day_of_month: '0' is out of range 1-31"),
        ({"day_of_month": "32"}, "crontab day_of_month: '32' is out of range 1-31"),
        ({"month_of_year": "13"}, "crontab month_of_year: '13' is out of range 1-12"),
        ({"month_of_year": "mon"}, "crontab month_of_year: 'mon' is not a number or a month"),
        ({"minute": "jan"}, "crontab minute: 'jan' is not a number (0-59)"),
        ({"minute": "*/0"}, "crontab minute: '*/0': the step after '/' must be a positive"),
        ({"minute": "*/x"}, "crontab minute: '*/x': the step after '/' must be a positive"),
        ({"minute": "*/"}, "crontab minute: '*/': the step after '/' must be a positive"),
        ({"minute": "5/15"}, "crontab minute: '5/15': a step needs '*' or a range before it"),
        ({"minute": "-5"}, "crontab minute: '-5': negative numbers are not supported"),
        ({"minute": "1,,2"}, "crontab minute: empty part in '1,,2'"),
        ({"minute": ""}, "crontab minute: empty part in ''"),
        ({"minute": "1.5"}, "crontab minute: '1.5' is not a number"),
        ({"minute": 60}, "crontab minute: 60 is out of range 0-59"),
        ({"minute": [0, 60]}, "crontab minute: 60 is out of range 0-59"),
        ({"minute": []}, "crontab minute: [] has no values"),
        ({"minute": ["0"]}, "crontab minute: '0' in ['0'] is not an int"),
        ({"minute": 1.5}, "crontab minute: expected a str, an int or an iterable of ints"),
        ({"minute": True}, "crontab minute: expected a str, an int or an iterable of ints"),
        ({"minute": None}, "crontab minute: expected a str, an int or an iterable of ints"),
        ({"day_of_month": 30, "month_of_year": "feb"}, "no such date"),
        ({"day_of_month": "31", "month_of_year": "apr,jun,sep,nov"}, "no such date"),
    ],
)
def test_crontab_rejects_bad_fields_naming_the_field_and_part(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        crontab(**kwargs)


def test_a_step_without_a_range_suggests_one() -> None:
    with pytest.raises(ValueError, match=re.escape("(e.g. '5-59/15')")):
        crontab(minute="5/15")


def test_from_string_reads_minute_hour_day_of_month_month_day_of_week() -> None:
    assert crontab.from_string("*/5 * * * *") == crontab(minute="*/5")
    assert crontab.from_string("0 0 15 6 *") == crontab(0, 0, day_of_month=15, month_of_year=6)
    assert crontab.from_string("30 9 1-7 * mon") == crontab(30, 9, "mon", "1-7")
    assert crontab.from_string("  0  12\t* jan-mar sat,sun ") == crontab(
        0, 12, "sat,sun", month_of_year="1-3"
    )


@pytest.mark.parametrize("bad", ["* * * *", "* * * * * *", "", "every day"])
def test_from_string_needs_five_fields(bad: str) -> None:
    with pytest.raises(ValueError, match="five fields"):
        crontab.from_string(bad)


def test_from_string_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=re.escape("crontab hour: '25' is out of range")):
        crontab.from_string("0 25 * * *")


@pytest.mark.parametrize(
    "c",
    [
        crontab(),
        crontab("*/15"),
        crontab("1,13,30-45,50-59/2", "0,8-17/2"),
        crontab(0, 9, "sat,sun", "1-7,15-21", "*/3"),
        crontab(0, 0, "fri-mon", 31),
    ],
)
def test_cron_fields_round_trip(c: crontab) -> None:
    assert crontab.from_string(c.cron_fields()) == c
    assert repr(c) == f"<crontab: {c.cron_fields()} (m/h/dM/MY/d)>"


def test_crontab_equality_is_on_the_expanded_fields() -> None:
    assert crontab("*/15") == crontab([0, 15, 30, 45]) == crontab("0-59/15")
    assert crontab(day_of_week=7) == crontab(day_of_week="sun") == crontab(day_of_week=0)
    assert hash(crontab("*/15")) == hash(crontab([0, 15, 30, 45]))
    assert len({crontab("*/15"), crontab("0,15,30,45"), crontab("*/20")}) == 2
    assert crontab("*/15") != crontab("*/20")
    assert crontab(0) != schedule(3600)
    assert repr(crontab(30, 9, "mon-fri")) == "<crontab: 30 9 * * 1-5 (m/h/dM/MY/d)>"


def test_as_schedule() -> None:
    assert as_schedule(30) == schedule(30)
    assert as_schedule(2.5) == schedule(2.5)
    assert as_schedule(dt.timedelta(minutes=5)) == schedule(300)
    c = crontab(0, 9)
    assert as_schedule(c) is c
    assert as_schedule("*/5 * * * *") == crontab("*/5")
    assert isinstance(crontab(), Schedule)
    for bad in (True, None, [1, 2], "*/5 * * *"):
        with pytest.raises(ValueError, match=r"a schedule is|five fields"):
            as_schedule(bad)
    with pytest.raises(ValueError, match="crontab minute"):
        as_schedule("61 * * * *")


@pytest.mark.parametrize(
    ("c", "words"),
    [
        (crontab(), "every minute"),
        (crontab("*/15"), "every 15 minutes"),
        (crontab("*/30"), "every 30 minutes"),
        (crontab(0), "at minute 0 of every hour"),
        (crontab("0,30"), "every 30 minutes"),
        (crontab("5,35"), "at minutes 5 and 35 of every hour"),
        (crontab(30, 9, "mon-fri"), "at 09:30 on Monday to Friday"),
        (crontab(30, 2), "at 02:30 every day"),
        (crontab(0, [9, 17]), "at 09:00 and 17:00 every day"),
        (crontab(0, "*/2"), "at minute 0 of every 2nd hour"),
        (crontab("*/15", "9-17"), "every 15 minutes during hours 9 to 17"),
        (crontab("*", 2), "every minute during hour 2"),
        (crontab(0, 0, day_of_month=31), "at 00:00 on day 31 of the month"),
        (crontab(0, 0, day_of_month="1,15"), "at 00:00 on days 1 and 15 of the month"),
        (crontab(0, 8, "sat,sun"), "at 08:00 on Saturday and Sunday"),
        (
            crontab(0, 9, "mon", "1-7"),
            "at 09:00 on Monday when the day of the month is 1 to 7",
        ),
        (
            crontab(0, 0, 1, month_of_year="jan-mar,oct"),
            "at 00:00 on Monday in January to March and October",
        ),
        (crontab("*/7"), "cron '*/7 * * * *' (minute hour day-of-month month day-of-week)"),
        (
            crontab("1,13,30-45,50-59/2"),
            "cron '1,13,30-45,50,52,54,56,58 * * * *' (minute hour day-of-month month day-of-week)",
        ),
    ],
)
def test_crontab_describe(c: crontab, words: str) -> None:
    assert c.describe() == words


# -- crontab fire times ---------------------------------------------------------------


def test_next_after_is_strictly_after_and_skips_to_matching_days() -> None:
    weekdays = crontab(30, 9, "mon-fri")
    friday = at(2026, 1, 2, 9, 30)
    assert weekdays.next_after(friday - 0.001, UTC) == friday
    # Strictly after: not Friday again, and not the weekend
    assert weekdays.next_after(friday, UTC) == at(2026, 1, 5, 9, 30)
    assert weekdays.next_after(friday + 0.5, UTC) == at(2026, 1, 5, 9, 30)


def test_day_of_week_and_day_of_month_must_both_match() -> None:
    # Celery's rule, not cron's: the first Monday of each month, not every Monday
    # plus the first seven days.
    first_monday = crontab(0, 9, "mon", "1-7")
    got = fires(first_monday, UTC)
    assert len(got) == 12
    for t in got:
        day = dt.datetime.fromtimestamp(t, dt.UTC)
        assert day.isoweekday() == 1
        assert day.day <= 7


def test_day_31_fires_only_in_months_that_have_it() -> None:
    got = fires(crontab(0, 0, day_of_month=31), UTC)
    assert [dt.datetime.fromtimestamp(t, dt.UTC).month for t in got] == [1, 3, 5, 7, 8, 10, 12]


def test_rare_dates_are_found_by_jumping_not_scanning() -> None:
    # A Monday 29 February: the next one after 2026 is in 2044.
    leap_monday = crontab(0, 0, "mon", 29, "feb")
    began = time.process_time()
    assert leap_monday.next_after(YEAR_START, UTC) == at(2044, 2, 29, 0, 0)
    assert time.process_time() - began < 0.05


def test_a_year_of_every_15_minutes_takes_under_a_second() -> None:
    every_15 = crontab("*/15")
    began = time.process_time()  # CPU time: other processes' load does not count
    got = fires(every_15, ZoneInfo("Europe/Berlin"))
    elapsed = time.process_time() - began
    # 365 days of 96 wall times; the spring-forward day has 92; on the fall-back
    # day the repeated hour's four wall times fire once, so that day has 96 too.
    assert len(got) == 365 * 96 - 4
    assert elapsed < 1.0, f"{elapsed:.2f}s"


# -- daylight saving time: a whole year against brute force ---------------------------


@functools.cache
def wall_minutes(tz_name: str) -> dict[tuple[int, int], list[tuple[float, int, int, int]]]:
    """Every UTC minute of the year read on the wall clock of ``tz_name``, as
    ``(instant, day, month, weekday)`` (Sunday 0) by the ``(hour, minute)`` of the wall
    time. A repeated (fall-back) wall time is kept only at its first occurrence; a wall
    minute that no instant shows (a spring-forward gap) is placed as far after the gap
    as it was into it. Computed once per time zone, by reading the clock minute by
    minute, without the code under test."""
    tz = ZoneInfo(tz_name)
    by_time: dict[tuple[int, int], list[tuple[float, int, int, int]]] = {
        (h, m): [] for h in range(24) for m in range(60)
    }
    fromtimestamp = dt.datetime.fromtimestamp
    previous = fromtimestamp(YEAR_START - 60, tz)
    previous_minute = previous.hour * 60 + previous.minute
    day, weekday = previous.day, previous.isoweekday() % 7
    for i in range(int(YEAR_END - YEAR_START) // 60):
        instant = YEAR_START + 60 * i
        local = fromtimestamp(instant, tz)
        minute_of_day = local.hour * 60 + local.minute
        if minute_of_day != (previous_minute + 1) % 1440:  # the clock jumped
            jump = local.utcoffset() - previous.utcoffset()  # type: ignore[operator]
            # Forward: the wall minutes after the previous reading up to this one never
            # show; each fires as far after the jump as it was after the gap's start.
            for k in range(int(jump / MINUTE)):
                w = previous.replace(tzinfo=None) + (k + 1) * MINUTE
                by_time[w.hour, w.minute].append(
                    (instant + 60 * k, w.day, w.month, w.isoweekday() % 7)
                )
        if local.day != day:
            day, weekday = local.day, local.isoweekday() % 7
        if not local.fold:
            by_time[local.hour, local.minute].append((instant, day, local.month, weekday))
        previous, previous_minute = local, minute_of_day
    return by_time


@functools.cache
def reference(tz_name: str, case: str) -> list[float]:
    """The case's fire instants of the year, by brute force."""
    fields = CASES[case][1]
    every = set(range(60))
    weekdays, days, months = (fields.get(f, every) for f in ("weekday", "day", "month"))
    by_time = wall_minutes(tz_name)
    return sorted(
        {
            instant
            for h in fields.get("hour", every) & set(range(24))
            for m in fields.get("minute", every)
            for instant, day, month, weekday in by_time[h, m]
            if weekday in weekdays and day in days and month in months
        }
    )


TIME_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe"]

# Each crontab next to its fields written out by hand, for the reference.
CASES: dict[str, tuple[crontab, dict[str, set[int]]]] = {
    "daily 02:30": (crontab(30, 2), {"minute": {30}, "hour": {2}}),
    "daily 01:30": (crontab(30, 1), {"minute": {30}, "hour": {1}}),
    "every 30 minutes": (crontab("*/30"), {"minute": {0, 30}}),
    "hourly at minute 0": (crontab(0), {"minute": {0}}),
    "mon-fri 09:00": (
        crontab(0, 9, "mon-fri"),
        {"minute": {0}, "hour": {9}, "weekday": {1, 2, 3, 4, 5}},
    ),
    "monthly on day 31 at 02:15": (
        crontab(15, 2, day_of_month=31),
        {"minute": {15}, "hour": {2}, "day": {31}},
    ),
    "every minute of hour 2 on Sundays": (
        crontab("*", 2, "sun"),
        {"hour": {2}, "weekday": {0}},
    ),
    "01:00 to 03:59 at :20 and :40": (
        crontab("20,40", "1-3"),
        {"minute": {20, 40}, "hour": {1, 2, 3}},
    ),
}


@pytest.mark.parametrize("tz_name", TIME_ZONES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_year_of_fire_times_matches_brute_force(tz_name: str, case: str) -> None:
    c = CASES[case][0]
    expected = reference(tz_name, case)
    assert expected, "the reference found nothing: the case is wrong"
    assert fires(c, ZoneInfo(tz_name)) == expected


# The instants each zone changes its offset in 2026.
TRANSITIONS = {
    "Europe/Berlin": [at(2026, 3, 29, 1, 0), at(2026, 10, 25, 1, 0)],
    "America/New_York": [at(2026, 3, 8, 7, 0), at(2026, 11, 1, 6, 0)],
    "Australia/Sydney": [at(2026, 4, 4, 16, 0), at(2026, 10, 3, 16, 0)],
    "Australia/Lord_Howe": [at(2026, 4, 4, 15, 0), at(2026, 10, 3, 15, 30)],
}


@pytest.mark.parametrize("tz_name", TIME_ZONES)
def test_next_after_any_instant_near_a_transition_matches_brute_force(tz_name: str) -> None:
    # Not only chained from the previous fire: from every minute (and half minute)
    # of the hours around each transition, e.g. just after a gap, where a skipped
    # wall time is still to fire.
    tz = ZoneInfo(tz_name)
    for transition in TRANSITIONS[tz_name]:
        assert dt.datetime.fromtimestamp(transition - 1, tz).utcoffset() != (
            dt.datetime.fromtimestamp(transition, tz).utcoffset()
        )
        for case, (c, _) in CASES.items():
            expected = reference(tz_name, case)
            for k in range(-180, 180):
                for after in (transition + 60 * k, transition + 60 * k + 30):
                    want = expected[bisect.bisect_right(expected, after)]
                    assert c.next_after(after, tz) == want, (c, after)


def local_day(times: list[float], tz: ZoneInfo, day: dt.date) -> list[float]:
    return [t for t in times if dt.datetime.fromtimestamp(t, tz).date() == day]


def test_berlin_spring_forward_runs_the_skipped_0230_once_at_0330_local() -> None:
    tz = ZoneInfo("Europe/Berlin")
    # 2026-03-29: clocks jump from 02:00 CET to 03:00 CEST at 01:00 UTC.
    got = local_day(fires(crontab(30, 2), tz), tz, dt.date(2026, 3, 29))
    assert got == [at(2026, 3, 29, 1, 30)]  # 03:30 CEST
    assert dt.datetime.fromtimestamp(got[0], tz).strftime("%H:%M %Z") == "03:30 CEST"
    # Every 30 minutes: the skipped 02:00 and 02:30 land on 03:00 and 03:30, once each.
    half_hours = local_day(fires(crontab("*/30"), tz), tz, dt.date(2026, 3, 29))
    assert len(half_hours) == 46
    assert at(2026, 3, 29, 0, 30) in half_hours  # 01:30 CET
    assert at(2026, 3, 29, 1, 0) in half_hours  # 03:00 CEST


def test_berlin_fall_back_runs_the_repeated_0230_once_at_its_first_occurrence() -> None:
    tz = ZoneInfo("Europe/Berlin")
    # 2026-10-25: clocks go back from 03:00 CEST to 02:00 CET at 01:00 UTC.
    got = local_day(fires(crontab(30, 2), tz), tz, dt.date(2026, 10, 25))
    assert got == [at(2026, 10, 25, 0, 30)]  # 02:30 CEST, not 02:30 CET
    half_hours = fires(crontab("*/30"), tz, at(2026, 10, 24, 23, 0), at(2026, 10, 25, 3, 0))
    # 01:00, 01:30, 02:00, 02:30 CEST, then nothing in the repeated hour, then 03:00 CET
    assert half_hours == [
        at(2026, 10, 24, 23, 0),
        at(2026, 10, 24, 23, 30),
        at(2026, 10, 25, 0, 0),
        at(2026, 10, 25, 0, 30),
        at(2026, 10, 25, 2, 0),
        at(2026, 10, 25, 2, 30),
    ]


def test_new_york_fall_back_runs_0130_once_at_0530_utc() -> None:
    tz = ZoneInfo("America/New_York")
    got = local_day(fires(crontab(30, 1), tz), tz, dt.date(2026, 11, 1))
    assert got == [at(2026, 11, 1, 5, 30)]  # 01:30 EDT
    # Asked from inside the repeated hour (01:10 EST), it is tomorrow's 01:30 next.
    inside = at(2026, 11, 1, 1, 10, tz=tz, fold=1)
    assert crontab(30, 1).next_after(inside, tz) == at(2026, 11, 2, 6, 30)


def test_new_york_spring_forward_runs_0230_at_0330_edt() -> None:
    tz = ZoneInfo("America/New_York")
    got = local_day(fires(crontab(30, 2), tz), tz, dt.date(2026, 3, 8))
    assert got == [at(2026, 3, 8, 7, 30)]  # 03:30 EDT
    # Asked just after the gap (03:10 EDT), the skipped 02:30 is still to come.
    assert crontab(30, 2).next_after(at(2026, 3, 8, 7, 10), tz) == at(2026, 3, 8, 7, 30)


def test_sydney_southern_hemisphere_shifts() -> None:
    tz = ZoneInfo("Australia/Sydney")
    daily = fires(crontab(30, 2), tz)
    # 2026-04-05: back from 03:00 AEDT to 02:00 AEST; 02:30 runs once, in AEDT.
    assert local_day(daily, tz, dt.date(2026, 4, 5)) == [at(2026, 4, 4, 15, 30)]
    # 2026-10-04: forward from 02:00 AEST to 03:00 AEDT; 02:30 runs at 03:30 AEDT.
    assert local_day(daily, tz, dt.date(2026, 10, 4)) == [at(2026, 10, 3, 16, 30)]


def test_lord_howe_half_hour_gap_interleaves_skipped_and_real_wall_times() -> None:
    tz = ZoneInfo("Australia/Lord_Howe")
    # 2026-10-04: 02:00 jumps to 02:30 (at 15:30 UTC). 02:20 does not exist and
    # runs 20 minutes after the jump (02:50 local); 02:40 exists (02:40 local),
    # so it runs first.
    got = fires(crontab("20,40", 2), tz, at(2026, 10, 3, 15, 0), at(2026, 10, 3, 17, 0))
    assert got == [at(2026, 10, 3, 15, 40), at(2026, 10, 3, 15, 50)]
