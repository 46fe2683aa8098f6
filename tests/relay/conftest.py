"""Relay fixtures: relay subprocesses killed at teardown, and the test as the manager of its server ID."""

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import subjects
from tests.relay.helpers import Manager, RelayProcess


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Start relays for this test; each is killed at teardown if it still runs."""
    started: list[RelayProcess] = []

    def start(name: str, nats_url: str, db: Path | None = None, **kw: Any) -> RelayProcess:
        relay = RelayProcess(name, nats_url, db or tmp_path / f"{name}.db", **kw)
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
async def manager(nc: Client, sid: str) -> AsyncIterator[Manager]:
    """Listen on ``subjects.events(sid)`` as the manager would."""
    sub = await nc.subscribe(subjects.events(sid))
    yield Manager(sub)
    await sub.unsubscribe()
