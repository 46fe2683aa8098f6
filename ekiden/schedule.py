"""``ekiden calendar``, ``ekiden schedule`` and ``ekiden plan``: calendars, schedules and the runs to come.

The planning views (a calendar's year, its answer for one day, a schedule's next fires, every run between
two dates) are computed here with the same code the manager fires with (``schemas.calendars``,
``schemas.schedules``), either from definition files (``--defs PATH``, no server needed) or from what the
running manager holds (its definitions, each schedule's state and one-off changes).
"""

import argparse
import calendar as stdcal
import heapq
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson

from ekiden.client import ApiClient, CliError, add_connection_args, endpoint_of
from ekiden.deffiles import load_definitions
from ekiden.render import print_json, table
from schemas.calendars import Calendar, CalendarSet
from schemas.definitions import parse_definitions
from schemas.schedules import Fire, Schedule, fires, local_text, parse_local

#: Exit code of ``calendar check`` for a day that is not an operating day.
EXIT_NOT_OPERATING = 1
#: Most rows ``ekiden plan`` prints unless told otherwise.
PLAN_LIMIT = 10_000
_ACTIONS = ("enable", "disable", "hold", "release")


@dataclass
class Book:
    """Calendars and schedules to plan from, with each schedule's state when read from a manager."""

    calendars: dict[str, Calendar]
    schedules: dict[str, Schedule]
    #: per schedule (online only): enabled, held, next_fire_at, next_key, changes
    state: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def calset(self) -> CalendarSet:
        """The calendars, ready to evaluate."""
        return CalendarSet(self.calendars)

    def changes(self, name: str) -> dict[int, int]:
        """A schedule's one-off changes as ``{regular fire time: new fire time}``."""
        return {int(o): int(n) for o, n in self.state.get(name, {}).get("changes", [])}

    def enabled(self, name: str) -> bool:
        """Whether a schedule fires (its state online, its definition offline)."""
        return bool(self.state[name]["enabled"]) if name in self.state else self.schedules[name].enabled


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``calendar``, ``schedule`` and ``plan``."""
    cal = sub.add_parser("calendar", help="show a calendar's operating days, or check one day")
    cal_sub = cal.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = cal_sub.add_parser("show", help="a year view: twelve month grids, operating days marked")
    s.add_argument("name")
    s.add_argument("--year", type=int, default=date.today().year)
    _source_args(s)
    s = cal_sub.add_parser("check", help="is DATE an operating day? (exit 0 if it is, 1 if not) and why")
    s.add_argument("name")
    s.add_argument("date", type=date.fromisoformat, help="YYYY-MM-DD")
    _source_args(s)

    sched = sub.add_parser("schedule", help="a schedule's next fires; enable, disable, hold, release, change")
    sched_sub = sched.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sched_sub.add_parser("next", help="the next fire times of a schedule, with the calendar reason")
    s.add_argument("name")
    s.add_argument("-n", type=int, default=10, help="how many (default 10)")
    s.add_argument("--json", action="store_true")
    _source_args(s)
    s = sched_sub.add_parser("ls", help="every schedule of the manager, with its state and next fire")
    s.add_argument("--json", action="store_true")
    add_connection_args(s)
    for action in _ACTIONS:
        s = sched_sub.add_parser(action, help=f"{action} a schedule (see docs/scheduling.md)")
        s.add_argument("name")
        add_connection_args(s)
    s = sched_sub.add_parser("change", help="move one fire to another time, once (a one-off start-time change)")
    s.add_argument("name")
    s.add_argument("--at", required=True, metavar="ORIGINAL", help="the fire to move: 'YYYY-MM-DD HH:MM' local")
    s.add_argument("--to", required=True, metavar="NEW", help="its new time: 'YYYY-MM-DD HH:MM' local")
    add_connection_args(s)

    s = sub.add_parser("plan", help="every run that would start between two dates, across all schedules")
    s.add_argument("--from", dest="start", type=date.fromisoformat, required=True, metavar="DATE")
    s.add_argument("--to", dest="end", type=date.fromisoformat, required=True, metavar="DATE")
    s.add_argument("--limit", type=int, default=PLAN_LIMIT, help=f"most rows (default {PLAN_LIMIT})")
    s.add_argument("--json", action="store_true")
    _source_args(s)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defs", action="append", metavar="PATH", help="plan from definition files, not the manager")
    add_connection_args(p)


async def _book(args: argparse.Namespace, schedule: str | None = None) -> Book:
    """What to plan from: the definition files named by ``--defs``, or the running manager."""
    if args.defs:
        defs = load_definitions(args.defs)
        return Book(defs.calendars, defs.schedules)
    client = await ApiClient.connect(endpoint_of(args))
    try:
        raw_cals: dict[str, str] = await client.call("calendars")
        rows: list[dict[str, Any]] = []
        if schedule is not None:
            rows = (await client.call("schedules", name=schedule))["schedules"]
        else:
            after: str | None = ""
            while after is not None:
                page = await client.call("schedules", after=after)
                rows.extend(page["schedules"])
                after = page["next"]
    finally:
        await client.close()
    raw = {
        "calendar": {n: orjson.loads(b) for n, b in raw_cals.items()},
        "schedule": {r["name"]: orjson.loads(r["body"]) for r in rows},
    }
    defs = parse_definitions(raw, complete=False)
    return Book(defs.calendars, defs.schedules, {r["name"]: r for r in rows})


def _calendar(book: Book, name: str) -> None:
    if name not in book.calendars:
        raise CliError(f"no calendar named {name!r}")


def _schedule(book: Book, name: str) -> Schedule:
    if name not in book.schedules:
        raise CliError(f"no schedule named {name!r}")
    return book.schedules[name]


# -- calendar ----------------------------------------------------------------------------------------


async def cmd_calendar(args: argparse.Namespace) -> int:
    """``ekiden calendar show|check``."""
    book = await _book(args)
    _calendar(book, args.name)
    calset = book.calset
    if args.action == "show":
        print(year_view(calset, args.name, args.year))
        return 0
    operating, why = calset.explain(args.name, args.date)
    verdict = "an operating day" if operating else "not an operating day"
    print(f"{args.date} ({args.date:%a}) is {verdict} of {args.name}: {why}")
    return 0 if operating else EXIT_NOT_OPERATING


def year_view(calset: CalendarSet, name: str, year: int) -> str:
    """Twelve month grids, three across, weeks from Monday; an operating day is marked with ``*``."""
    months = calset.year_view(name, year)
    total = sum(len(m) for m in months)
    lines = [f"{name} {year}: {total} operating days (marked *)", ""]
    weeks_of = stdcal.Calendar(firstweekday=0)
    for row in range(4):
        block = [row * 3 + i for i in range(3)]
        grids = []
        for m in block:
            title = f"{stdcal.month_name[m + 1]} ({len(months[m])})"
            grid = [title.center(21).rstrip().ljust(21), "Mo Tu We Th Fr Sa Su "]
            for week in weeks_of.monthdayscalendar(year, m + 1):
                grid.append("".join("   " if d == 0 else f"{d:2d}{'*' if d in months[m] else ' '}" for d in week))
            grids.append(grid)
        height = max(len(g) for g in grids)
        for i in range(height):
            lines.append("   ".join((g[i] if i < len(g) else "").ljust(21) for g in grids).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# -- schedule ----------------------------------------------------------------------------------------


async def cmd_schedule(args: argparse.Namespace) -> int:
    """``ekiden schedule next|ls|enable|disable|hold|release|change``."""
    if args.action == "next":
        return await _next(args)
    client = await ApiClient.connect(endpoint_of(args))
    try:
        if args.action == "ls":
            return await _list(client, args.json)
        extra = {"at": args.at, "to": args.to} if args.action == "change" else {}
        state = await client.call("schedule", name=args.name, action=args.action, **extra)
    finally:
        await client.close()
    nxt = state["next_fire_at"]
    flags = ("enabled" if state["enabled"] else "disabled") + (", held" if state["held"] else "")
    print(f"schedule {args.name}: {flags}; next fire {_utc(nxt) if nxt else 'none'}")
    for original, new in state["changes"]:
        print(f"  one-off change: {_utc(original)} -> {_utc(new)}")
    return 0


async def _list(client: ApiClient, as_json: bool) -> int:
    rows: list[dict[str, Any]] = []
    after: str | None = ""
    while after is not None:
        page = await client.call("schedules", after=after)
        rows.extend(page["schedules"])
        after = page["next"]
    if as_json:
        print_json(rows)
        return 0
    out = []
    for r in rows:
        body = orjson.loads(r["body"])
        state = ("enabled" if r["enabled"] else "disabled") + (" held" if r["held"] else "")
        nxt = _utc(r["next_fire_at"]) if r["next_fire_at"] else "-"
        out.append([r["name"], body["jobnet"], state, nxt, body.get("timezone", "UTC")])
    print(table(out, ["SCHEDULE", "JOBNET", "STATE", "NEXT (UTC)", "TIME ZONE"]))
    return 0


async def _next(args: argparse.Namespace) -> int:
    book = await _book(args, None if args.defs else args.name)
    sched = _schedule(book, args.name)
    now = int(time.time())
    start = now
    state = book.state.get(args.name)
    if state is not None and state["next_fire_at"] is not None:
        start = min(now, int(state["next_fire_at"]))  # a held schedule's overdue fires come first
    coming = list(_take(fires(sched, book.calset, start, book.changes(args.name)), args.n))
    if args.json:
        docs = [{"at": f.at, "key": f.key, "local": local_text(f.at, sched.zone), "reason": f.reason} for f in coming]
        print_json(docs)
        return 0
    if state is not None and not state["enabled"]:
        print(f"schedule {args.name} is disabled: these fire only once it is enabled")
    elif state is not None and state["held"]:
        print(f"schedule {args.name} is held: these wait for release (then its catch-up policy applies)")
    rows = [[local_text(f.at, sched.zone), _utc(f.at), f.reason] for f in coming]
    print(table(rows, [f"WHEN ({sched.timezone})", "UTC", "WHY"]))
    return 0


def _take(found: Iterator[Fire], n: int) -> Iterator[Fire]:
    for i, fire in enumerate(found):
        if i >= n:
            return
        yield fire


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


# -- plan --------------------------------------------------------------------------------------------


async def cmd_plan(args: argparse.Namespace) -> int:
    """``ekiden plan --from DATE --to DATE``."""
    if args.end < args.start:
        raise CliError("--to is before --from")
    book = await _book(args)
    rows = list(_take_plan(plan(book, args.start, args.end), args.limit + 1))
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.json:
        print_json(rows)
        return 0
    body = [[r["local"], r["schedule"], r["jobnet"], r["reason"]] for r in rows]
    print(table(body, ["WHEN", "SCHEDULE", "JOBNET", "WHY"]))
    if more:
        print(f"... more than {args.limit} runs; narrow the dates or raise --limit", file=sys.stderr)
    skipped = sorted(n for n in book.schedules if not book.enabled(n))
    if skipped:
        print(f"disabled, not planned: {', '.join(skipped)}", file=sys.stderr)
    return 0


def _take_plan(rows: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if i >= n:
            return
        yield row


def plan(book: Book, start: date, end: date) -> Iterator[dict[str, Any]]:
    """Every run the enabled schedules would start on the local dates ``start`` to ``end``, in time order.

    Each schedule's dates are its own time zone's; a held schedule's rows say so.
    """
    calset = book.calset
    streams = []
    for name, sched in sorted(book.schedules.items()):
        if not book.enabled(name):
            continue
        zone = sched.zone
        first = parse_local(f"{start} 00:00", zone)
        stop = parse_local(f"{end + timedelta(days=1)} 00:00", zone)
        held = " (held)" if book.state.get(name, {}).get("held") else ""
        streams.append(_rows(name, held, _until(fires(sched, calset, first, book.changes(name)), stop)))
    for at, name, fire, held in heapq.merge(*streams, key=lambda row: (row[0], row[1])):
        sched = book.schedules[name]
        yield {
            "at": at,
            "local": local_text(at, sched.zone),
            "schedule": name,
            "jobnet": sched.jobnet,
            "reason": fire.reason + held,
        }


def _rows(name: str, held: str, found: Iterator[Fire]) -> Iterator[tuple[int, str, Fire, str]]:
    for fire in found:
        yield fire.at, name, fire, held


def _until(found: Iterator[Fire], stop: int) -> Iterator[Fire]:
    for fire in found:
        if fire.at >= stop:
            return
        yield fire


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "calendar": cmd_calendar,
    "schedule": cmd_schedule,
    "plan": cmd_plan,
}
