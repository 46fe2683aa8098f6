"""Cron expressions: fields, names, steps, the day-field rule, and the errors that name their field."""

from datetime import date, time

import pytest

from schemas.cron import CronError, parse_cron


def _times(expr: str, start: time = time(), n: int = 5) -> list[str]:
    out = []
    for t in parse_cron(expr).times_from(start):
        out.append(t.isoformat())
        if len(out) == n:
            break
    return out


def test_five_fields_fire_at_second_zero_and_six_fields_take_seconds_first() -> None:
    assert _times("30 9 * * *") == ["09:30:00"]
    assert _times("*/20 0 0 * * *") == ["00:00:00", "00:00:20", "00:00:40"]
    assert _times("15 */30 9-10 * * *") == ["09:00:15", "09:30:15", "10:00:15", "10:30:15"]


def test_times_from_starts_at_the_given_time_inclusive() -> None:
    assert _times("*/15 * * * *", time(9, 15), 3) == ["09:15:00", "09:30:00", "09:45:00"]
    assert _times("*/15 * * * *", time(9, 16), 2) == ["09:30:00", "09:45:00"]
    assert _times("0 0 * * *", time(0, 0, 1)) == []


def test_lists_ranges_steps_and_names() -> None:
    cron = parse_cron("0 8,12 1-7 jan-mar/2 mon-fri")
    assert cron.hours == (8, 12)
    assert cron.months == frozenset({1, 3})
    assert cron.weekdays == frozenset(range(5))
    assert parse_cron("0 0 * * 0").weekdays == parse_cron("0 0 * * 7").weekdays == frozenset({6})  # Sunday
    assert parse_cron("0 0 10/10 * *").days == frozenset({10, 20, 30})
    assert parse_cron("@hourly").minutes == (0,) and parse_cron("@hourly").every_hour
    assert not parse_cron("@daily").every_hour


def test_both_day_fields_restricted_match_either_day() -> None:
    cron = parse_cron("0 9 1 * mon")
    assert cron.matches_date(date(2027, 3, 1))  # the 1st (a Monday too)
    assert cron.matches_date(date(2027, 3, 8))  # a Monday
    assert cron.matches_date(date(2027, 5, 1))  # the 1st, a Saturday
    assert not cron.matches_date(date(2027, 3, 9))
    only_mondays = parse_cron("0 9 * * mon")
    assert only_mondays.matches_date(date(2027, 3, 8)) and not only_mondays.matches_date(date(2027, 5, 1))
    leap = parse_cron("0 0 29 2 *")
    assert leap.matches_date(date(2028, 2, 29)) and not leap.matches_date(date(2027, 3, 1))


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "needs 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("0 24 * * *", "hour: 24 is outside 0-23"),
        ("0 0 0 * *", "day of month: 0 is outside 1-31"),
        ("0 0 * 13 *", "month: 13 is outside 1-12"),
        ("0 0 * * 8", "day of week: 8 is outside 0-7"),
        ("0 0 * foo *", "month: 'foo' is not a number or a name"),
        ("*/0 * * * *", "minute: step '0'"),
        ("0 5-1 * * *", "hour: range '5-1' runs backwards"),
        ("61 0 0 * * *", "second: 61"),
    ],
)
def test_errors_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        parse_cron(expr)
