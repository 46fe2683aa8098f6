"""Operating-day calendars: the model, its validation by path, and the evaluation of days (pure data, no I/O).

A calendar says which days are operating days::

    [calendar.business]
    include = [{ weekdays = ["mon", "tue", "wed", "thu", "fri"] }]
    exclude = [{ calendar = "jp-holidays" }]

A day is an operating day when it is listed in ``dates`` or matches an ``include`` rule, and matches no
``exclude`` rule. A rule is a table of conditions; a day matches the rule when it meets every condition the
rule sets (see ``RULE_KEYS`` and docs/definitions.md).
"""

import calendar as _stdcal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from schemas.fields import FieldError, check_keys, named_table, string
from schemas.names import is_valid_name

#: Weekday names in Python's order (Monday is 0).
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Weekdays that count as business days for a ``business_days`` rule that names no calendar.
DEFAULT_BUSINESS_WEEKDAYS = frozenset(range(5))
CALENDAR_KEYS = frozenset({"description", "dates", "dates_file", "include", "exclude"})
RULE_KEYS = frozenset({"dates", "weekdays", "nth", "days", "months", "business_days", "of", "calendar", "from", "to"})
#: Earliest and latest date a calendar may name.
MIN_DATE, MAX_DATE = date(1900, 1, 1), date(9999, 12, 31)


@dataclass(frozen=True, slots=True)
class Rule:
    """Conditions on a day; a day matches when it meets every condition that is set (not None)."""

    dates: tuple[date, ...] | None = None
    weekdays: tuple[int, ...] | None = None
    #: with ``weekdays``: which occurrence in the month (1 first .. 5, -1 last .. -5)
    nth: tuple[int, ...] | None = None
    #: day of the month: 1 .. 31, or -1 (the last day) .. -31
    days: tuple[int, ...] | None = None
    months: tuple[int, ...] | None = None
    #: the n-th operating day of the month of calendar ``of`` (Monday to Friday without one); -1 is the last
    business_days: tuple[int, ...] | None = None
    of: str | None = None
    #: the operating days of another calendar
    calendar: str | None = None
    start: date | None = None
    end: date | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this rule, in the input format."""
        out: dict[str, Any] = {}
        if self.dates is not None:
            out["dates"] = [d.isoformat() for d in self.dates]
        if self.weekdays is not None:
            out["weekdays"] = [WEEKDAY_NAMES[w] for w in self.weekdays]
        for key in ("nth", "days", "months", "business_days"):
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        if self.of is not None:
            out["of"] = self.of
        if self.calendar is not None:
            out["calendar"] = self.calendar
        if self.start is not None:
            out["from"] = self.start.isoformat()
        if self.end is not None:
            out["to"] = self.end.isoformat()
        return out

    def describe(self) -> str:
        """A short human description, for planning views and ``calendar check``."""
        parts = []
        if self.dates is not None:
            parts.append("listed date" if len(self.dates) != 1 else f"date {self.dates[0]}")
        if self.weekdays is not None:
            days = ",".join(WEEKDAY_NAMES[w] for w in self.weekdays)
            parts.append(f"{_ordinals(self.nth)} {days}" if self.nth else days)
        if self.months is not None:
            parts.append("month " + ",".join(str(m) for m in self.months))
        if self.days is not None:
            parts.append("day " + ",".join("last" if d == -1 else str(d) for d in self.days))
        if self.business_days is not None:
            of = self.of or "mon-fri"
            parts.append(f"{_ordinals(self.business_days)} business day of {of}")
        if self.calendar is not None:
            parts.append(f"calendar {self.calendar}")
        if self.start is not None or self.end is not None:
            parts.append(f"from {self.start or '...'} to {self.end or '...'}")
        return " and ".join(parts) or "every day"

    def references(self) -> set[str]:
        """The calendars this rule reads."""
        return {c for c in (self.of, self.calendar) if c is not None}


@dataclass(frozen=True, slots=True)
class Calendar:
    """Named operating days."""

    name: str
    dates: tuple[date, ...] = ()
    include: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this calendar, in the input format."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.dates:
            out["dates"] = [d.isoformat() for d in self.dates]
        if self.include:
            out["include"] = [r.to_dict() for r in self.include]
        if self.exclude:
            out["exclude"] = [r.to_dict() for r in self.exclude]
        return out

    def references(self) -> set[str]:
        """The calendars this calendar reads."""
        return {name for rule in (*self.include, *self.exclude) for name in rule.references()}


# -- validation --------------------------------------------------------------------------------------


def parse_calendar(name: str, body: Any, errors: list[FieldError]) -> Calendar | None:
    """Validate one ``[calendar.NAME]`` table; append every problem to ``errors``."""
    before = len(errors)
    found = named_table("calendar", name, body, CALENDAR_KEYS, errors)
    if found is None:
        return None
    path, body = found
    if "dates_file" in body:
        errors.append(
            FieldError(
                f"{path}.dates_file",
                "a file of dates is read by the definition loader (ekiden validate/apply), not here",
            )
        )
    dates = parse_dates(body.get("dates", []), f"{path}.dates", errors)
    include = _rules(body.get("include", []), f"{path}.include", errors)
    exclude = _rules(body.get("exclude", []), f"{path}.exclude", errors)
    desc = string(body, "description", path, errors) or ""
    if len(errors) != before:
        return None
    return Calendar(name, tuple(sorted(set(dates))), include, exclude, desc)


def parse_rule(raw: Any, path: str, errors: list[FieldError]) -> Rule | None:
    """Validate one rule table (in a calendar's include or exclude, or a schedule's ``on``)."""
    if not isinstance(raw, dict):
        errors.append(FieldError(path, "must be a table of conditions"))
        return None
    before = len(errors)
    raw = check_keys(raw, RULE_KEYS, path, errors)
    dates = tuple(sorted(set(parse_dates(raw["dates"], f"{path}.dates", errors)))) if "dates" in raw else None
    weekdays = _weekdays(raw["weekdays"], f"{path}.weekdays", errors) if "weekdays" in raw else None
    nth = _ints(raw, "nth", path, [(1, 5), (-5, -1)], errors)
    days = _ints(raw, "days", path, [(1, 31), (-31, -1)], errors)
    months = _ints(raw, "months", path, [(1, 12)], errors)
    business = _ints(raw, "business_days", path, [(1, 31), (-31, -1)], errors)
    of = _calendar_name(raw, "of", path, errors)
    cal = _calendar_name(raw, "calendar", path, errors)
    start = _one_date(raw, "from", path, errors)
    end = _one_date(raw, "to", path, errors)
    if nth is not None and "weekdays" not in raw:
        errors.append(FieldError(f"{path}.nth", "needs 'weekdays': the n-th of which weekday"))
    if of is not None and "business_days" not in raw:
        errors.append(FieldError(f"{path}.of", "only a 'business_days' rule names the calendar it counts in"))
    if start is not None and end is not None and start > end:
        errors.append(FieldError(path, f"'from' ({start}) is after 'to' ({end})"))
    if len(errors) != before:
        return None
    return Rule(dates, weekdays, nth, days, months, business, of, cal, start, end)


def parse_dates(raw: Any, path: str, errors: list[FieldError]) -> list[date]:
    """A list of dates: ``"YYYY-MM-DD"`` strings (or TOML dates)."""
    if not isinstance(raw, list):
        errors.append(FieldError(path, 'must be a list of dates ("YYYY-MM-DD")'))
        return []
    out = []
    for i, value in enumerate(raw):
        day = _date(value)
        if day is None:
            errors.append(FieldError(f"{path}[{i}]", f'{value!r} is not a date ("YYYY-MM-DD", a real day)'))
        else:
            out.append(day)
    return out


def parse_date_lines(text: str) -> tuple[list[date], list[tuple[int, str]]]:
    """Read a plain file of dates: one ``YYYY-MM-DD`` per line; blank lines and ``#`` comments are skipped.

    Anything after the date on a line (a holiday's name, say) is ignored when separated by white space or a
    comma.

    Returns:
        The dates, and ``(line number, message)`` for every line that is not a date.
    """
    dates: list[date] = []
    bad: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        token = body.replace(",", " ").split()[0]
        day = _date(token)
        if day is None:
            bad.append((n, f"{token!r} is not a date (YYYY-MM-DD)"))
        else:
            dates.append(day)
    return dates, bad


def _date(value: Any) -> date | None:
    if isinstance(value, date) and not hasattr(value, "hour"):
        return value if MIN_DATE <= value <= MAX_DATE else None
    if not isinstance(value, str) or len(value) != 10:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return None
    return day if MIN_DATE <= day <= MAX_DATE else None


def _one_date(raw: dict[str, Any], key: str, path: str, errors: list[FieldError]) -> date | None:
    if key not in raw:
        return None
    day = _date(raw[key])
    if day is None:
        errors.append(FieldError(f"{path}.{key}", 'must be a date ("YYYY-MM-DD", a real day)'))
    return day


def _rules(raw: Any, path: str, errors: list[FieldError]) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        errors.append(FieldError(path, "must be a list of rule tables"))
        return ()
    rules = [parse_rule(r, f"{path}[{i}]", errors) for i, r in enumerate(raw)]
    return tuple(r for r in rules if r is not None)


def _weekdays(raw: Any, path: str, errors: list[FieldError]) -> tuple[int, ...] | None:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(w, str) and w in WEEKDAY_NAMES for w in raw):
        errors.append(FieldError(path, "must be a non-empty list of mon, tue, wed, thu, fri, sat, sun"))
        return None
    return tuple(sorted({WEEKDAY_NAMES.index(w) for w in raw}))


def _ints(
    raw: dict[str, Any], key: str, path: str, ranges: list[tuple[int, int]], errors: list[FieldError]
) -> tuple[int, ...] | None:
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    allowed = " or ".join(f"{a}..{b}" for a, b in ranges)
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and any(a <= v <= b for a, b in ranges) for v in value
        )
    ):
        errors.append(FieldError(f"{path}.{key}", f"must be a non-empty list of whole numbers in {allowed}"))
        return None
    return tuple(sorted(set(value)))


def _calendar_name(raw: dict[str, Any], key: str, path: str, errors: list[FieldError]) -> str | None:
    if key not in raw:
        return None
    if not is_valid_name(raw[key]):
        errors.append(FieldError(f"{path}.{key}", "must be a calendar name"))
        return None
    return str(raw[key])


def _ordinal(n: int) -> str:
    if n == -1:
        return "last"
    if n < 0:
        return f"{_ordinal(-n)}-from-last"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ordinals(ns: Iterable[int] | None) -> str:
    return ",".join(_ordinal(n) for n in ns or ())


# -- evaluation --------------------------------------------------------------------------------------


class CalendarSet:
    """Answers which days are operating days, for a set of calendars whose references all resolve.

    Results are kept per calendar and month, so a schedule that asks about many days in a row costs one
    evaluation per month. Build a new set when the calendars change.
    """

    def __init__(self, calendars: Mapping[str, Calendar]) -> None:
        self.calendars = dict(calendars)
        self._months: dict[tuple[str, int, int], frozenset[int]] = {}
        self._business: dict[tuple[str | None, int, int], tuple[int, ...]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.calendars

    def is_operating(self, name: str, day: date) -> bool:
        """Whether ``day`` is an operating day of calendar ``name``.

        Raises:
            KeyError: no calendar has that name.
        """
        return day.day in self.operating_days(name, day.year, day.month)

    def operating_days(self, name: str, year: int, month: int) -> frozenset[int]:
        """The operating days (day numbers) of one month of calendar ``name``."""
        key = (name, year, month)
        found = self._months.get(key)
        if found is None:
            cal = self.calendars[name]
            last = _stdcal.monthrange(year, month)[1]
            found = frozenset(d for d in range(1, last + 1) if self._evaluate(cal, date(year, month, d))[0])
            self._months[key] = found
        return found

    def explain(self, name: str, day: date) -> tuple[bool, str]:
        """Whether ``day`` is an operating day of ``name``, and why (which rule decided)."""
        return self._evaluate(self.calendars[name], day)

    def matches(self, rule: Rule, day: date) -> bool:
        """Whether ``day`` meets every condition of ``rule``."""
        if rule.dates is not None and day not in rule.dates:
            return False
        if rule.start is not None and day < rule.start:
            return False
        if rule.end is not None and day > rule.end:
            return False
        if rule.months is not None and day.month not in rule.months:
            return False
        last = _stdcal.monthrange(day.year, day.month)[1]
        if rule.days is not None and day.day not in rule.days and day.day - last - 1 not in rule.days:
            return False
        if rule.weekdays is not None:
            if day.weekday() not in rule.weekdays:
                return False
            if (
                rule.nth is not None
                and (day.day - 1) // 7 + 1 not in rule.nth
                and -((last - day.day) // 7 + 1) not in (rule.nth)
            ):
                return False
        if rule.business_days is not None:
            business = self._business_days(rule.of, day.year, day.month)
            if day.day not in business:
                return False
            i = business.index(day.day)
            if i + 1 not in rule.business_days and i - len(business) not in rule.business_days:
                return False
        return rule.calendar is None or self.is_operating(rule.calendar, day)

    def _business_days(self, of: str | None, year: int, month: int) -> tuple[int, ...]:
        key = (of, year, month)
        found = self._business.get(key)
        if found is None:
            if of is None:
                last = _stdcal.monthrange(year, month)[1]
                days = [d for d in range(1, last + 1) if date(year, month, d).weekday() in DEFAULT_BUSINESS_WEEKDAYS]
            else:
                days = sorted(self.operating_days(of, year, month))
            found = self._business[key] = tuple(days)
        return found

    def _evaluate(self, cal: Calendar, day: date) -> tuple[bool, str]:
        included = ""
        if day in cal.dates:
            included = "listed in dates"
        else:
            for i, rule in enumerate(cal.include):
                if self.matches(rule, day):
                    included = f"include[{i}]: {rule.describe()}"
                    break
        if not included:
            return False, "no include rule matches"
        for i, rule in enumerate(cal.exclude):
            if self.matches(rule, day):
                return False, f"exclude[{i}]: {rule.describe()}"
        return True, included

    def year_view(self, name: str, year: int) -> list[frozenset[int]]:
        """The operating days of each month of ``year`` (index 0 is January)."""
        return [self.operating_days(name, year, m) for m in range(1, 13)]

    def next_operating(self, name: str, day: date, step: int, max_days: int) -> date | None:
        """The nearest operating day after (``step`` 1) or before (``step`` -1) ``day``, within ``max_days``."""
        for k in range(1, max_days + 1):
            candidate = day + timedelta(days=k * step)
            if self.is_operating(name, candidate):
                return candidate
        return None
