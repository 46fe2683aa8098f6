"""Cron expressions: which days and which times of day a schedule fires (pure data, no I/O).

Five fields (``minute hour day-of-month month day-of-week``, as in Vixie cron) or six, with seconds first
(``second minute hour day-of-month month day-of-week``, as in Quartz and Spring). Each field is ``*``, a
number, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, or a comma-separated list of these. Months
and weekdays may be names (``jan``, ``mon``); weekday 0 and 7 are both Sunday; ``?`` is the same as ``*``.
``@yearly``, ``@monthly``, ``@weekly``, ``@daily`` and ``@hourly`` are shorthands.

When both day fields are restricted, a day matches if either matches (Vixie cron's rule): ``0 9 1 * mon``
fires at 09:00 on the first of each month and on every Monday.
"""

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    """A cron expression that cannot be read; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression. Weekdays count as Python does: Monday is 0, Sunday is 6."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool
    weekdays_any: bool

    @property
    def every_hour(self) -> bool:
        """True when the hour field names every hour: the expression is a repeating interval, not a clock time.

        Such an expression follows elapsed time across DST changes (it fires in both passes of a repeated hour
        and not in a skipped one); one with chosen hours keeps to the wall clock (see docs/scheduling.md).
        """
        return len(self.hours) == 24

    def matches_date(self, day: date) -> bool:
        """Whether the expression fires on ``day`` at all."""
        if day.month not in self.months:
            return False
        if self.days_any and self.weekdays_any:
            return True
        in_days = day.day in self.days
        in_weekdays = day.weekday() in self.weekdays
        if self.days_any:
            return in_weekdays
        if self.weekdays_any:
            return in_days
        return in_days or in_weekdays

    def times_from(self, start: time) -> Iterator[time]:
        """The times of day the expression fires at, from ``start`` (inclusive) on, in order."""
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        for hi in range(bisect_left(hours, start.hour), len(hours)):
            h = hours[hi]
            first_m = bisect_left(minutes, start.minute) if h == start.hour else 0
            for mi in range(first_m, len(minutes)):
                m = minutes[mi]
                first_s = bisect_left(seconds, start.second) if (h, m) == (start.hour, start.minute) else 0
                for si in range(first_s, len(seconds)):
                    yield time(h, m, seconds[si])


def parse_cron(text: str) -> Cron:
    """Read a cron expression.

    Raises:
        CronError: it is not valid; the message names the field.
    """
    if not isinstance(text, str):
        raise CronError("must be a string")
    expr = _MACROS.get(text.strip().lower(), text)
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise CronError(f"needs 5 fields (minute hour day month weekday) or 6 (seconds first), not {len(fields)}")
    sec, minute, hour, dom, month, dow = fields
    seconds = _field(sec, "second", 0, 59, ())
    minutes = _field(minute, "minute", 0, 59, ())
    hours = _field(hour, "hour", 0, 23, ())
    days = _field(dom, "day of month", 1, 31, ())
    months = _field(month, "month", 1, 12, _MONTHS)
    cron_days = _field(dow, "day of week", 0, 7, _DAYS)
    # cron counts Sunday as 0 (and 7); Python's weekday() counts Monday as 0.
    weekdays = frozenset((d - 1) % 7 for d in cron_days)
    return Cron(
        text=text,
        seconds=tuple(sorted(seconds)),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=frozenset(days),
        months=frozenset(months),
        weekdays=weekdays,
        # As in Vixie cron, a day field that starts with '*' counts as unrestricted ("*/2" too).
        days_any=dom.startswith(("*", "?")),
        weekdays_any=dow.startswith(("*", "?")),
    )


def _field(text: str, what: str, low: int, high: int, names: tuple[str, ...]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{what}: step {step_text!r} must be a whole number above 0")
            step = int(step_text)
        if body in ("*", "?"):
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            start, end = _value(a, what, low, high, names), _value(b, what, low, high, names)
            if start > end:
                raise CronError(f"{what}: range {body!r} runs backwards")
        else:
            start = _value(body, what, low, high, names)
            end = high if slash else start
        out.update(range(start, end + 1, step))
    return out


def _value(text: str, what: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if names and lowered in names:
        return names.index(lowered) + (1 if what == "month" else 0)
    if not text.isdigit():
        raise CronError(f"{what}: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{what}: {value} is outside {low}-{high}")
    return value
