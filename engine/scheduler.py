"""The scheduler: a poll loop that loads what comes due from the site database and fires it on time.

Like WebSphere's poll daemon, each poll loads only the schedules whose next fire time falls within the next
``schedule_poll_s`` (an indexed range scan of ``schedules.next_fire_at``), sleeps until the earliest of them,
and fires what is due: the cost of a poll follows what comes due, not how many schedules exist.

A fire is a ``run`` command on the core's queue carrying the fire (schedule, key, due time, the next fire);
the core records it in the same transaction as the run and the schedule's new next fire time, unique per
schedule and key. A manager that dies after that commit has fired; one that dies before it has not, and its
successor fires it (late, by the schedule's catch-up policy). Nothing fires twice.

Catch-up: a fire more than ``schedule_misfire_s`` late was missed (no manager was active, the schedule was
held, or the site was in maintenance). ``once`` runs one of the missed fires now and goes on with the first
fire after now; ``all`` runs each, in order; ``skip`` runs none and goes on with the first fire that is not
late.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from engine.core import Command, Item
from engine.schedule_store import ScheduleQueries, ScheduleRow
from engine.schedules import ScheduleBook
from schemas.errors import ErrorCode, WireError
from schemas.schedules import CatchUp, Fire, Schedule, fires, local_text, next_fire

logger = logging.getLogger(__name__)

#: Most due schedules one poll loads (the rest come with the next poll, at once).
MAX_DUE = 2000
#: Most fire times of one schedule fired or counted in one pass.
MAX_CATCH_UP = 1000
#: Seconds a schedule whose fire was refused (other than for a stale view) waits before it is tried again.
REFUSED_BACKOFF_S = 5.0
#: Seconds to wait when what the database says is due is not yet what the book says (a commit in flight).
STALE_RETRY_S = 0.05


class Scheduler:
    """Fires the schedules of one active manager."""

    def __init__(
        self,
        book: ScheduleBook,
        queries: ScheduleQueries,
        queue: "asyncio.Queue[Item]",
        poll_s: float,
        misfire_s: float,
        paused: Callable[[], bool],
    ) -> None:
        self._book = book
        self._queries = queries
        self._queue = queue
        self._poll_s = poll_s
        self._misfire_s = misfire_s
        self._paused = paused
        #: schedule -> monotonic time before which it is not tried again
        self._backoff: dict[str, float] = {}

    async def run(self) -> None:
        """Poll and fire until cancelled."""
        clock = self._book.clock
        while True:
            now = clock.now()
            # What an operator or an apply just changed may not be committed yet: the book has it first.
            touched = self._book.take_touched()
            if self._paused():  # maintenance: nothing starts; what comes due waits and is caught up after
                await self._sleep(now + self._poll_s)
                continue
            due = dict(await self._queries.due(now + self._poll_s, MAX_DUE))
            for name in touched:
                row = self._book.rows.get(name)
                if row is not None and row.enabled and not row.held and row.next_at is not None:
                    due[name] = row.next_at
            mono = time.monotonic()
            ready = [name for name, at in due.items() if at <= now and self._backoff.get(name, 0.0) <= mono]
            if ready:
                if not await self._fire(ready, now):
                    await asyncio.sleep(STALE_RETRY_S)
                continue
            await self._sleep(min([at for at in due.values() if at > now] + [now + self._poll_s]))

    async def _sleep(self, until: float) -> None:
        """Sleep until ``until`` by the scheduling clock, or until the book says a schedule changed."""
        if self._book.wake.is_set():
            return
        async with asyncio.TaskGroup() as tg:
            sleeper = tg.create_task(self._book.clock.sleep_until(until))
            waker = tg.create_task(self._book.wake.wait())
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            waker.cancel()

    async def _fire(self, names: list[str], now: float) -> int:
        """Send the commands for every due schedule at once (one group commit), then wait for them."""
        sent: list[tuple[str, Command]] = []
        for name in names:
            row = self._book.rows.get(name)
            if row is None or not row.enabled or row.held or row.next_at is None or row.next_at > now:
                continue  # the book is ahead of what the database said: a commit is in flight
            try:
                commands = self._plan(name, row, now)
            except Exception:  # a definition the code cannot evaluate must not stop the other schedules
                logger.exception("schedule %s: cannot work out its fires", name)
                self._backoff[name] = time.monotonic() + REFUSED_BACKOFF_S
                continue
            sent.extend((name, cmd) for cmd in commands)
        for _, cmd in sent:
            await self._queue.put(cmd)
        for name, cmd in sent:
            try:
                await cmd.done
            except WireError as exc:
                if exc.code == ErrorCode.CONFLICT:
                    logger.debug("schedule %s: %s", name, exc.message)
                else:
                    logger.warning("schedule %s: fire refused: %s", name, exc)
                    self._backoff[name] = time.monotonic() + REFUSED_BACKOFF_S
        return len(sent)

    def _plan(self, name: str, row: ScheduleRow, now: float) -> list[Command]:
        assert row.next_at is not None and row.next_key is not None
        sched = self._book.schedule(name)
        changes = self._book.changes.get(name)
        calset = self._book.calset
        current = Fire(row.next_at, row.next_key, _day(row.next_at, sched), "")
        late_s = now - row.next_at
        after = (f for f in fires(sched, calset, row.next_at, changes) if (f.at, f.key) > (current.at, current.key))
        if late_s > self._misfire_s and sched.catch_up == CatchUp.ONCE:
            missed = 1 + sum(1 for _, f in zip(range(MAX_CATCH_UP * 100), after, strict=False) if f.at <= now)
            nxt = next_fire(sched, calset, now, changes)
            since = local_text(row.next_at, sched.zone)
            note = f"late by {late_s:.0f}s: catch-up once for {missed} fire time(s) from {since}"
            logger.warning("schedule %s: %s", name, note)
            return [self._run(sched, row, current, nxt, note)]
        if late_s > self._misfire_s and sched.catch_up == CatchUp.SKIP:
            skipped, first = 1, next(after, None)
            while first is not None and now - first.at > self._misfire_s:
                skipped, first = skipped + 1, next(after, None)
            logger.warning("schedule %s: skipped %d missed fire time(s) (catch_up = skip)", name, skipped)
            nxt_key = [first.at, first.key] if first else None
            args = {"action": "advance", "name": name, "digest": row.digest, "from": row.next_key}
            return [Command("schedule", {**args, "next": nxt_key, "skipped": skipped})]
        chain: list[Command] = []
        fire: Fire | None = current
        while fire is not None and fire.at <= now and len(chain) < MAX_CATCH_UP:
            nxt = next(after, None)
            lateness = now - fire.at
            note = "on time" if lateness <= self._misfire_s else f"late by {lateness:.0f}s: catch-up all"
            chain.append(self._run(sched, row, fire, nxt, note))
            fire = nxt
        return chain

    @staticmethod
    def _run(sched: Schedule, row: ScheduleRow, fire: Fire, nxt: Fire | None, note: str) -> Command:
        payload: dict[str, Any] = {
            "schedule": sched.name,
            "at": fire.key,
            "due": fire.at,
            "digest": row.digest,
            "next": [nxt.at, nxt.key] if nxt is not None else None,
            "note": note,
        }
        return Command("run", {"jobnet": sched.jobnet, "params": dict(sched.params), "fire": payload})


def _day(ts: int, sched: Schedule) -> date:
    return datetime.fromtimestamp(ts, sched.zone).date()
