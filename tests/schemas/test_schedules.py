"""Schedules' fire times: shift rules, DST gaps and repeats in two zones, month ends, changes, validation."""

from datetime import date, datetime
from itertools import islice, pairwise, takewhile
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from schemas.calendars import CalendarSet
from schemas.definitions import DefinitionError, parse_definitions
from schemas.schedules import Schedule, fire_after, fires, local_text, next_fire, parse_local

NY, BERLIN = "America/New_York", "Europe/Berlin"
WEEKDAYS = {"include": [{"weekdays": ["mon", "tue", "wed", "thu", "fri"]}]}


def _load(schedule: dict[str, Any], **calendars: dict[str, Any]) -> tuple[Schedule, CalendarSet]:
    defs = parse_definitions(
        {
            "jobnet": {"n": {"job": [{"id": "a", "cmd": ["true"], "agent": "h"}]}},
            "calendar": calendars,
            "schedule": {"s": {"jobnet": "n", **schedule}},
        }
    )
    return defs.schedules["s"], CalendarSet(defs.calendars)


def _ts(text: str, zone: str = "UTC") -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp())


def _local(schedule: dict[str, Any], start: str, n: int, **calendars: dict[str, Any]) -> list[str]:
    sched, cs = _load(schedule, **calendars)
    return [local_text(f.at, sched.zone) for f in islice(fires(sched, cs, _ts(start, sched.timezone)), n)]


# -- shift rules ---------------------------------------------------------------------------------------

MONTHLY = {"at": ["09:00"], "calendar": "business", "on": {"days": [1]}}


def test_shift_skip_drops_a_fire_on_a_non_operating_day() -> None:
    # 2027-05-01 is a Saturday, 2027-08-01 a Sunday.
    got = _local({**MONTHLY, "shift": "skip"}, "2027-04-15", 4, business=WEEKDAYS)
    assert got == [
        "2027-06-01 09:00 +00:00",
        "2027-07-01 09:00 +00:00",
        "2027-09-01 09:00 +00:00",
        "2027-10-01 09:00 +00:00",
    ]


def test_shift_before_runs_on_the_operating_day_before() -> None:
    sched, cs = _load({**MONTHLY, "shift": "before"}, business=WEEKDAYS)
    [may, june] = islice(fires(sched, cs, _ts("2027-04-15")), 2)
    assert local_text(may.at, sched.zone) == "2027-04-30 09:00 +00:00"
    assert may.reason.startswith("2027-05-01 (day 1) moved back: not an operating day of business")
    assert local_text(june.at, sched.zone) == "2027-06-01 09:00 +00:00"


def test_shift_after_runs_on_the_operating_day_after() -> None:
    got = _local({**MONTHLY, "shift": "after"}, "2027-04-15", 2, business=WEEKDAYS)
    assert got == ["2027-05-03 09:00 +00:00", "2027-06-01 09:00 +00:00"]


def test_max_shift_days_bounds_the_shift() -> None:
    # A ten-day closure from 2027-05-01 to 2027-05-10: the fire of the 1st cannot reach an operating day after it
    # within 5 days, so it does not run; within 10 days it runs on the 11th.
    closed = {"include": [{}], "exclude": [{"from": "2027-05-01", "to": "2027-05-10"}]}
    short = _local({**MONTHLY, "shift": "after", "max_shift_days": 5}, "2027-04-15", 1, business=closed)
    long = _local({**MONTHLY, "shift": "after", "max_shift_days": 10}, "2027-04-15", 1, business=closed)
    assert short == ["2027-06-01 09:00 +00:00"]
    assert long == ["2027-05-11 09:00 +00:00"]


def test_a_shifted_fire_and_a_regular_one_on_the_same_day_run_once() -> None:
    # Every day at 09:00 on a weekday calendar, shifting after: Saturday's and Sunday's fires land on Monday,
    # at the same instant as Monday's own: one run.
    sched, cs = _load({"at": ["09:00"], "calendar": "business", "shift": "after"}, business=WEEKDAYS)
    got = list(islice(fires(sched, cs, _ts("2027-05-07 10:00")), 2))
    assert [local_text(f.at, sched.zone) for f in got] == ["2027-05-10 09:00 +00:00", "2027-05-11 09:00 +00:00"]
    assert "2027-05-08 moved forward" in got[0].reason and "2027-05-09 moved forward" in got[0].reason


def test_no_calendar_means_every_day_and_cron_day_fields_apply() -> None:
    assert _local({"cron": "0 30 6 * * sat"}, "2027-05-01", 2) == ["2027-05-01 06:30 +00:00", "2027-05-08 06:30 +00:00"]


# -- month ends, last business day, n-th weekday, leap days ---------------------------------------------


def test_last_day_and_last_business_day_of_every_month() -> None:
    assert _local({"at": ["23:00"], "on": {"days": -1}}, "2028-01-15", 3) == [
        "2028-01-31 23:00 +00:00",
        "2028-02-29 23:00 +00:00",
        "2028-03-31 23:00 +00:00",
    ]
    month_end = {"include": [{"business_days": -1}]}
    assert _local({"at": ["18:00"], "calendar": "me"}, "2027-07-01", 3, me=month_end) == [
        "2027-07-30 18:00 +00:00",
        "2027-08-31 18:00 +00:00",
        "2027-09-30 18:00 +00:00",
    ]


def test_nth_weekday() -> None:
    got = _local({"at": ["10:00"], "on": {"weekdays": ["tue"], "nth": [2]}}, "2027-01-01", 3)
    assert got == ["2027-01-12 10:00 +00:00", "2027-02-09 10:00 +00:00", "2027-03-09 10:00 +00:00"]


def test_a_leap_day_schedule_waits_for_the_next_leap_year() -> None:
    sched, cs = _load({"cron": "0 0 12 29 2 *"})
    fire = next_fire(sched, cs, _ts("2028-03-01"))
    assert fire is not None and local_text(fire.at, sched.zone) == "2032-02-29 12:00 +00:00"


def test_a_schedule_that_never_fires_again_has_no_next_fire() -> None:
    sched, cs = _load({"at": ["09:00"], "on": {"to": "2027-01-01"}})
    assert next_fire(sched, cs, _ts("2027-01-02")) is None


# -- DST -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "spring", "fall"),
    [(NY, "2027-03-14", "2027-11-07"), (BERLIN, "2027-03-28", "2027-10-31")],
)
def test_clock_times_in_a_dst_gap_run_once_an_hour_late_and_in_a_repeat_run_once_the_first_time(
    zone: str, spring: str, fall: str
) -> None:
    # New York changes at 02:00 (spring to 03:00, fall back to 01:00); Berlin at 02:00 / 03:00.
    gap, repeat = ("02:30", "01:30") if zone == NY else ("02:30", "02:30")
    sched, cs = _load({"at": [gap] if gap == repeat else [gap, repeat], "timezone": zone})
    springs = [
        f for f in islice(fires(sched, cs, _ts(f"{spring} 00:00", zone)), 3) if f.day == date.fromisoformat(spring)
    ]
    falls = [f for f in islice(fires(sched, cs, _ts(f"{fall} 00:00", zone)), 3) if f.day == date.fromisoformat(fall)]
    spring_gap = next(f for f in springs if local_text(f.at, sched.zone).startswith(f"{spring} 03:30"))
    # 02:30 does not exist: it runs at 03:30 new time, the instant 02:30 old time names.
    assert spring_gap.at == _ts(f"{spring} 02:30", zone)  # fold=0: the offset before the change
    assert (spring_gap.at - _ts(f"{spring} 00:00", zone)) == int(2.5 * 3600)  # 2 h 30 min after midnight
    # The repeated time runs once, at its first occurrence (summer time).
    repeated = [f for f in falls if local_text(f.at, sched.zone)[11:16] == repeat]
    assert len(repeated) == 1
    assert local_text(repeated[0].at, sched.zone) == f"{fall} {repeat} " + ("-04:00" if zone == NY else "+02:00")


@pytest.mark.parametrize(
    ("zone", "spring", "fall"), [(NY, "2027-03-14", "2027-11-07"), (BERLIN, "2027-03-28", "2027-10-31")]
)
def test_an_hourly_cron_follows_elapsed_time_across_dst(zone: str, spring: str, fall: str) -> None:
    sched, cs = _load({"cron": "0 */30 * * * *", "timezone": zone})
    start = _ts(f"{spring} 00:00", zone)
    spring_day = [f.at for f in takewhile(lambda f: f.at < _ts(f"{spring} 06:00", zone), fires(sched, cs, start))]
    # 23 hours that day: every half hour of real time, none skipped, none doubled.
    assert [b - a for a, b in pairwise(spring_day)] == [1800] * (len(spring_day) - 1)
    assert len(spring_day) == 10  # 00:00 .. 06:00 local is 5 real hours
    start = _ts(f"{fall} 00:00", zone)
    fall_day = [f.at for f in takewhile(lambda f: f.at < _ts(f"{fall} 06:00", zone), fires(sched, cs, start))]
    assert [b - a for a, b in pairwise(fall_day)] == [1800] * (len(fall_day) - 1)
    assert len(fall_day) == 14  # 00:00 .. 06:00 local is 7 real hours: the repeated hour runs twice


def test_a_daily_clock_time_keeps_to_the_wall_clock_across_dst() -> None:
    got = _local({"at": ["09:00"], "timezone": NY}, "2027-03-13", 3)
    assert got == ["2027-03-13 09:00 -05:00", "2027-03-14 09:00 -04:00", "2027-03-15 09:00 -04:00"]


def test_parse_local_reads_gaps_and_repeats_like_fires_do_and_takes_an_offset() -> None:
    zone = ZoneInfo(NY)
    assert parse_local("2027-11-07 01:30", zone) == _ts("2027-11-07 05:30")  # first pass, EDT
    assert parse_local("2027-11-07 01:30-05:00", zone) == _ts("2027-11-07 06:30")  # second pass, named
    assert parse_local("2027-03-14T02:30", zone) == _ts("2027-03-14 07:30")
    with pytest.raises(ValueError):
        parse_local("tomorrow", zone)


# -- one-off changes -----------------------------------------------------------------------------------


def test_a_one_off_change_moves_one_fire_and_keeps_its_key() -> None:
    sched, cs = _load({"at": ["09:00"]})
    original, new = _ts("2027-05-04 09:00"), _ts("2027-05-04 07:00")
    got = list(islice(fires(sched, cs, _ts("2027-05-03 00:00"), {original: new}), 3))
    assert [(f.at, f.key) for f in got] == [
        (_ts("2027-05-03 09:00"), _ts("2027-05-03 09:00")),
        (new, original),
        (_ts("2027-05-05 09:00"), _ts("2027-05-05 09:00")),
    ]
    assert got[1].reason == "one-off change from 2027-05-04 09:00 +00:00"
    later = fire_after(sched, cs, new, original, {original: new})
    assert later is not None and later.at == _ts("2027-05-05 09:00")


def test_a_fire_moved_past_the_next_one_keeps_order_by_time() -> None:
    sched, cs = _load({"at": ["09:00"]})
    original, new = _ts("2027-05-04 09:00"), _ts("2027-05-05 12:00")
    got = [f.at for f in islice(fires(sched, cs, _ts("2027-05-04 00:00"), {original: new}), 2)]
    assert got == [_ts("2027-05-05 09:00"), new]


# -- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "path", "message"),
    [
        ({}, "schedule.s", "needs exactly one of 'at'"),
        ({"at": ["09:00"], "cron": "* * * * *"}, "schedule.s", "needs exactly one of 'at'"),
        ({"at": ["9:00"]}, "schedule.s.at[0]", "not a clock time"),
        ({"at": ["24:00"]}, "schedule.s.at[0]", "not a clock time"),
        ({"at": ["09:00", "09:00"]}, "schedule.s.at", "more than once"),
        ({"cron": "61 * * * *"}, "schedule.s.cron", "minute: 61"),
        ({"at": "09:00", "timezone": "Mars/Olympus"}, "schedule.s.timezone", "not an IANA time zone"),
        ({"at": "09:00", "timezone": "../etc/passwd"}, "schedule.s.timezone", "not an IANA time zone"),
        ({"at": "09:00", "shift": "before"}, "schedule.s.shift", "needs a 'calendar'"),
        ({"at": "09:00", "shift": "later"}, "schedule.s.shift", "before, after, skip"),
        ({"at": "09:00", "catch_up": "twice"}, "schedule.s.catch_up", "once, all, skip"),
        ({"at": "09:00", "max_shift_days": 0}, "schedule.s.max_shift_days", "1..31"),
        ({"at": "09:00", "enabled": "yes"}, "schedule.s.enabled", "true or false"),
        ({"at": "09:00", "params": {"a": 1}}, "schedule.s.params", "table of strings"),
        ({"at": "09:00", "on": {"days": [0]}}, "schedule.s.on.days", "1..31"),
        ({"at": "09:00", "calendar": "ghost"}, "schedule.s", "names unknown calendar 'ghost'"),
        ({"at": "09:00", "jobnet": "ghost"}, "schedule.s.jobnet", "unknown jobnet 'ghost'"),
        ({"at": "09:00", "jobnet": "a b"}, "schedule.s.jobnet", "missing or invalid"),
        ({"at": "09:00", "when": "now"}, "schedule.s.when", "unknown key"),
    ],
)
def test_schedule_errors_are_named_by_path(schedule: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        _load(schedule)
    found = [e for e in info.value.errors if e.path == path]
    assert found and message in found[0].message, info.value.errors


def test_round_trip_through_the_canonical_map() -> None:
    sched, _ = _load(
        {
            "description": "d",
            "timezone": NY,
            "cron": "0 30 2 * * mon-fri",
            "calendar": "business",
            "on": {"days": [25]},
            "shift": "before",
            "max_shift_days": 3,
            "catch_up": "all",
            "enabled": False,
            "params": {"k": "v"},
        },
        business=WEEKDAYS,
    )
    again, _ = _load(sched.to_dict(), business=WEEKDAYS)
    assert again == sched
    minimal, _ = _load({"at": "9:30:15".zfill(8)})
    assert minimal.to_dict() == {"jobnet": "n", "at": ["09:30:15"]}
