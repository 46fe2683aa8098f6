"""The relay's own SQLite database: dispatches it holds or forwarded, and events the manager has not acked.

This is the only module that imports aiosqlite. The file is opened in WAL mode with ``synchronous=FULL``,
so a row is on disk when its transaction returns: the relay acks a dispatch or an event only after that.
Writes are grouped (one transaction and one ``executemany`` for a whole batch), never one per message.

Tables:

- ``dispatches``: one row per attempt ID (the dedupe memory). ``held`` until JetStream acked the publish,
  then ``forwarded``; forwarded rows are pruned after a retention so the table stays bounded.
- ``events``: events taken from workers, kept until the manager acks them (``runtime.outbox.Persistence``).
- ``meta``: the schema version, so a later release can migrate an older file in place.
"""

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from relay.errors import StoreError
from runtime.outbox import eid_of
from schemas.codec import decode, encode_one
from schemas.errors import WireError
from schemas.messages import Envelope

logger = logging.getLogger(__name__)

#: Milliseconds SQLite waits for a lock held by another connection before it gives up.
BUSY_TIMEOUT_MS = 5000

#: Schema migrations; entry ``n`` takes the file from version ``n`` to ``n + 1``. Append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE dispatches (
            attempt_id TEXT PRIMARY KEY,
            dest TEXT NOT NULL,
            body BLOB NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('held', 'forwarded')),
            received_at REAL NOT NULL,
            forwarded_at REAL
        )""",
        "CREATE INDEX dispatches_by_state ON dispatches (state, forwarded_at)",
        """CREATE TABLE events (
            eid TEXT PRIMARY KEY,
            body BLOB NOT NULL,
            received_at REAL NOT NULL
        )""",
    ),
)
#: Schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True, slots=True)
class HeldDispatch:
    """A dispatch the relay holds: its attempt ID, destination and encoded envelope (the JetStream body)."""

    attempt_id: str
    dest: str
    body: bytes


class RelayStore:
    """The relay's database. Open it with ``await RelayStore.open(path)`` (or ``async with``)."""

    def __init__(self, db: aiosqlite.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._db = db
        self._path = path
        self._clock = clock
        self._closed = False
        # One connection is shared by intake, forwarder and outbox; a transaction must not interleave.
        self._lock = asyncio.Lock()
        # Every attempt ID in the dispatches table, so the intake's dedupe costs no query: this process is
        # the only writer, and the set changes only with the rows (hold adds, prune removes).
        self._ids: set[str] = set()

    @classmethod
    async def open(cls, path: Path, clock: Callable[[], float] = time.time) -> "RelayStore":
        """Open (creating or migrating) the database at ``path``.

        Args:
            path: the SQLite file, on a local disk (WAL does not work on NFS or SMB); its directory is created.
            clock: wall-clock seconds, for ``received_at`` and ``forwarded_at`` (tests inject their own).

        Raises:
            StoreError: the file cannot be opened, is not in WAL mode, or has a newer schema version.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except Exception as exc:  # sqlite3 and OS errors alike: the file cannot be used
            raise StoreError(path, f"cannot open: {exc}") from exc
        store = cls(db, path, clock)
        try:
            await store._configure()
            await store._migrate()
            store._ids = {row[0] for row in await db.execute_fetchall("SELECT attempt_id FROM dispatches")}
            # From here on, a write statement opens its transaction (BEGIN IMMEDIATE) in its own round trip.
            db.isolation_level = "IMMEDIATE"
        except sqlite3.Error as exc:  # not a database, read-only, locked by another writer...
            await db.close()
            raise StoreError(path, str(exc)) from exc
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        """Close the database; safe to call more than once."""
        if not self._closed:
            self._closed = True
            await self._db.close()

    async def __aenter__(self) -> "RelayStore":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- dispatches ---------------------------------------------------------------------------------

    def known(self, attempt_ids: Sequence[str]) -> set[str]:
        """The attempt IDs among ``attempt_ids`` that this relay holds or forwarded within the retention."""
        return self._ids.intersection(attempt_ids)

    async def hold(self, dispatches: Sequence[HeldDispatch]) -> None:
        """Commit new dispatches as held, in one transaction; an attempt ID already stored is left as it is."""
        if not dispatches:
            return
        now = self._clock()
        rows = [(d.attempt_id, d.dest, d.body, now) for d in dispatches]
        await self._write(
            "INSERT OR IGNORE INTO dispatches (attempt_id, dest, body, state, received_at) VALUES (?, ?, ?, 'held', ?)",
            rows,
        )
        self._ids.update(d.attempt_id for d in dispatches)

    async def held(self) -> list[HeldDispatch]:
        """Every dispatch not yet forwarded, oldest first (loaded at start-up)."""
        rows = await self._db.execute_fetchall(
            "SELECT attempt_id, dest, body FROM dispatches WHERE state = 'held' ORDER BY received_at, rowid"
        )
        return [HeldDispatch(row[0], row[1], bytes(row[2])) for row in rows]

    async def mark_forwarded(self, attempt_ids: Iterable[str]) -> None:
        """Record, in one transaction, that JetStream acked these dispatches."""
        now = self._clock()
        rows = [(now, aid) for aid in attempt_ids]
        if not rows:
            return
        await self._write("UPDATE dispatches SET state = 'forwarded', forwarded_at = ? WHERE attempt_id = ?", rows)

    async def prune_forwarded(self, retention_s: float) -> int:
        """Forget dispatches forwarded more than ``retention_s`` ago; return how many rows went."""
        cutoff = self._clock() - retention_s
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "DELETE FROM dispatches WHERE state = 'forwarded' AND forwarded_at < ? RETURNING attempt_id", (cutoff,)
            )
        pruned = [row[0] for row in rows]
        self._ids.difference_update(pruned)
        return len(pruned)

    # -- events (runtime.outbox.Persistence) --------------------------------------------------------

    async def save(self, envelopes: list[Envelope]) -> None:
        """Store events durably in one transaction; an event ID already stored is left as it is."""
        if not envelopes:
            return
        now = self._clock()
        rows = [(eid_of(env), encode_one(env), now) for env in envelopes]
        await self._write("INSERT OR IGNORE INTO events (eid, body, received_at) VALUES (?, ?, ?)", rows)

    async def delete(self, eids: list[str]) -> None:
        """Forget events the manager acked, in one transaction."""
        if not eids:
            return
        await self._write("DELETE FROM events WHERE eid = ?", [(eid,) for eid in eids])

    async def events(self) -> list[Envelope]:
        """Every event not yet acked, oldest first (loaded at start-up)."""
        rows = await self._db.execute_fetchall("SELECT eid, body FROM events ORDER BY received_at, rowid")
        envelopes: list[Envelope] = []
        for eid, body in rows:
            try:
                envelopes.extend(decode(bytes(body)))
            except WireError as exc:  # only a damaged file gets here; one bad row must not stop the relay
                logger.error("%s: stored event %s does not decode (%s); skipped", self._path, eid, exc)
        return envelopes

    # -- internals ----------------------------------------------------------------------------------

    async def _configure(self) -> None:
        rows = await self._db.execute_fetchall("PRAGMA journal_mode=WAL")
        mode = str(next(iter(rows))[0]).lower()
        if mode != "wal":
            raise StoreError(self._path, f"journal mode is {mode!r}, not WAL (is it on a network file system?)")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(self._path, f"schema version {version} is newer than this relay's {SCHEMA_VERSION}")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            async with self._transaction() as db:
                for statement in _MIGRATIONS[target - 1]:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )
            logger.info("%s: schema at version %d", self._path, target)

    async def schema_version(self) -> int:
        """The schema version recorded in the file (0 for a new file)."""
        rows = await self._db.execute_fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
        row = next(iter(rows), None)
        return int(row[0]) if row is not None else 0

    async def _write(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """One write transaction of ``sql`` over ``rows``; SQLite errors become ``StoreError``.

        The statement opens the transaction itself (``BEGIN IMMEDIATE``, see ``open``), so it costs two round
        trips to the database thread, not three: this runs for every dispatch and every event.
        """
        async with self._lock:
            try:
                try:
                    await self._db.executemany(sql, rows)
                    await self._db.commit()
                except BaseException:
                    await self._db.rollback()  # a no-op when nothing is open
                    raise
            except sqlite3.Error as exc:
                raise StoreError(self._path, str(exc)) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; SQLite errors become ``StoreError``."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    await self._db.commit()
                except BaseException:
                    # rollback() is a no-op when nothing is open, so a cancelled COMMIT that did land stays.
                    await self._db.rollback()
                    raise
            except sqlite3.Error as exc:
                raise StoreError(self._path, str(exc)) from exc
