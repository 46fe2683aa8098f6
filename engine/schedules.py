"""The active manager's schedule book: calendars, schedules and their state, kept by the core.

The core owns every change: applying definitions, operator commands (enable, disable, hold, release, a
one-off change) and fires all pass through its queue and are committed in its group transactions, so the
book in memory is never behind what is committed. The scheduler (``engine.scheduler``) reads the book to
decide what to fire, and the site database to learn what comes due.

A fire is accepted only if it is the schedule's next one (its key is the book's ``next_key``) under the
definition the scheduler read (same digest), and it moves ``next_key`` on in the same transaction that
records the fire and creates the run. A fire already recorded returns the run it started.
"""

import asyncio
import hashlib
import logging
import time
from collections.abc import Collection, Mapping
from functools import lru_cache
from typing import Any, Protocol

import orjson

from engine.schedule_store import Loaded, ScheduleRow, ScheduleWrites, fired_runs
from schemas.calendars import Calendar, CalendarSet
from schemas.definitions import Definitions, parse_definitions, reference_errors
from schemas.errors import ErrorCode, WireError
from schemas.schedules import Fire, Schedule, fire_after, local_text, next_fire, parse_local

logger = logging.getLogger(__name__)

#: Operator actions on a schedule (the API's ``schedule`` verb), and the scheduler's own ``advance``.
ACTIONS = ("enable", "disable", "hold", "release", "change", "advance")


class Clock(Protocol):
    """Wall-clock time for scheduling; tests inject one they control."""

    def now(self) -> float:
        """Seconds since the epoch."""

    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (at once if it already is)."""


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep_until(self, t: float) -> None:
        """Sleep until the wall clock reaches ``t``."""
        delay = t - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


def digest_of(body: str) -> str:
    """The digest that tells whether a definition changed."""
    return hashlib.sha256(body.encode()).hexdigest()


@lru_cache(maxsize=4096)
def _parse_schedule(name: str, body: str) -> Schedule:
    return parse_definitions({"schedule": {name: orjson.loads(body)}}, complete=False).schedules[name]


def _parse_calendar(name: str, body: str) -> Calendar:
    return parse_definitions({"calendar": {name: orjson.loads(body)}}, complete=False).calendars[name]


class ScheduleBook:
    """Calendars, schedules, their state and one-off changes, as the active manager holds them."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calendars: dict[str, tuple[str, Calendar]] = {}
        self.calset = CalendarSet({})
        self.rows: dict[str, ScheduleRow] = {}
        #: one-off changes: schedule -> {regular fire time: new fire time}
        self.changes: dict[str, dict[int, int]] = {}
        #: fires already recorded that a command in this turn repeats, as looked up before the turn
        self._recorded: dict[tuple[str, int], str] = {}
        #: schedules whose state changed since the scheduler last looked; ``wake`` tells it to look
        self.touched: set[str] = set()
        self.wake = asyncio.Event()

    def take_touched(self) -> set[str]:
        """The schedules changed since the last call (the scheduler's view of what the database may lag)."""
        self.wake.clear()
        touched, self.touched = self.touched, set()
        return touched

    def _touch(self, row: ScheduleRow, writes: ScheduleWrites) -> None:
        writes.schedules[row.name] = row
        self.touched.add(row.name)
        self.wake.set()

    # -- loading -------------------------------------------------------------------------------------

    def load(self, loaded: Loaded) -> None:
        """Take what the site database holds (at takeover)."""
        for name, body, digest in loaded.calendars:
            self.calendars[name] = (digest, _parse_calendar(name, body))
        self.calset = CalendarSet({n: c for n, (_, c) in self.calendars.items()})
        self.rows = {row.name: row for row in loaded.schedules}
        for schedule, original, new in loaded.changes:
            self.changes.setdefault(schedule, {})[original] = new
        logger.info("schedule book: %d calendars, %d schedules", len(self.calendars), len(self.rows))

    def schedule(self, name: str) -> Schedule:
        """The parsed definition of a schedule.

        Raises:
            KeyError: no schedule has that name.
        """
        row = self.rows[name]
        return _parse_schedule(name, row.body)

    # -- applying definitions --------------------------------------------------------------------------

    def check(self, defs: Definitions, jobnets: Collection[str]) -> list[str]:
        """What refers to something unknown, given what is already registered (as ``PATH: MESSAGE`` lines)."""
        registered = {n: c for n, (_, c) in self.calendars.items()}
        return [str(e) for e in reference_errors(defs.calendars, defs.schedules, jobnets, registered)]

    def apply(self, defs: Definitions, writes: ScheduleWrites, now: float) -> dict[str, Any]:
        """Register calendars and schedules; a new or changed schedule's next fire is the first after now.

        A changed calendar moves the next fire of every schedule that reads it (directly or through other
        calendars), also from now: a changed definition takes effect when applied and never reaches back.
        """
        changed_cals: set[str] = set()
        for name, cal in sorted(defs.calendars.items()):
            body = orjson.dumps(cal.to_dict(), option=orjson.OPT_SORT_KEYS).decode()
            digest = digest_of(body)
            if name in self.calendars and self.calendars[name][0] == digest:
                continue
            self.calendars[name] = (digest, cal)
            writes.calendars.append((name, body, digest, now))
            changed_cals.add(name)
        if changed_cals:
            self.calset = CalendarSet({n: c for n, (_, c) in self.calendars.items()})
        results = []
        for name, sched in sorted(defs.schedules.items()):
            body = orjson.dumps(sched.to_dict(), option=orjson.OPT_SORT_KEYS).decode()
            digest = digest_of(body)
            old = self.rows.get(name)
            if old is not None and old.digest == digest:
                results.append({"name": name, "changed": False})
                continue
            row = ScheduleRow(name, body, digest, now, sched.enabled, old.held if old else False, None, None)
            self.rows[name] = row
            if old is not None and self.changes.pop(name, None) is not None:
                writes.change_clears.append(name)
            self._move_from_now(row, sched, writes)
            results.append({"name": name, "changed": True, "next_fire_at": row.next_at})
        if changed_cals:
            for name, row in self.rows.items():
                if name not in defs.schedules and self._reads(self.schedule(name), changed_cals):
                    self._move_from_now(row, self.schedule(name), writes)
        return {"calendars": sorted(changed_cals), "schedules": results}

    def _reads(self, sched: Schedule, calendars: set[str]) -> bool:
        seen: set[str] = set()
        todo = list(sched.references())
        while todo:
            name = todo.pop()
            if name in calendars:
                return True
            if name in seen or name not in self.calendars:
                continue
            seen.add(name)
            todo.extend(self.calendars[name][1].references())
        return False

    def _move_from_now(self, row: ScheduleRow, sched: Schedule, writes: ScheduleWrites) -> None:
        fire = next_fire(sched, self.calset, self.clock.now(), self.changes.get(row.name))
        row.next_at, row.next_key = (fire.at, fire.key) if fire else (None, None)
        self._touch(row, writes)

    # -- fires -------------------------------------------------------------------------------------------

    async def prepare(self, store: Any, fires: list[dict[str, Any]]) -> None:
        """Before a turn: look up the fires in it that are not their schedule's next (repeats, or stale)."""
        self._recorded = {}
        suspect = []
        for fire in fires:
            name, key = fire.get("schedule"), fire.get("at")
            row = self.rows.get(name) if isinstance(name, str) else None
            if isinstance(key, int) and isinstance(name, str) and (row is None or row.next_key != key):
                suspect.append((name, key))
        if suspect:
            self._recorded = await fired_runs(store, suspect)

    def check_fire(self, fire: Any) -> str | None:
        """The run an earlier fire with the same key started; None if this fire is new and may start.

        Raises:
            WireError: ``conflict`` if it is not the schedule's next fire (the scheduler read an older state),
                ``invalid`` if it is malformed.
        """
        if not isinstance(fire, dict):
            raise WireError(ErrorCode.INVALID, "fire must be a map")
        name, key, digest = fire.get("schedule"), fire.get("at"), fire.get("digest")
        if not isinstance(name, str) or not isinstance(key, int):
            raise WireError(ErrorCode.INVALID, "fire needs 'schedule' (a name) and 'at' (epoch seconds)")
        done = self._recorded.get((name, key))
        if done is not None:
            return done
        nxt = fire.get("next")
        if nxt is not None and not (isinstance(nxt, list) and len(nxt) == 2 and all(isinstance(v, int) for v in nxt)):
            raise WireError(ErrorCode.INVALID, "fire's next must be [at, key] or null")
        row = self.rows.get(name)
        if row is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no schedule named {name!r}")
        if row.digest != digest or not row.enabled or row.held or row.next_key != key:
            raise WireError(
                ErrorCode.CONFLICT,
                f"schedule {name}: fire {key} is not its next (next {row.next_key}, enabled {row.enabled},"
                f" held {row.held})",
            )
        return None

    def record_fire(self, fire: dict[str, Any], run_id: str, writes: ScheduleWrites, now: float) -> None:
        """Record a fire that started ``run_id`` and move the schedule to the next fire the scheduler named."""
        name, key = fire["schedule"], fire["at"]
        row = self.rows[name]
        due = fire.get("due", key)
        writes.fires.append((name, key, int(due), now, int(run_id), str(fire.get("note", ""))))
        self._recorded[(name, key)] = run_id
        self._advance(row, fire.get("next"), writes)
        if self.changes.get(name, {}).pop(key, None) is not None:
            writes.change_deletes.append((name, key))

    def _advance(self, row: ScheduleRow, nxt: Any, writes: ScheduleWrites) -> None:
        if nxt is None:
            row.next_at = row.next_key = None
        elif isinstance(nxt, list) and len(nxt) == 2 and all(isinstance(v, int) for v in nxt):
            row.next_at, row.next_key = nxt
        else:
            raise WireError(ErrorCode.INVALID, "next must be [at, key] or null")
        writes.schedules[row.name] = row

    # -- operator commands -------------------------------------------------------------------------------

    def command(self, args: Mapping[str, Any], writes: ScheduleWrites) -> dict[str, Any]:
        """enable, disable, hold, release or change a schedule; ``advance`` is the scheduler's skip.

        Raises:
            WireError: unknown schedule or action, a bad time, or a state that does not allow it.
        """
        name, action = args.get("name"), args.get("action")
        row = self.rows.get(name) if isinstance(name, str) else None
        if row is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no schedule named {name!r}")
        if action not in ACTIONS:
            raise WireError(ErrorCode.INVALID, f"unknown schedule action {action!r}: use {', '.join(ACTIONS)}")
        sched = self.schedule(row.name)
        if action == "enable":
            if not row.enabled:
                row.enabled = True
                self._move_from_now(row, sched, writes)
        elif action == "disable":
            row.enabled = False
        elif action in ("hold", "release"):
            row.held = action == "hold"
        elif action == "change":
            self._change(row, sched, args, writes)
        else:
            if args.get("digest") != row.digest or args.get("from") != row.next_key:
                raise WireError(ErrorCode.CONFLICT, f"schedule {row.name} moved on before the skip")
            self._advance(row, args.get("next"), writes)
            logger.info("schedule %s: skipped %s missed fire times", row.name, args.get("skipped", "?"))
        self._touch(row, writes)
        return self.state(row.name)

    def _change(self, row: ScheduleRow, sched: Schedule, args: Mapping[str, Any], writes: ScheduleWrites) -> None:
        zone, now = sched.zone, self.clock.now()
        try:
            original = parse_local(str(args.get("at")), zone)
            new = parse_local(str(args.get("to")), zone)
        except ValueError as exc:
            raise WireError(ErrorCode.INVALID, f"a time is not 'YYYY-MM-DD HH:MM[:SS]': {exc}") from exc
        if original <= now or new <= now:
            raise WireError(ErrorCode.CONFLICT, "a one-off change moves a fire still to come, to a time still to come")
        regular = next_fire(sched, self.calset, original - 1)
        if regular is None or regular.key != original:
            raise WireError(
                ErrorCode.NOT_FOUND,
                f"schedule {row.name} does not fire at {local_text(original, zone)}: see 'ekiden schedule next'",
            )
        mine = self.changes.setdefault(row.name, {})
        if new == original:
            mine.pop(original, None)
            writes.change_deletes.append((row.name, original))
        else:
            mine[original] = new
            writes.changes.append((row.name, original, new, now))
        # The next fire is the first from where the schedule stands (or from now, if that is later).
        start = min(now, row.next_at) if row.next_at is not None else now
        fire = next_fire(sched, self.calset, start - 1, mine)
        row.next_at, row.next_key = (fire.at, fire.key) if fire else (None, None)

    def state(self, name: str) -> dict[str, Any]:
        """A schedule's state, as the API returns it."""
        row = self.rows[name]
        return {
            "schedule": name,
            "enabled": row.enabled,
            "held": row.held,
            "next_fire_at": row.next_at,
            "next_key": row.next_key,
            "changes": sorted([o, n] for o, n in self.changes.get(name, {}).items()),
        }

    def upcoming(self, name: str, after: Fire) -> Fire | None:
        """The fire after ``after`` of a schedule, with its one-off changes."""
        return fire_after(self.schedule(name), self.calset, after.at, after.key, self.changes.get(name))
