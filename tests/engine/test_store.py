"""The site database: schema, lease, and the fence that stops a manager that lost its lease."""

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from engine.changes import Changes
from engine.errors import LeaseLostError, StoreError
from engine.migrations import SCHEMA_VERSION
from engine.runs import Run
from engine.store import Store
from schemas.definitions import parse_definitions

JOBNET = parse_definitions({"jobnet": {"n": {"job": [{"id": "a", "cmd": ["true"], "agent": "x"}]}}}).jobnets["n"]


async def test_new_site_is_migrated_wal_and_full_sync(site_dir: Path) -> None:
    store = await Store.open(site_dir / "site.db")
    await store.close()
    with sqlite3.connect(site_dir / "site.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    reopened = await Store.open(site_dir / "site.db")
    await reopened.close()


async def test_a_site_from_a_newer_ekiden_is_refused(site_dir: Path) -> None:
    store = await Store.open(site_dir / "site.db")
    await store.close()
    with sqlite3.connect(site_dir / "site.db") as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(site_dir / "site.db")


async def test_lease_is_exclusive_until_it_expires_and_each_take_bumps_the_epoch(site_dir: Path) -> None:
    a = await Store.open(site_dir / "site.db")
    b = await Store.open(site_dir / "site.db")
    try:
        now = time.time()
        first = await a.try_acquire("a", "host-a", 1, now, lease_s=5)
        assert first is not None and first.epoch == 1
        assert await b.try_acquire("b", "host-b", 2, now + 1, lease_s=5) is None
        second = await b.try_acquire("b", "host-b", 2, now + 6, lease_s=5)
        assert second is not None and second.epoch == 2
        current = await a.lease()
        assert current is not None and current.holder == "b"
    finally:
        await a.close()
        await b.close()


async def test_a_manager_that_lost_its_lease_writes_nothing(site_dir: Path) -> None:
    old = await Store.open(site_dir / "site.db")
    new = await Store.open(site_dir / "site.db")
    try:
        lease = await old.try_acquire("old", "h", 1, time.time(), lease_s=0.01)
        assert lease is not None
        await old.arm_fence(lease.epoch)
        run = Run.new("1", JOBNET, 1, time.time(), {})
        changes = Changes()
        changes.run(run)
        await old.commit(changes, "old", lease.epoch, None)
        await asyncio.sleep(0.02)
        taken = await new.try_acquire("new", "h", 2, time.time(), lease_s=5)
        assert taken is not None and taken.epoch == lease.epoch + 1
        late = Changes()
        run2 = Run.new("2", JOBNET, 1, time.time(), {})
        late.run(run2)
        with pytest.raises(LeaseLostError):
            await old.commit(late, "old", lease.epoch, None)
        with pytest.raises(LeaseLostError):
            await old.commit(Changes(), "old", lease.epoch, time.time() + 5)
    finally:
        await old.close()
        await new.close()
    with sqlite3.connect(site_dir / "site.db") as db:
        assert db.execute("SELECT run_id FROM runs").fetchall() == [(1,)]
