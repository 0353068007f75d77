"""When periodic tasks fire: interval schedules and ``crontab``.

A schedule answers one question, the same way in every process: ``next_after(t,
tz)``, the first fire time strictly after the UNIX time ``t``. Fire times are pure
functions of the schedule and the clock, never of when a scheduler started, so
any number of beat processes agree on every slot (and claim each one in the
broker), and a restart neither resets a countdown nor fires at once.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo


@runtime_checkable
class Schedule(Protocol):
    """A periodic schedule: see the module docstring."""

    def next_after(self, after: float, tz: ZoneInfo) -> float:
        """The first fire time (UNIX time) strictly after ``after``, for wall-clock
        fields read in ``tz`` (interval schedules ignore ``tz``)."""
        ...

    def describe(self) -> str:
        """The schedule in words, for ``beat --list``."""
        ...


class schedule:
    """Every ``run_every`` seconds, anchored to absolute time: fires at the UNIX times
    ``anchor + k * run_every`` (``anchor`` 0: the epoch), so ``schedule(60)`` fires at
    the top of every minute whoever runs it and whenever it was started."""

    def __init__(self, run_every: float | dt.timedelta, anchor: float = 0.0):
        seconds = (
            run_every.total_seconds() if isinstance(run_every, dt.timedelta) else float(run_every)
        )
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"an interval schedule needs run_every > 0, not {run_every!r}")
        self.run_every = seconds
        self.anchor = float(anchor)

    def next_after(self, after: float, tz: ZoneInfo) -> float:
        k = math.floor((after - self.anchor) / self.run_every) + 1
        return self.anchor + k * self.run_every

    def describe(self) -> str:
        seconds = self.run_every
        for unit, size in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0)):
            if seconds >= size and seconds % size == 0:
                n = int(seconds // size)
                return f"every {unit}" if n == 1 else f"every {n} {unit}s"
        return "every second" if seconds == 1 else f"every {seconds:g} seconds"

    def __repr__(self) -> str:
        return f"<schedule: {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and (self.run_every, self.anchor) == (
            other.run_every,
            other.anchor,
        )

    def __hash__(self) -> int:
        return hash((self.run_every, self.anchor))


_MINUTE = dt.timedelta(minutes=1)
_MINUTES = tuple(dt.timedelta(minutes=n) for n in range(24 * 60))
_DAY = dt.timedelta(days=1)

_DAY_NAMES: dict[str, int] = {}
for _i, _name in enumerate(
    ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
):
    _DAY_NAMES[_name] = _DAY_NAMES[_name[:3]] = _i
_MONTH_NAMES: dict[str, int] = {}
for _i, _name in enumerate(calendar.month_name[1:], start=1):
    _MONTH_NAMES[_name.lower()] = _MONTH_NAMES[_name[:3].lower()] = _i
_WEEKDAY_WORDS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTH_WORDS = tuple(calendar.month_name)  # index 1..12


class _Field:
    """How one crontab field is read: its values, what ``*`` covers, its names."""

    def __init__(
        self, name: str, lo: int, hi: int, names: dict[str, int] | None = None, top: int = 0
    ):
        self.name, self.lo, self.hi, self.names = name, lo, hi, names
        # Day of week: ``*`` and wrapped ranges cover 0-6, but 7 is accepted as Sunday.
        self.top = top or hi
        self.what = "a number" + (f" or a {name.split('_')[0]} name" if names else "")

    def error(self, detail: str) -> ValueError:
        return ValueError(f"crontab {self.name}: {detail}")

    def number(self, token: str, spec: str) -> int:
        token = token.strip()
        text = token.lower()
        where = "" if token == spec.strip() else f" in {spec!r}"
        if text.isascii() and text.isdigit():
            value = int(text)
        elif self.names and text in self.names:
            value = self.names[text]
        else:
            raise self.error(f"{token!r}{where} is not {self.what} ({self.lo}-{self.hi})")
        if not self.lo <= value <= self.hi:
            raise self.error(f"{token!r}{where} is out of range {self.lo}-{self.hi}")
        return value

    def parse(self, spec: object) -> frozenset[int]:
        if isinstance(spec, str):
            values = [v for part in spec.split(",") for v in self._part(part, spec)]
        elif isinstance(spec, bool) or not isinstance(spec, int | Iterable):
            raise self.error(
                f"expected a str, an int or an iterable of ints, not {type(spec).__name__} {spec!r}"
            )
        else:
            items = [spec] if isinstance(spec, int) else list(spec)
            if not items:
                raise self.error(f"{spec!r} has no values")
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise self.error(f"{item!r} in {spec!r} is not an int")
                if not self.lo <= item <= self.hi:
                    raise self.error(f"{item!r} is out of range {self.lo}-{self.hi}")
            values = items
        return frozenset(v % 7 if self.top != self.hi else v for v in values)

    def _part(self, part: str, spec: str) -> list[int]:
        if not part.strip():
            raise self.error(f"empty part in {spec!r}")
        base, slash, step_text = (t.strip() for t in part.partition("/"))
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise self.error(f"{part!r}: the step after '/' must be a positive integer")
            step = int(step_text)
        if base == "*":
            values = list(range(self.lo, self.top + 1))
        elif "-" in base:
            first, _, last = base.partition("-")
            if not first.strip():
                raise self.error(f"{part!r}: negative numbers are not supported")
            start, end = self.number(first, spec), self.number(last, spec)
            if start > self.top:  # day_of_week '7-2', '7-7': from Sunday (0)
                start, end = self.lo, self.lo if end > self.top else end
            if end < start:  # wraps around, like Celery: 'fri-mon', '22-2'
                values = list(range(start, self.top + 1)) + list(range(self.lo, end + 1))
            else:
                values = list(range(start, end + 1))
        elif slash:
            raise self.error(
                f"{part!r}: a step needs '*' or a range before it "
                f"(e.g. '{base}-{self.top}/{step_text}')"
            )
        else:
            values = [self.number(base, spec)]
        return values[::step]


_MINUTE_FIELD = _Field("minute", 0, 59)
_HOUR_FIELD = _Field("hour", 0, 23)
_DOW_FIELD = _Field("day_of_week", 0, 7, _DAY_NAMES, top=6)
_DOM_FIELD = _Field("day_of_month", 1, 31)
_MOY_FIELD = _Field("month_of_year", 1, 12, _MONTH_NAMES)
_MAX_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class crontab:
    """Fires at the wall-clock times whose fields all match, like Celery's ``crontab``.

    Each field is a str (``'*'``, ``'*/15'``, ``'0,30'``, ``'9-17'``, ``'1-10/2'``,
    ``'mon-fri'``, ``'jan-mar'``), an int, or an iterable of ints. Ranges: minute 0-59,
    hour 0-23, day_of_week 0-6 with Sunday 0 (7 is Sunday too; names ``sun``..``sat``
    or full), day_of_month 1-31, month_of_year 1-12 (names ``jan``..``dec`` or full).
    A range whose end is before its start wraps around (``'fri-mon'``, ``'22-2'``), and
    a step picks every n-th value of its range (``'*/15'`` is 0, 15, 30, 45), as in
    Celery. Bad input raises ``ValueError`` naming the field and the part.

    Unlike cron(8), and like Celery, **all** fields must match: ``day_of_week='mon'``
    with ``day_of_month='1-7'`` is the first Monday of the month, not "every Monday
    and the first seven days". A day like the 31st fires only in months that have it.

    Fields are read on the wall clock of the ``tz`` given to :meth:`next_after` (the
    app's ``timezone`` setting). Daylight saving time, with ``fold=0`` as the rule:

    - a matching wall time that does not exist (in the spring-forward gap) fires once,
      as far after the gap as it was into it: 02:30 on the day Europe/Berlin jumps
      from 02:00 to 03:00 fires at 03:30 local (01:30 UTC);
    - a matching wall time that happens twice (fall-back) fires once, at its first
      occurrence: 01:30 on the day America/New_York goes back from 02:00 to 01:00
      fires at 01:30 EDT (05:30 UTC), not again at 01:30 EST;
    - every other matching wall time fires exactly once. Two wall times that land on
      the same instant (02:30 shifted and 03:30, say) fire once.
    """

    minute: frozenset[int]
    hour: frozenset[int]
    day_of_week: frozenset[int]
    day_of_month: frozenset[int]
    month_of_year: frozenset[int]

    def __init__(
        self,
        minute: str | int | Iterable[int] = "*",
        hour: str | int | Iterable[int] = "*",
        day_of_week: str | int | Iterable[int] = "*",
        day_of_month: str | int | Iterable[int] = "*",
        month_of_year: str | int | Iterable[int] = "*",
    ):
        self.minute = _MINUTE_FIELD.parse(minute)
        self.hour = _HOUR_FIELD.parse(hour)
        self.day_of_week = _DOW_FIELD.parse(day_of_week)
        self.day_of_month = _DOM_FIELD.parse(day_of_month)
        self.month_of_year = _MOY_FIELD.parse(month_of_year)
        if not any(
            day <= _MAX_MONTH_DAYS[month]
            for month in self.month_of_year
            for day in self.day_of_month
        ):
            raise ValueError(
                f"crontab day_of_month {day_of_month!r} and month_of_year "
                f"{month_of_year!r}: no such date, the schedule would never fire"
            )
        self._minutes = tuple(sorted(self.minute))
        self._hours = tuple(sorted(self.hour))
        self._days = tuple(sorted(self.day_of_month))

    @classmethod
    def from_string(cls, cron: str) -> crontab:
        """A crontab from five cron fields: ``"minute hour day-of-month month
        day-of-week"``, as in Celery 5 (``crontab.from_string("*/5 * * * *")``)."""
        fields = cron.split() if isinstance(cron, str) else None
        if fields is None or len(fields) != 5:
            raise ValueError(
                f"a cron string has five fields (minute hour day-of-month month "
                f"day-of-week), not {cron!r}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year)

    # -- fire times ----------------------------------------------------------------

    def next_after(self, after: float, tz: ZoneInfo) -> float:
        # Wall times are datetimes in ``tz`` with fold=0: ``timestamp()`` is the rule.
        # (Arithmetic on them is wall-clock arithmetic; ``replace`` is avoided, as slow.)
        local = dt.datetime.fromtimestamp(after, tz)
        start = dt.datetime(local.year, local.month, local.day, local.hour, local.minute, tzinfo=tz)
        # A matching wall time in a spring-forward gap fires up to one gap's length
        # after the gap, so just after one, look back that far on the wall clock. (No
        # zone changes its offset twice within two days.)
        offset = local.utcoffset()
        earlier = dt.datetime.fromtimestamp(after - 2 * 86400, tz).utcoffset()
        if offset is not None and earlier is not None and offset > earlier:
            back = start - (offset - earlier)
            start = dt.datetime(back.year, back.month, back.day, back.hour, back.minute, tzinfo=tz)
        wall = self._next_wall(start + _MINUTE)
        best = math.inf
        limit: dt.datetime | None = None
        while True:
            fire = wall.timestamp()
            if after < fire < best:
                best = fire
                reading = dt.datetime.fromtimestamp(fire, tz)
                if reading.utcoffset() == wall.utcoffset():
                    return fire  # the clock reads ``wall``: no later wall time fires earlier
                # ``wall`` is in a gap and fires as a later reading: a wall time up to
                # that reading may fire earlier.
                limit = reading
            wall = self._next_wall(wall + _MINUTE)
            if limit is not None and wall > limit:
                return best

    def _next_wall(self, start: dt.datetime) -> dt.datetime:
        """The first matching wall time at or after ``start`` (a whole minute, aware)."""
        today = start.date()
        day = self._next_day(today)
        if day == today:
            hour, minute = start.hour, start.minute
            if hour in self.hour:
                i = bisect.bisect_left(self._minutes, minute)
                if i < len(self._minutes):
                    return start + _MINUTES[self._minutes[i] - minute]
            i = bisect.bisect_right(self._hours, hour)
            if i < len(self._hours):
                ahead = (self._hours[i] - hour) * 60 + self._minutes[0] - minute
                return start + _MINUTES[ahead]
            day = self._next_day(day + _DAY)
        return dt.datetime(
            day.year, day.month, day.day, self._hours[0], self._minutes[0], tzinfo=start.tzinfo
        )

    def _next_day(self, start: dt.date) -> dt.date:
        """The first date at or after ``start`` whose day, month and weekday match."""
        if (
            start.day in self.day_of_month
            and start.month in self.month_of_year
            and start.isoweekday() % 7 in self.day_of_week
        ):
            return start
        year, month, first = start.year, start.month, start.day
        while year <= dt.MAXYEAR:
            if month in self.month_of_year:
                # isoweekday of the 1st, Sunday 0
                weekday_1st, length = calendar.monthrange(year, month)
                weekday_1st = (weekday_1st + 1) % 7
                for day in self._days[bisect.bisect_left(self._days, first) :]:
                    if day > length:
                        break
                    if (weekday_1st + day - 1) % 7 in self.day_of_week:
                        return dt.date(year, month, day)
            month, first = month + 1, 1
            if month > 12:
                month, year = 1, year + 1
        raise ValueError(f"{self!r} does not fire again before the year {dt.MAXYEAR + 1}")

    # -- words -----------------------------------------------------------------------

    def cron_fields(self) -> str:
        """The five cron fields, canonical: ``crontab.from_string`` reads them back."""
        return " ".join(
            _render_field(values, field)
            for values, field in (
                (self.minute, _MINUTE_FIELD),
                (self.hour, _HOUR_FIELD),
                (self.day_of_month, _DOM_FIELD),
                (self.month_of_year, _MOY_FIELD),
                (self.day_of_week, _DOW_FIELD),
            )
        )

    def describe(self) -> str:
        when = self._describe_time()
        days = self._describe_days()
        if when is None or days is None:
            return f"cron '{self.cron_fields()}' (minute hour day-of-month month day-of-week)"
        if not days:
            return f"{when} every day" if when.startswith("at ") and ":" in when else when
        return f"{when} {days}"

    def _describe_time(self) -> str | None:
        minutes, hours = self._minutes, self._hours
        if len(minutes) * len(hours) <= 4:
            return "at " + _join([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
        hour_step = _step_of(hours, 24)
        if len(hours) == 24:
            of_hours: str | None = "every hour"
        elif hour_step:
            of_hours = f"every {_ordinal(hour_step)} hour"
        else:
            of_hours = _words(hours, "hour", "hours")
        during = "" if len(hours) == 24 else f" during {of_hours}"
        minute_step = _step_of(minutes, 60)
        if of_hours is None:
            return None
        if len(minutes) == 60:
            return "every minute" + during
        if minute_step:
            return f"every {minute_step} minutes" + during
        minute_words = _words(minutes, "minute", "minutes")
        return None if minute_words is None else f"at {minute_words} of {of_hours}"

    def _describe_days(self) -> str | None:
        parts = []
        if len(self.day_of_week) < 7:
            # Monday first, so the weekend reads "Saturday and Sunday".
            order = [(d - 1) % 7 for d in self.day_of_week]
            weekdays = _words(sorted(order), "", "", name=lambda i: _WEEKDAY_WORDS[(i + 1) % 7])
            if weekdays is None:
                return None
            parts.append(f"on {weekdays}")
        if len(self.day_of_month) < 31:
            if parts:
                words = _words(self._days, "", "")
                parts.append(f"when the day of the month is {words}")
            else:
                words = _words(self._days, "day", "days")
                parts.append(f"on {words} of the month")
            if words is None:
                return None
        if len(self.month_of_year) < 12:
            months = _words(sorted(self.month_of_year), "", "", name=_MONTH_WORDS.__getitem__)
            if months is None:
                return None
            parts.append(f"in {months}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"<crontab: {self.cron_fields()} (m/h/dM/MY/d)>"

    def _key(self) -> tuple[frozenset[int], ...]:
        return (self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted values as (first, last) runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _step_of(values: tuple[int, ...], size: int) -> int:
    """n when ``values`` are 0, n, 2n, ... and n divides ``size`` (so "every n"), else 0."""
    if len(values) < 2 or values[0] != 0:
        return 0
    step = values[1]
    ok = size % step == 0 and values == tuple(range(0, size, step))
    return step if ok else 0


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _words(
    values: Iterable[int], one: str, many: str, name: Callable[[int], str] = str
) -> str | None:
    """``hours 9 to 17``, ``minutes 0 and 30``, ``Monday to Friday``; None when too long
    to read (more than four runs)."""
    runs = _runs(values)
    if len(runs) > 4:
        return None
    items: list[str] = []
    for first, last in runs:
        if last - first >= 2:
            items.append(f"{name(first)} to {name(last)}")
        else:
            items.extend(name(v) for v in range(first, last + 1))
    noun = one if len(items) == 1 and runs[0][0] == runs[0][1] else many
    return f"{noun} {_join(items)}".strip()


def _render_field(values: frozenset[int], field: _Field) -> str:
    ordered = tuple(sorted(values))
    if ordered == tuple(range(field.lo, field.top + 1)):
        return "*"
    if len(ordered) > 2:
        step = ordered[1] - ordered[0]
        if ordered[0] == field.lo and ordered == tuple(range(field.lo, field.top + 1, step)):
            return f"*/{step}"
    parts = []
    for first, last in _runs(ordered):
        if last - first >= 2:
            parts.append(f"{first}-{last}")
        else:
            parts.extend(str(v) for v in range(first, last + 1))
    return ",".join(parts)


def as_schedule(value: Any) -> Schedule:
    """A ``beat_schedule`` entry's ``schedule``: seconds, a timedelta, a schedule
    (``crontab(...)``), or a five-field cron string (``"*/5 * * * *"``).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float | dt.timedelta) and not isinstance(value, bool):
        return schedule(value)
    if isinstance(value, str):
        return crontab.from_string(value)
    raise ValueError(
        f"a schedule is seconds, a timedelta, crontab(...) or a cron string, not {value!r}"
    )
