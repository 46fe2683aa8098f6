"""Schedules: a jobnet bound to start times on a calendar in a time zone; its fire times (pure data, no I/O).

::

    [schedule.nightly]
    jobnet = "nightly"
    timezone = "Asia/Tokyo"
    at = ["02:30"]                # or cron = "0 30 2 * * *"
    calendar = "business"         # run on its operating days
    on = { days = [25] }          # only the 25th of the month ...
    shift = "before"              # ... or the operating day before it when the 25th is not one
    max_shift_days = 5
    catch_up = "once"             # fire times missed while no manager was active: once, all or skip

Fire times are whole seconds since the epoch (UTC). A fire's ``key`` is its regular time; a one-off change
moves a fire (its ``at``) but keeps its key, which is what makes each fire unique. How wall-clock times map
to instants across DST changes is written in docs/scheduling.md and in ``_resolve``.
"""

import heapq
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.calendars import MAX_DATE, CalendarSet, Rule, parse_rule
from schemas.cron import Cron, CronError, parse_cron
from schemas.fields import FieldError, named_table, string
from schemas.names import is_valid_name

SCHEDULE_KEYS = frozenset(
    {
        "description",
        "jobnet",
        "params",
        "timezone",
        "at",
        "cron",
        "calendar",
        "on",
        "shift",
        "max_shift_days",
        "catch_up",
        "enabled",
    }
)
#: Time zone of a schedule that names none.
DEFAULT_TIMEZONE = "UTC"
#: Days a fire on a non-operating day may move, by default, and at most.
DEFAULT_MAX_SHIFT_DAYS, MAX_SHIFT_DAYS = 7, 31
#: Days ahead searched for a next fire before a schedule is taken to have none (about ten years).
HORIZON_DAYS = 3660
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_DAY_S = 86400


class Shift(StrEnum):
    """Where a fire that falls on a non-operating day goes."""

    BEFORE = "before"  #: to the nearest operating day before it
    AFTER = "after"  #: to the nearest operating day after it
    SKIP = "skip"  #: nowhere: it does not run


class CatchUp(StrEnum):
    """What to do with fire times that passed while no manager was active (or the schedule was held)."""

    ONCE = "once"  #: run once, late; the next fire is the first one after that run (WebSphere's rule)
    ALL = "all"  #: run every missed fire time, in order, late
    SKIP = "skip"  #: run none of them; go on with the next fire time still to come


@dataclass(frozen=True, slots=True)
class Schedule:
    """A jobnet's start times. Exactly one of ``at`` and ``cron`` is set."""

    name: str
    jobnet: str
    timezone: str = DEFAULT_TIMEZONE
    at: tuple[time, ...] = ()
    cron: Cron | None = None
    calendar: str | None = None
    on: Rule | None = None
    shift: Shift = Shift.SKIP
    max_shift_days: int = DEFAULT_MAX_SHIFT_DAYS
    catch_up: CatchUp = CatchUp.ONCE
    params: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    description: str = ""

    @property
    def zone(self) -> tzinfo:
        """The schedule's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def follows_elapsed_time(self) -> bool:
        """True for a cron that fires every hour: across DST it follows elapsed time, not the wall clock."""
        return self.cron is not None and self.cron.every_hour

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this schedule, in the input format (defaults left out)."""
        out: dict[str, Any] = {"jobnet": self.jobnet}
        if self.description:
            out["description"] = self.description
        if self.timezone != DEFAULT_TIMEZONE:
            out["timezone"] = self.timezone
        if self.cron is not None:
            out["cron"] = self.cron.text
        else:
            out["at"] = [format_time(t) for t in self.at]
        if self.calendar is not None:
            out["calendar"] = self.calendar
        if self.on is not None:
            out["on"] = self.on.to_dict()
        if self.shift != Shift.SKIP:
            out["shift"] = str(self.shift)
        if self.max_shift_days != DEFAULT_MAX_SHIFT_DAYS:
            out["max_shift_days"] = self.max_shift_days
        if self.catch_up != CatchUp.ONCE:
            out["catch_up"] = str(self.catch_up)
        if not self.enabled:
            out["enabled"] = False
        if self.params:
            out["params"] = dict(self.params)
        return out

    def references(self) -> set[str]:
        """The calendars this schedule reads."""
        found = {self.calendar} if self.calendar else set()
        return found | (self.on.references() if self.on else set())


@dataclass(frozen=True, slots=True, order=True)
class Fire:
    """One time a schedule starts its jobnet."""

    #: when the run starts (seconds since the epoch)
    at: int
    #: the fire's identity: its regular time, kept when a one-off change moves ``at``
    key: int
    #: the local run date
    day: date = field(compare=False)
    #: why it runs then (calendar rule, shift, one-off change)
    reason: str = field(compare=False)


def format_time(t: time) -> str:
    """``HH:MM``, or ``HH:MM:SS`` when the seconds are not zero."""
    return t.strftime("%H:%M:%S" if t.second else "%H:%M")


# -- validation --------------------------------------------------------------------------------------


def parse_schedule(name: str, body: Any, errors: list[FieldError]) -> Schedule | None:
    """Validate one ``[schedule.NAME]`` table; append every problem to ``errors``."""
    before = len(errors)
    found = named_table("schedule", name, body, SCHEDULE_KEYS, errors)
    if found is None:
        return None
    path, body = found
    jobnet = body.get("jobnet")
    if not is_valid_name(jobnet):
        errors.append(FieldError(f"{path}.jobnet", "missing or invalid: the name of the jobnet to start"))
    timezone = body.get("timezone", DEFAULT_TIMEZONE)
    if not valid_timezone(timezone):
        errors.append(FieldError(f"{path}.timezone", f"{timezone!r} is not an IANA time zone (like 'Asia/Tokyo')"))
    at, cron = _start_times(body, path, errors)
    calendar = body.get("calendar")
    if calendar is not None and not is_valid_name(calendar):
        errors.append(FieldError(f"{path}.calendar", "must be a calendar name"))
    on = parse_rule(body["on"], f"{path}.on", errors) if "on" in body else None
    shift = _choice(body, "shift", Shift, Shift.SKIP, path, errors)
    if shift != Shift.SKIP and calendar is None:
        errors.append(FieldError(f"{path}.shift", "shifting to an operating day needs a 'calendar'"))
    max_shift = body.get("max_shift_days", DEFAULT_MAX_SHIFT_DAYS)
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or not 1 <= max_shift <= MAX_SHIFT_DAYS:
        errors.append(FieldError(f"{path}.max_shift_days", f"must be a whole number of days in 1..{MAX_SHIFT_DAYS}"))
    catch_up = _choice(body, "catch_up", CatchUp, CatchUp.ONCE, path, errors)
    enabled = body.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(FieldError(f"{path}.enabled", "must be true or false"))
    params = body.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        errors.append(FieldError(f"{path}.params", "must be a table of strings"))
    desc = string(body, "description", path, errors) or ""
    if len(errors) != before:
        return None
    return Schedule(
        name=name,
        jobnet=str(jobnet),
        timezone=str(timezone),
        at=at,
        cron=cron,
        calendar=calendar,
        on=on,
        shift=shift,
        max_shift_days=max_shift,
        catch_up=catch_up,
        params=dict(params),
        enabled=enabled,
        description=desc,
    )


def valid_timezone(name: object) -> bool:
    """Whether ``name`` is an IANA time zone that this machine (or the tzdata package) knows."""
    if not isinstance(name, str) or not name or name.lower() in ("localtime", "posixrules"):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _start_times(body: dict[str, Any], path: str, errors: list[FieldError]) -> tuple[tuple[time, ...], Cron | None]:
    if ("at" in body) == ("cron" in body):
        errors.append(FieldError(path, "needs exactly one of 'at' (a list of clock times) or 'cron'"))
        return (), None
    if "cron" in body:
        try:
            return (), parse_cron(body["cron"])
        except CronError as exc:
            errors.append(FieldError(f"{path}.cron", str(exc)))
            return (), None
    raw = body["at"]
    if isinstance(raw, str | time):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        errors.append(FieldError(f"{path}.at", 'must be a non-empty list of clock times ("HH:MM" or "HH:MM:SS")'))
        return (), None
    times = []
    for i, value in enumerate(raw):
        t = parse_clock(value)
        if t is None:
            errors.append(FieldError(f"{path}.at[{i}]", f'{value!r} is not a clock time ("HH:MM" or "HH:MM:SS")'))
        else:
            times.append(t)
    if len(set(times)) != len(times):
        errors.append(FieldError(f"{path}.at", "lists a time more than once"))
    return tuple(sorted(set(times))), None


def parse_clock(value: Any) -> time | None:
    """A clock time from ``"HH:MM"``, ``"HH:MM:SS"`` or a TOML local time (no fractions, no zone)."""
    if isinstance(value, time):
        return value if value.tzinfo is None and not value.microsecond else None
    if not isinstance(value, str) or len(value) not in (5, 8):
        return None
    try:
        t = time.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo is None else None


def _choice(
    body: dict[str, Any], key: str, kind: type[Shift] | type[CatchUp], default: Any, path: str, errors: list[FieldError]
) -> Any:
    value = body.get(key, default)
    if not isinstance(value, str) or value not in kind._value2member_map_:
        errors.append(FieldError(f"{path}.{key}", "must be one of " + ", ".join(str(v) for v in kind)))
        return default
    return kind(value)


# -- fire times ----------------------------------------------------------------------------------------


def fires(
    schedule: Schedule,
    calendars: CalendarSet,
    start: int,
    changes: Mapping[int, int] | None = None,
    horizon_days: int = HORIZON_DAYS,
) -> Iterator[Fire]:
    """Every fire of ``schedule`` at or after ``start``, in order of time (then key).

    Args:
        schedule: the schedule.
        calendars: resolves the calendars it names.
        start: the earliest fire time wanted (seconds since the epoch).
        changes: one-off changes, ``{regular fire time: new fire time}``.
        horizon_days: how many days ahead to look before giving up.
    """
    regular = _regular(schedule, calendars, start, horizon_days)
    if not changes:
        yield from regular
        return
    zone = schedule.zone
    moved = [
        Fire(new, key, datetime.fromtimestamp(new, zone).date(), f"one-off change from {local_text(key, zone)}")
        for key, new in changes.items()
        if new >= start
    ]
    kept = (f for f in regular if f.key not in changes)
    yield from heapq.merge(kept, sorted(moved))


def next_fire(
    schedule: Schedule, calendars: CalendarSet, after: float, changes: Mapping[int, int] | None = None
) -> Fire | None:
    """The first fire strictly after ``after`` (the next fire from now, or from an actual fire time)."""
    return next(fires(schedule, calendars, int(after) + 1, changes), None)


def fire_after(
    schedule: Schedule, calendars: CalendarSet, at: int, key: int, changes: Mapping[int, int] | None = None
) -> Fire | None:
    """The fire that follows the fire ``(at, key)`` in order."""
    for fire in fires(schedule, calendars, at, changes):
        if (fire.at, fire.key) > (at, key):
            return fire
    return None


def local_text(ts: int, zone: tzinfo) -> str:
    """A fire time as local ``YYYY-MM-DD HH:MM[:SS]`` with its UTC offset (``+09:00``)."""
    dt = datetime.fromtimestamp(ts, zone)
    offset = dt.strftime("%z")
    return f"{dt:%Y-%m-%d} {format_time(dt.time())} {offset[:3]}:{offset[3:]}"


def parse_local(text: str, zone: tzinfo) -> int:
    """A moment written as ``YYYY-MM-DD HH:MM[:SS]`` in ``zone`` (or with an explicit offset), in epoch seconds.

    Without an offset, a time in a DST gap or repeat is read as a schedule's start time is (see ``_resolve``:
    the first of two repeated times); write the offset (``2027-11-07 01:30-05:00``) to name the second.

    Raises:
        ValueError: it is not such a moment.
    """
    dt = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    if dt.tzinfo is not None:
        return int(dt.timestamp())
    day, clock = dt.date(), dt.time().replace(microsecond=0)
    return _resolve(day, clock, zone, elapsed=False)[0]


def _regular(schedule: Schedule, calendars: CalendarSet, start: int, horizon_days: int) -> Iterator[Fire]:
    zone = schedule.zone
    first = datetime.fromtimestamp(start, UTC).astimezone(zone).date() - timedelta(days=1)
    last = min(first + timedelta(days=horizon_days), MAX_DATE - timedelta(days=MAX_SHIFT_DAYS + 1))
    day = first
    while day <= last:
        reasons = _sources(schedule, calendars, day)
        if reasons:
            reason = "; ".join(reasons)
            for at in _instants(schedule, zone, day, start):
                yield Fire(at, at, day, reason)
        day += timedelta(days=1)


def _candidate(schedule: Schedule, calendars: CalendarSet, day: date) -> bool:
    """Whether the schedule's own day rules (``on``, cron's day fields) pick ``day``."""
    if schedule.on is not None and not calendars.matches(schedule.on, day):
        return False
    return schedule.cron is None or schedule.cron.matches_date(day)


def _sources(schedule: Schedule, calendars: CalendarSet, run_day: date) -> list[str]:
    """Why the schedule runs on ``run_day``: the scheduled days whose runs land on it (empty: it does not run)."""
    picked = schedule.on.describe() if schedule.on is not None else ""
    cal = schedule.calendar
    if cal is None:
        return [picked or "every day"] if _candidate(schedule, calendars, run_day) else []
    operating, why = calendars.explain(cal, run_day)
    if not operating:
        return []
    out = []
    if _candidate(schedule, calendars, run_day):
        out.append(f"{picked + ', ' if picked else ''}{cal}: {why}")
    if schedule.shift != Shift.SKIP:
        step = 1 if schedule.shift == Shift.BEFORE else -1
        # A fire on a non-operating day moves to the nearest operating day in the shift's direction: scan
        # away from run_day across non-operating days only, for at most max_shift_days.
        for k in range(1, schedule.max_shift_days + 1):
            other = run_day + timedelta(days=k * step)
            is_operating, other_why = calendars.explain(cal, other)
            if is_operating:
                break
            if _candidate(schedule, calendars, other):
                what = f"{other} ({picked})" if picked else str(other)
                way = "back" if schedule.shift == Shift.BEFORE else "forward"
                out.append(f"{what} moved {way}: not an operating day of {cal} ({other_why})")
    return out


def _times_from(schedule: Schedule, start: time) -> Iterator[time]:
    if schedule.cron is not None:
        return schedule.cron.times_from(start)
    return iter(schedule.at[bisect_left(schedule.at, start) :])


def _instants(schedule: Schedule, zone: tzinfo, day: date, start: int) -> Iterator[int]:
    """The fire instants of one local day, at or after ``start``, in order, without repeats."""
    base = (day.toordinal() - _EPOCH_ORDINAL) * _DAY_S
    midnight = datetime.combine(day, time())
    offset = zone.utcoffset(midnight)
    if offset is not None and offset == zone.utcoffset(midnight + timedelta(days=1)) == zone.utcoffset(
        midnight.replace(fold=1)
    ):
        # No DST change inside this day: one offset for all of it, so walk the times lazily from start
        # (a cron that fires every second must not cost 86,400 conversions to find its next fire).
        off = int(offset.total_seconds())
        from_s = max(0, start + off - base)
        if from_s >= _DAY_S:
            return
        first = time(from_s // 3600, from_s % 3600 // 60, from_s % 60)
        for t in _times_from(schedule, first):
            yield base + t.hour * 3600 + t.minute * 60 + t.second - off
        return
    # A day with a DST change: resolve every time on its own, then order (a repeated hour interleaves).
    elapsed = schedule.follows_elapsed_time
    found = {ts for t in _times_from(schedule, time()) for ts in _resolve(day, t, zone, elapsed) if ts >= start}
    yield from sorted(found)


def _resolve(day: date, clock: time, zone: tzinfo, elapsed: bool) -> list[int]:
    """The instants of a local wall-clock time.

    - An ordinary time: its one instant.
    - A time in a gap (the hour skipped when clocks go forward): a clock-time schedule runs it shifted forward
      by the gap (02:30 on a spring-forward day runs at 03:30 new time, the instant 02:30 old time names); an
      elapsed-time cron (every hour) skips it, since those instants are its next hour's fires anyway.
    - A time in a repeat (the hour lived twice when clocks go back): a clock-time schedule runs it once, at its
      first occurrence; an elapsed-time cron runs both.
    """
    naive = datetime.combine(day, clock)
    seconds = (day.toordinal() - _EPOCH_ORDINAL) * _DAY_S + clock.hour * 3600 + clock.minute * 60 + clock.second
    first = zone.utcoffset(naive)
    second = zone.utcoffset(naive.replace(fold=1))
    assert first is not None and second is not None
    one = seconds - int(first.total_seconds())
    if first == second:
        return [one]
    if first > second:  # repeated: fold=0 is the first pass (the earlier, larger offset)
        return [one, seconds - int(second.total_seconds())] if elapsed else [one]
    return [] if elapsed else [one]  # gap: fold=0 reads it with the offset before the change
