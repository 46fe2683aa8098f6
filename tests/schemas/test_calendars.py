"""Calendars: one test per rule and combination, the reasons they give, validation by path, files of dates."""

from datetime import date, timedelta
from typing import Any

import pytest

from schemas.calendars import CalendarSet, parse_date_lines
from schemas.definitions import DefinitionError, parse_definitions


def _set(**calendars: dict[str, Any]) -> CalendarSet:
    return CalendarSet(parse_definitions({"calendar": calendars}).calendars)


def _days(calset: CalendarSet, name: str, year: int, month: int) -> list[int]:
    return sorted(calset.operating_days(name, year, month))


def test_explicit_dates() -> None:
    cs = _set(c={"dates": ["2027-01-04", "2028-02-29"]})
    assert cs.is_operating("c", date(2027, 1, 4)) and cs.is_operating("c", date(2028, 2, 29))
    assert not cs.is_operating("c", date(2027, 1, 5))
    assert cs.explain("c", date(2027, 1, 4)) == (True, "listed in dates")


def test_weekdays() -> None:
    cs = _set(c={"include": [{"weekdays": ["mon", "wed"]}]})
    assert _days(cs, "c", 2027, 3) == [1, 3, 8, 10, 15, 17, 22, 24, 29, 31]


def test_nth_weekday_of_the_month_and_the_last() -> None:
    cs = _set(c={"include": [{"weekdays": ["mon"], "nth": [2]}, {"weekdays": "fri", "nth": -1}]})
    assert _days(cs, "c", 2027, 3) == [8, 26]  # second Monday, last Friday
    assert _days(cs, "c", 2027, 4) == [12, 30]
    fifth = _set(c={"include": [{"weekdays": ["mon"], "nth": 5}]})
    assert _days(fifth, "c", 2027, 3) == [29] and _days(fifth, "c", 2027, 4) == []


def test_day_of_month_including_the_last_day_across_month_lengths_and_leap_years() -> None:
    cs = _set(c={"include": [{"days": [1, -1]}]})
    assert _days(cs, "c", 2027, 2) == [1, 28]
    assert _days(cs, "c", 2028, 2) == [1, 29]
    assert _days(cs, "c", 2027, 4) == [1, 30]
    thirty_first = _set(c={"include": [{"days": 31}]})
    assert [m for m in range(1, 13) if thirty_first.operating_days("c", 2027, m)] == [1, 3, 5, 7, 8, 10, 12]
    second_last = _set(c={"include": [{"days": -2}]})
    assert _days(second_last, "c", 2028, 2) == [28]


def test_leap_day_rule_fires_only_in_leap_years() -> None:
    cs = _set(c={"include": [{"months": 2, "days": 29}]})
    assert [y for y in range(2024, 2033) if cs.operating_days("c", y, 2)] == [2024, 2028, 2032]


def test_last_business_day_of_the_month_of_a_calendar_and_of_plain_weekdays() -> None:
    cs = _set(
        holidays={"dates": ["2027-04-30"]},
        business={
            "include": [{"weekdays": ["mon", "tue", "wed", "thu", "fri"]}],
            "exclude": [{"calendar": "holidays"}],
        },
        month_end={"include": [{"business_days": -1, "of": "business"}]},
        first_weekday={"include": [{"business_days": [1]}]},
    )
    assert _days(cs, "month_end", 2027, 4) == [29]  # the 30th is a holiday
    assert _days(cs, "month_end", 2027, 7) == [30]  # the 31st is a Saturday
    assert _days(cs, "first_weekday", 2027, 5) == [3]  # May 1st is a Saturday
    ok, why = cs.explain("month_end", date(2027, 4, 29))
    assert ok and why == "include[0]: last business day of business"


def test_months_and_ranges() -> None:
    cs = _set(c={"include": [{"months": [4, 5], "weekdays": ["mon"]}, {"from": "2027-12-24", "to": "2027-12-26"}]})
    assert _days(cs, "c", 2027, 4) == [5, 12, 19, 26]
    assert _days(cs, "c", 2027, 6) == []
    assert _days(cs, "c", 2027, 12) == [24, 25, 26]
    open_ended = _set(c={"include": [{"from": "2027-06-29"}]})
    assert _days(open_ended, "c", 2027, 6) == [29, 30]


def test_a_base_calendar_minus_a_holiday_calendar_and_the_reason() -> None:
    cs = _set(
        holidays={"dates": ["2027-05-03", "2027-05-04", "2027-05-05"]},
        business={
            "include": [{"weekdays": ["mon", "tue", "wed", "thu", "fri"]}],
            "exclude": [{"calendar": "holidays"}, {"months": 12, "days": 31}],
        },
        weekend_too={"include": [{"calendar": "business"}, {"weekdays": ["sat"]}]},
    )
    assert _days(cs, "business", 2027, 5)[:3] == [6, 7, 10]
    assert cs.explain("business", date(2027, 5, 3)) == (False, "exclude[0]: calendar holidays")
    assert cs.explain("business", date(2027, 12, 31)) == (False, "exclude[1]: month 12 and day 31")
    assert cs.explain("business", date(2027, 5, 8)) == (False, "no include rule matches")
    assert cs.explain("weekend_too", date(2027, 5, 8)) == (True, "include[1]: sat")
    assert cs.next_operating("business", date(2027, 5, 2), 1, 7) == date(2027, 5, 6)
    assert cs.next_operating("business", date(2027, 5, 6), -1, 3) is None


def test_an_empty_rule_matches_every_day_and_an_empty_calendar_none() -> None:
    cs = _set(every={"include": [{}]}, never={})
    assert len(_days(cs, "every", 2027, 2)) == 28 and _days(cs, "never", 2027, 2) == []


@pytest.mark.parametrize(
    ("calendars", "path", "message"),
    [
        ({"c": {"dates": ["2027-02-30"]}}, "calendar.c.dates[0]", "is not a date"),
        ({"c": {"dates": "2027-01-01"}}, "calendar.c.dates", "must be a list of dates"),
        ({"c": {"include": [{"weekdays": ["monday"]}]}}, "calendar.c.include[0].weekdays", "mon, tue"),
        ({"c": {"include": [{"nth": [2]}]}}, "calendar.c.include[0].nth", "needs 'weekdays'"),
        ({"c": {"include": [{"weekdays": ["mon"], "nth": [0]}]}}, "calendar.c.include[0].nth", "1..5 or -5..-1"),
        ({"c": {"include": [{"days": [32]}]}}, "calendar.c.include[0].days", "1..31 or -31..-1"),
        ({"c": {"include": [{"months": [0]}]}}, "calendar.c.include[0].months", "1..12"),
        ({"c": {"include": [{"of": "x"}]}}, "calendar.c.include[0].of", "only a 'business_days' rule"),
        ({"c": {"exclude": [{"from": "2027-02-01", "to": "2027-01-01"}]}}, "calendar.c.exclude[0]", "after 'to'"),
        ({"c": {"include": [{"day": [1]}]}}, "calendar.c.include[0].day", "unknown key"),
        ({"c": {"include": {"days": [1]}}}, "calendar.c.include", "must be a list of rule tables"),
        ({"c": {"include": [{"calendar": "ghost"}]}}, "calendar.c", "names unknown calendar 'ghost'"),
        ({"c": {"dates_file": "x.txt"}}, "calendar.c.dates_file", "read by the definition loader"),
        ({"bad name": {}}, 'calendar["bad name"]', "invalid name"),
    ],
)
def test_calendar_errors_are_named_by_path(calendars: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definitions({"calendar": calendars})
    found = [e for e in info.value.errors if e.path == path]
    assert found and message in found[0].message, info.value.errors


def test_calendars_that_name_each_other_in_a_cycle_are_refused() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definitions(
            {"calendar": {"a": {"include": [{"calendar": "b"}]}, "b": {"exclude": [{"business_days": 1, "of": "a"}]}}}
        )
    assert [e.message for e in info.value.errors] == ["calendars name each other in a cycle: a -> b -> a"]


def test_round_trip_through_the_canonical_map() -> None:
    raw = {
        "c": {
            "description": "d",
            "dates": ["2027-01-05", "2027-01-04"],
            "include": [{"weekdays": ["fri", "mon"], "nth": [1, -1], "months": [1], "from": "2027-01-01"}],
            "exclude": [{"business_days": [-1], "of": "c2", "days": [-1], "to": "2030-01-01"}],
        },
        "c2": {"include": [{"calendar": "c3"}]},
        "c3": {},
    }
    defs = parse_definitions({"calendar": raw})
    assert parse_definitions(defs.to_dict()) == defs
    assert defs.to_dict()["calendar"]["c"]["dates"] == ["2027-01-04", "2027-01-05"]


def test_a_plain_file_of_dates() -> None:
    text = "# Japanese holidays 2027\n2027-01-01 New Year\n\n2027-01-11, Coming of Age Day\n  2027-02-11\nnot-a-date\n"
    dates, bad = parse_date_lines(text)
    assert dates == [date(2027, 1, 1), date(2027, 1, 11), date(2027, 2, 11)]
    assert bad == [(6, "'not-a-date' is not a date (YYYY-MM-DD)")]


def test_a_year_of_every_day_evaluates_quickly_enough_to_plan_from() -> None:
    cs = _set(
        holidays={"dates": [str(date(2027, 1, 1) + timedelta(days=7 * i)) for i in range(52)]},
        business={
            "include": [{"weekdays": ["mon", "tue", "wed", "thu", "fri"]}],
            "exclude": [{"calendar": "holidays"}],
        },
    )
    assert sum(len(m) for m in cs.year_view("business", 2027)) == 261 - 52
