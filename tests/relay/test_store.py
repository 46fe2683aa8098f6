"""The relay's SQLite store on real files: durability across reopen, dedupe, pruning, schema version."""

import sqlite3
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.store import SCHEMA_VERSION, HeldDispatch, RelayStore
from schemas.messages import Envelope, Kind, event_id


class Clock:
    """Wall-clock seconds that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def held(i: int, dest: str = "d1") -> HeldDispatch:
    return HeldDispatch(f"s:r:j{i}:1", dest, f"body{i}".encode())


def event(i: int) -> Envelope:
    eid = event_id(f"s:r:j{i}:1", Kind.FINISHED)
    return Envelope(Kind.FINISHED, "s", {"eid": eid, "attempt_id": f"s:r:j{i}:1", "out": b"\x00\xff"}, ts=1.0)


async def test_a_new_file_is_in_wal_mode_at_the_current_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with await RelayStore.open(db) as store:
        assert await store.schema_version() == SCHEMA_VERSION
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


async def test_held_dispatches_survive_a_reopen_and_are_stored_once(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with await RelayStore.open(db) as store:
        await store.hold([held(1), held(2, "d2")])
        await store.hold([held(1), held(3)])  # a redelivered attempt does not make a second row
        assert store.known(["s:r:j1:1", "s:r:j9:1", "s:r:j3:1"]) == {"s:r:j1:1", "s:r:j3:1"}
    async with await RelayStore.open(db) as store:
        assert await store.held() == [held(1), held(2, "d2"), held(3)]
        assert store.known(["s:r:j1:1", "s:r:j9:1", "s:r:j3:1"]) == {"s:r:j1:1", "s:r:j3:1"}


async def test_known_answers_for_thousands_of_ids(tmp_path: Path) -> None:
    async with await RelayStore.open(tmp_path / "relay.db") as store:
        await store.hold([held(i) for i in range(0, 3000, 2)])
        found = store.known([held(i).attempt_id for i in range(3000)])
    assert found == {held(i).attempt_id for i in range(0, 3000, 2)}


async def test_forwarded_dispatches_leave_the_backlog_and_are_pruned_after_the_retention(tmp_path: Path) -> None:
    clock = Clock()
    async with await RelayStore.open(tmp_path / "relay.db", clock=clock) as store:
        await store.hold([held(1), held(2), held(3)])
        await store.mark_forwarded(["s:r:j1:1", "s:r:j2:1"])
        assert await store.held() == [held(3)]
        clock.now += 30
        await store.mark_forwarded(["s:r:j3:1"])

        clock.now += 3600 - 10  # j1 and j2 forwarded 3620 s ago, j3 3590 s ago
        assert await store.prune_forwarded(3600) == 2
        assert store.known(["s:r:j1:1", "s:r:j2:1", "s:r:j3:1"]) == {"s:r:j3:1"}
        assert await store.prune_forwarded(3600) == 0


async def test_events_persist_until_deleted(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with await RelayStore.open(db) as store:
        await store.save([event(1), event(2)])
        await store.save([event(2), event(3)])  # a worker's resend of an event still held
    async with await RelayStore.open(db) as store:
        assert await store.events() == [event(1), event(2), event(3)]
        await store.delete([event(2).payload["eid"], "unknown"])
    async with await RelayStore.open(db) as store:
        assert await store.events() == [event(1), event(3)]


async def test_a_file_from_a_newer_relay_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    async with await RelayStore.open(db):
        pass
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer"):
        await RelayStore.open(db)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    db.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError):
        await RelayStore.open(db)
