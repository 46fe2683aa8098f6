"""The site database: the only record of truth. The only module of the manager that touches SQLite.

SQLite in WAL mode with ``synchronous=FULL``. One connection writes (group commit: one transaction
for every change that is ready in a loop tick, each fenced by the lease), another reads for the API, so
a query never sees a transaction half done.

Here: opening and migrating the file, the lease and the fence, the group commit (the statements of what a
turn changed come from ``engine.changes``) and what recovery loads. The API's queries are
``engine.queries``.
"""

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from engine.changes import Changes
from engine.errors import LeaseLostError, StoreError
from engine.migrations import MIGRATIONS, SCHEMA_VERSION
from engine.sitefile import LEASE_NAME, MANAGER_ROW_KEPT_S

logger = logging.getLogger(__name__)

#: Tables whose every write is fenced by the lease (see ``Store.arm_fence``).
FENCED_TABLES = (
    "jobnet_versions",
    "destinations",
    "agent_definitions",
    "runs",
    "jobs",
    "attempts",
    "agents",
    "site_settings",
    "audit",
    "lock_holders",
    "calendars",
    "schedules",
    "fires",
    "schedule_changes",
    "run_flow",
    "job_flow",
    "run_events",
)
#: The attempt columns recovery reads, in the order ``engine.core`` builds attempts from.
_ATTEMPT_COLUMNS = (
    "a.attempt_id, a.n, a.target, a.dispatched_at, a.accepted_at, a.started_at, a.host, a.pid, a.status, a.queued_at"
)
_FENCE_MESSAGE = "ekiden fence: this manager no longer holds the lease"
_UPSERT_MANAGER = (
    "INSERT INTO managers(holder, host, pid, role, started_at, seen_at) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT(holder) DO UPDATE SET role=excluded.role, seen_at=excluded.seen_at"
)


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds the site, at which epoch, until when (wall-clock seconds)."""

    holder: str
    host: str
    pid: int
    epoch: int
    expires_at: float
    acquired_at: float


class Store:
    """The site database, open for one manager process."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._w = writer
        self._r = reader

    @classmethod
    async def open(cls, path: Path) -> "Store":
        """Open (creating and migrating if needed) the site database at ``path``.

        Raises:
            StoreError: the file is newer than this code, or not a site database.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            await _configure(writer)
            await _migrate(writer)
            # From here on, the first write of a transaction opens it (BEGIN IMMEDIATE) in the same round
            # trip to the database thread: a commit costs one round trip fewer.
            writer.isolation_level = "IMMEDIATE"
            reader = await aiosqlite.connect(path, isolation_level=None)
            await _configure(reader)
            await reader.execute("PRAGMA query_only=ON")
            reader.row_factory = sqlite3.Row
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        """Close both connections."""
        await self._r.close()
        await self._w.close()

    # -- the lease -------------------------------------------------------------------------------

    async def lease(self) -> Lease | None:
        """The current lease, whoever holds it."""
        async with self._r.execute(
            "SELECT holder, host, pid, epoch, expires_at, acquired_at FROM lease WHERE name=?", (LEASE_NAME,)
        ) as cur:
            row = await cur.fetchone()
        return Lease(*row) if row else None

    async def try_acquire(self, holder: str, host: str, pid: int, now: float, lease_s: float) -> Lease | None:
        """Take the lease if it is free or expired, bumping the epoch; None if someone else holds it.

        A look without a lock comes first, so a standby polling a healthy site never makes the active
        manager wait for the write lock. A write lock that another process keeps past the busy timeout (a
        manager stopped in the middle of a commit) counts as held: nobody can write until it resumes.
        """
        current = await self.lease()
        if current is not None and current.holder != holder and current.expires_at > now:
            return None
        try:
            await self._w.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            logger.warning("lease expired but the site database stays locked by another process: cannot take it yet")
            return None
        try:
            async with self._w.execute(
                "SELECT holder, epoch, expires_at FROM lease WHERE name=?", (LEASE_NAME,)
            ) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] != holder and row[2] > now:
                await self._w.execute("ROLLBACK")
                return None
            epoch = (row[1] if row else 0) + 1
            await self._w.execute(
                "INSERT OR REPLACE INTO lease(name, holder, host, pid, epoch, expires_at, acquired_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (LEASE_NAME, holder, host, pid, epoch, now + lease_s, now),
            )
            await self._w.execute(_UPSERT_MANAGER, (holder, host, pid, "active", now, now))
            await self._w.execute("DELETE FROM managers WHERE seen_at < ?", (now - MANAGER_ROW_KEPT_S,))
            await self._w.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        return Lease(holder, host, pid, epoch, now + lease_s, now)

    async def renew(self, holder: str, epoch: int, expires_at: float) -> None:
        """Extend the lease.

        Raises:
            LeaseLostError: this holder no longer holds it at this epoch.
        """
        await self._w.execute("BEGIN IMMEDIATE")
        try:
            await self._fence(holder, epoch, expires_at)
            await self._w.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    async def release(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (clean stop) so a standby need not wait for it to expire."""
        await self._w.execute(
            "UPDATE lease SET expires_at=0 WHERE name=? AND holder=? AND epoch=?", (LEASE_NAME, holder, epoch)
        )
        await self._w.commit()

    async def mark_seen(self, holder: str, host: str, pid: int, role: str, now: float) -> None:
        """Record that this manager process is alive as ``role`` (standby or stopped) for the operator's view.

        Best effort: a site locked by another process's commit is skipped this time.
        """
        try:
            await self._w.execute(_UPSERT_MANAGER, (holder, host, pid, role, now, now))
            await self._w.commit()
        except sqlite3.OperationalError as exc:
            await self._rollback()
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            logger.debug("managers row of %s not updated: site database busy", holder)

    async def claim_server_id(self, server_id: str) -> None:
        """Record the site's server ID, or check that the site already carries this one.

        Raises:
            StoreError: the site belongs to another server ID (its results would be routed elsewhere).
        """
        await self._w.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('server_id', ?)", (server_id,))
        await self._w.commit()
        async with self._w.execute("SELECT value FROM meta WHERE key='server_id'") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != server_id:
            found = row[0] if row else None
            raise StoreError(f"site {self.path.parent} belongs to server id {found!r}, not {server_id!r}")

    async def site_settings(self) -> dict[str, str]:
        """Every site setting (maintenance mode, ...) as committed."""
        async with self._w.execute("SELECT key, value FROM site_settings") as cur:
            return {str(k): str(v) async for k, v in cur}

    async def _fence(self, holder: str, epoch: int, expires_at: float) -> None:
        cur = await self._w.execute(
            "UPDATE lease SET expires_at=? WHERE name=? AND holder=? AND epoch=?",
            (expires_at, LEASE_NAME, holder, epoch),
        )
        if cur.rowcount != 1:
            raise LeaseLostError(holder, epoch)
        # The active manager is seen on every renewal: the operator's view costs no write of its own.
        await self._w.execute("UPDATE managers SET role='active', seen_at=? WHERE holder=?", (time.time(), holder))

    async def _rollback(self) -> None:
        await self._w.rollback()  # a no-op when no transaction is open

    # -- group commit ----------------------------------------------------------------------------

    async def arm_fence(self, epoch: int) -> None:
        """Fence every later write of this connection by the lease at ``epoch``.

        Temporary triggers (this connection's only) make any insert, update or delete on the site's
        tables abort unless the lease row still carries ``epoch``, so the check costs no extra round trip
        per commit and no write can slip past it.
        """
        w = self._w
        await w.execute("CREATE TEMP TABLE IF NOT EXISTS fence(epoch INTEGER NOT NULL)")
        await w.execute("DELETE FROM temp.fence")
        await w.execute("INSERT INTO temp.fence(epoch) VALUES (?)", (epoch,))
        await w.commit()
        for table in FENCED_TABLES:
            for op in ("INSERT", "UPDATE", "DELETE"):
                await w.execute(
                    f"CREATE TEMP TRIGGER IF NOT EXISTS fence_{table}_{op.lower()} BEFORE {op} ON main.{table}"
                    f" WHEN (SELECT epoch FROM main.lease WHERE name='{LEASE_NAME}')"
                    " IS NOT (SELECT epoch FROM temp.fence)"
                    f" BEGIN SELECT RAISE(ABORT, '{_FENCE_MESSAGE}'); END"
                )

    async def commit(self, changes: Changes, holder: str, epoch: int, renew_until: float | None) -> None:
        """Write every change in one transaction; renew the lease in it when ``renew_until`` is given.

        Raises:
            LeaseLostError: the lease is no longer ours at ``epoch``; nothing was written.
        """
        w = self._w
        try:
            if renew_until is not None:
                await self._fence(holder, epoch, renew_until)
            for sql, rows in changes.statements():
                if rows:
                    await w.executemany(sql, rows)
            await w.commit()
        except sqlite3.IntegrityError as exc:
            await self._rollback()
            if _FENCE_MESSAGE in str(exc):
                raise LeaseLostError(holder, epoch) from exc
            raise
        except BaseException:
            await self._rollback()
            raise
        for _, _, attempt in changes.attempts.values():
            attempt.output = None

    # -- loading at takeover ---------------------------------------------------------------------

    async def latest_definitions(self) -> tuple[dict[str, tuple[int, str, str]], dict[str, str]]:
        """Latest version of every jobnet as ``name -> (version, body, digest)``, and every destination body."""
        nets: dict[str, tuple[int, str, str]] = {}
        async with self._w.execute(
            "SELECT name, version, body, digest FROM jobnet_versions v WHERE version ="
            " (SELECT MAX(version) FROM jobnet_versions WHERE name = v.name)"
        ) as cur:
            async for name, version, body, digest in cur:
                nets[name] = (version, body, digest)
        dests: dict[str, str] = {}
        async with self._w.execute("SELECT name, body FROM destinations") as cur:
            async for name, body in cur:
                dests[name] = body
        return nets, dests

    async def round_attempts(self, run_id: str, job_id: str, n: int) -> list[tuple[Any, ...]]:
        """A broadcast job's member attempts of round ``n``, as the columns of ``_ATTEMPT_COLUMNS``."""
        async with self._w.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts a WHERE a.run_id=? AND a.job_id=? AND a.n=?",
            (int(run_id), job_id, n),
        ) as cur:
            return [tuple(row) async for row in cur]

    async def agent_definitions(self) -> list[tuple[str, str, str]]:
        """Every applied agent setting and agent group as ``(kind, name, body)``."""
        async with self._w.execute("SELECT kind, name, body FROM agent_definitions") as cur:
            return [(str(k), str(n), str(b)) async for k, n, b in cur]

    async def lock_holders(self) -> list[tuple[str, str, int]]:
        """Every lock holder as ``(lock, holder, weight)``."""
        async with self._w.execute("SELECT lock, holder, weight FROM lock_holders") as cur:
            return [(str(lk), str(h), int(w)) async for lk, h, w in cur]

    async def agent_rows(self) -> list[tuple[str, str, str, float]]:
        """Every registered agent as ``(name, state, inventory, used_at)``."""
        async with self._w.execute("SELECT name, state, inventory, used_at FROM agents") as cur:
            return [(str(n), str(s), str(i), float(u)) async for n, s, i, u in cur]

    async def jobnet_version_body(self, name: str, version: int) -> str | None:
        """The body of one applied version of a jobnet."""
        async with self._w.execute(
            "SELECT body FROM jobnet_versions WHERE name=? AND version=?", (name, version)
        ) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def last_run_id(self) -> int:
        """The highest run number ever used."""
        async with self._w.execute("SELECT COALESCE(MAX(run_id), 0) FROM runs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Every run still running, with its jobs and their current attempts, for recovery."""
        return await self.load_runs(None)

    async def run_by_dedupe_key(self, key: str) -> str | None:
        """The run started with this dedupe key, if any."""
        async with self._w.execute("SELECT run_id FROM runs WHERE dedupe_key=?", (key,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def load_runs(self, run_ids: list[int] | None) -> list[dict[str, Any]]:
        """Runs with their jobs and their current attempts: these IDs, or every running one (``None``)."""
        runs: list[dict[str, Any]] = []
        where, params = (
            ("state='running'", ())
            if run_ids is None
            else (
                f"run_id IN ({','.join('?' * len(run_ids))})",
                tuple(run_ids),
            )
        )
        async with self._w.execute(
            "SELECT run_id, jobnet, version, tenant, params, created_at, state, ended_at, held, dedupe_key,"
            f" stopping, reopened_at FROM runs WHERE {where}",
            params,
        ) as cur:
            async for row in cur:
                run_id, jobnet, version, tenant, run_params, created_at, state, ended_at, held, key = row[:10]
                runs.append(
                    {
                        "run_id": str(run_id),
                        "jobnet": jobnet,
                        "version": version,
                        "tenant": tenant,
                        "params": orjson.loads(run_params),
                        "created_at": created_at,
                        "state": state,
                        "ended_at": ended_at,
                        "held": bool(held),
                        "dedupe_key": key,
                        "stopping": bool(row[10]),
                        "reopened_at": row[11],
                        "jobs": {},
                    }
                )
        for run in runs:
            async with self._w.execute(
                "SELECT j.job_id, j.state, j.attempts, j.exit_code, j.started_at, j.ended_at, j.reason, j.bypassed,"
                f" {_ATTEMPT_COLUMNS}"
                " FROM jobs j LEFT JOIN attempts a ON a.attempt_id = j.attempt_id WHERE j.run_id=?",
                (int(run["run_id"]),),
            ) as cur:
                async for row in cur:
                    run["jobs"][row[0]] = row[1:]
        return runs

    # -- queries for the API (reader connection) -------------------------------------------------

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query on the reader connection."""
        async with self._r.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def read_for_write(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a query on the writer connection: what the core reads between its own commits."""
        async with self._w.execute(sql, params) as cur:
            return [tuple(row) async for row in cur]


async def _configure(db: aiosqlite.Connection) -> None:
    await db.execute("PRAGMA busy_timeout=10000")
    for attempt in range(_WAL_SWITCH_TRIES):
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            # Switching a new file to WAL needs it alone: when the two managers of a pair start together,
            # SQLite answers one of them 'locked' at once rather than wait (it would deadlock).
            busy = exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or attempt == _WAL_SWITCH_TRIES - 1:
                raise
            await asyncio.sleep(0.05)
    await db.execute("PRAGMA synchronous=FULL")
    await db.execute("PRAGMA foreign_keys=ON")


#: Tries at switching a new site database to WAL while another process opens it too.
_WAL_SWITCH_TRIES = 100


async def _schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'") as cur:
        if await cur.fetchone() is None:
            return 0
    async with db.execute("SELECT value FROM meta WHERE key='schema_version'") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _migrate(db: aiosqlite.Connection) -> None:
    while True:
        # The version is read under the write lock: the two managers of a pair often start together on a
        # new site, and the one that waited must not apply again what the other just applied.
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = await _schema_version(db)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"site database schema {version} is newer than this Ekiden ({SCHEMA_VERSION}); upgrade Ekiden"
                )
            if version == SCHEMA_VERSION:
                await db.execute("ROLLBACK")
                return
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    await db.execute(statement)
            await db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(version + 1),)
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        logger.info("site database migrated to schema %d", version + 1)
