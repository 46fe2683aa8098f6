"""The site database's calendars, schedules, fires and one-off changes: what one commit writes, and the reads.

The tables (migration 5 in ``engine.migrations``): ``calendars``, ``schedules`` (one row per schedule with
its state and its next fire time, indexed for the due query), ``fires`` (one row per fire, unique per
schedule and fire time, written in the same transaction as the run it starts) and ``schedule_changes``.
All writes go through the core's group commit (``Changes.schedules``); reads for the scheduler and the API
go through the reader connection, so they see only what is committed.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store import Store

#: The schedules whose next fire time is at or before a moment, soonest first (uses index schedules_due).
DUE_SQL = (
    "SELECT name, next_fire_at FROM schedules WHERE enabled=1 AND held=0 AND next_fire_at <= ?"
    " ORDER BY next_fire_at LIMIT ?"
)
_UPSERT_CALENDAR = (
    "INSERT INTO calendars(name, body, digest, applied_at) VALUES (?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET body=excluded.body, digest=excluded.digest, applied_at=excluded.applied_at"
)
_UPSERT_SCHEDULE = (
    "INSERT INTO schedules(name, body, digest, applied_at, enabled, held, next_fire_at, next_key)"
    " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET body=excluded.body, digest=excluded.digest,"
    " applied_at=excluded.applied_at, enabled=excluded.enabled, held=excluded.held,"
    " next_fire_at=excluded.next_fire_at, next_key=excluded.next_key"
)
_INSERT_FIRE = "INSERT INTO fires(schedule, fire_at, due_at, fired_at, run_id, note) VALUES (?,?,?,?,?,?)"
_UPSERT_CHANGE = "INSERT OR REPLACE INTO schedule_changes(schedule, original_at, new_at, made_at) VALUES (?,?,?,?)"


@dataclass(slots=True)
class ScheduleRow:
    """A schedule's row: its definition and its state."""

    name: str
    body: str
    digest: str
    applied_at: float
    enabled: bool
    held: bool
    #: when the next fire starts (None: it has none), and that fire's key (its regular time)
    next_at: int | None
    next_key: int | None

    def values(self) -> tuple[Any, ...]:
        """The row's columns, in table order."""
        return (
            self.name,
            self.body,
            self.digest,
            self.applied_at,
            int(self.enabled),
            int(self.held),
            self.next_at,
            self.next_key,
        )


@dataclass(slots=True)
class ScheduleWrites:
    """The schedule rows one turn changed; written in the turn's transaction."""

    calendars: list[tuple[str, str, str, float]] = field(default_factory=list)
    #: schedules whose row is written from its latest state
    schedules: dict[str, ScheduleRow] = field(default_factory=dict)
    #: (schedule, fire_at, due_at, fired_at, run_id, note)
    fires: list[tuple[str, int, int, float, int, str]] = field(default_factory=list)
    #: (schedule, original_at, new_at, made_at)
    changes: list[tuple[str, int, int, float]] = field(default_factory=list)
    #: (schedule, original_at) of one-off changes that were used or withdrawn
    change_deletes: list[tuple[str, int]] = field(default_factory=list)
    #: schedules whose one-off changes all go (a changed definition)
    change_clears: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.calendars or self.schedules or self.fires or self.changes or self.change_deletes or self.change_clears
        )

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The statements to run, in order (a cleared change goes before a new one of the same schedule)."""
        return [
            (_UPSERT_CALENDAR, list(self.calendars)),
            (_UPSERT_SCHEDULE, [row.values() for row in self.schedules.values()]),
            ("DELETE FROM schedule_changes WHERE schedule=?", [(n,) for n in self.change_clears]),
            ("DELETE FROM schedule_changes WHERE schedule=? AND original_at=?", list(self.change_deletes)),
            (_UPSERT_CHANGE, list(self.changes)),
            (_INSERT_FIRE, list(self.fires)),
        ]


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything the schedule book holds, as read at takeover."""

    calendars: list[tuple[str, str, str]]
    schedules: list[ScheduleRow]
    changes: list[tuple[str, int, int]]


async def load(store: "Store") -> Loaded:
    """Read every calendar, schedule and one-off change (on the writer connection, at takeover)."""
    calendars = [
        (str(n), str(b), str(d)) for n, b, d in await store.read_for_write("SELECT name, body, digest FROM calendars")
    ]
    schedules = [
        ScheduleRow(str(r[0]), str(r[1]), str(r[2]), float(r[3]), bool(r[4]), bool(r[5]), r[6], r[7])
        for r in await store.read_for_write(
            "SELECT name, body, digest, applied_at, enabled, held, next_fire_at, next_key FROM schedules"
        )
    ]
    changes = [
        (str(s), int(o), int(n))
        for s, o, n in await store.read_for_write("SELECT schedule, original_at, new_at FROM schedule_changes")
    ]
    return Loaded(calendars, schedules, changes)


async def fired_runs(store: "Store", keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """The runs already started for these fires, as ``(schedule, fire_at) -> run ID``."""
    found: dict[tuple[str, int], str] = {}
    for schedule, fire_at in keys:
        rows = await store.read_for_write(
            "SELECT run_id FROM fires WHERE schedule=? AND fire_at=?", (schedule, fire_at)
        )
        if rows:
            found[(schedule, fire_at)] = str(rows[0][0])
    return found


class ScheduleQueries:
    """What the scheduler and the control API read (reader connection: committed state only)."""

    def __init__(self, store: "Store") -> None:
        self._store = store

    async def due(self, until: float, limit: int) -> list[tuple[str, int]]:
        """Enabled, unheld schedules whose next fire is at or before ``until``: ``(name, next fire)``, soonest first."""
        rows = await self._store.query(DUE_SQL, (until, limit))
        return [(str(r[0]), int(r[1])) for r in rows]

    async def calendars(self) -> dict[str, str]:
        """Every calendar's body, by name."""
        rows = await self._store.query("SELECT name, body FROM calendars ORDER BY name")
        return {str(r[0]): str(r[1]) for r in rows}

    async def schedules(self, name: str | None, after: str, limit: int) -> list[dict[str, Any]]:
        """Schedules with their state and one-off changes: one by name, or a page in name order after ``after``."""
        if name is not None:
            rows = await self._store.query(
                "SELECT name, body, enabled, held, next_fire_at, next_key FROM schedules WHERE name=?", (name,)
            )
        else:
            rows = await self._store.query(
                "SELECT name, body, enabled, held, next_fire_at, next_key FROM schedules WHERE name > ?"
                " ORDER BY name LIMIT ?",
                (after, limit),
            )
        out = []
        for r in rows:
            changes = await self._store.query(
                "SELECT original_at, new_at FROM schedule_changes WHERE schedule=? ORDER BY original_at", (r[0],)
            )
            out.append(
                {
                    "name": str(r[0]),
                    "body": str(r[1]),
                    "enabled": bool(r[2]),
                    "held": bool(r[3]),
                    "next_fire_at": r[4],
                    "next_key": r[5],
                    "changes": [[int(c[0]), int(c[1])] for c in changes],
                }
            )
        return out

    async def fires(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The latest fires of one schedule, newest first."""
        rows = await self._store.query(
            "SELECT fire_at, due_at, fired_at, run_id, note FROM fires WHERE schedule=? ORDER BY fire_at DESC LIMIT ?",
            (name, limit),
        )
        return [{"fire_at": r[0], "due_at": r[1], "fired_at": r[2], "run": str(r[3]), "note": r[4]} for r in rows]
