"""A clock the test moves, a manager in the test's loop that schedules by it, and a few schedule definitions."""

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ekiden.client import ApiClient, Endpoint
from engine.service import serve
from engine.settings import ManagerSettings
from runtime.bus import BusSettings
from tests.engine.helpers import wait_for_manager


class ManualClock:
    """Wall-clock time that moves only when the test says so."""

    def __init__(self, start: float) -> None:
        self._now = start
        self._moved = asyncio.Condition()

    def now(self) -> float:
        """The current fake time."""
        return self._now

    async def sleep_until(self, t: float) -> None:
        """Wait until the test moves the clock to ``t`` or later."""
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= t)

    async def set(self, t: float) -> None:
        """Move the clock (forward) to ``t`` and wake every sleeper."""
        async with self._moved:
            self._now = max(self._now, t)
            self._moved.notify_all()


def at(text: str, zone: str = "UTC") -> float:
    """Epoch seconds of a local ``YYYY-MM-DD HH:MM[:SS]`` in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


@asynccontextmanager
async def scheduling_manager(site: Path, sid: str, nats_url: str, clock: ManualClock) -> AsyncIterator[ApiClient]:
    """Run a manager in this loop whose scheduler follows ``clock``; yield an API client that reaches it."""
    settings = ManagerSettings(site_dir=site, server_id=sid, bus=BusSettings(url=nats_url), lease_s=3.0)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(serve(settings, stop, clock))
        client = await ApiClient.connect(Endpoint(nats_url, sid), timeout_s=10)
        try:
            await wait_for_manager(client)
            yield client
        finally:
            await client.close()
            stop.set()


def jobnet(name: str = "daily") -> dict[str, Any]:
    """A one-job jobnet on an agent nobody runs: its runs start and wait, which is all these tests need."""
    return {name: {"job": [{"id": "a", "cmd": ["true"], "agent": "nobody"}]}}


async def wait_for_fires(api: ApiClient, name: str, count: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """Poll the fires of a schedule until there are ``count``; oldest first."""
    deadline = time.monotonic() + timeout_s
    while True:
        found: list[dict[str, Any]] = await api.call("fires", name=name, limit=1000)
        if len(found) >= count:
            return list(reversed(found))
        if time.monotonic() > deadline:
            raise AssertionError(f"schedule {name}: {len(found)} fires, expected {count}: {found}")
        await asyncio.sleep(0.05)


def site_rows(site: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the site database, read as another process would."""
    with sqlite3.connect(f"file:{site / 'site.db'}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()
