"""Fixtures shared by every test: a real nats-server for the session, a client per test, unique names."""

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from runtime.bus import BusSettings, connect
from runtime.natsserver import NatsServer


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server with JetStream on a free loopback port, for the whole session."""
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of the session's nats-server."""
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A client of the session's server, drained when the test ends."""
    client = await connect(BusSettings(url=nats_url, name="test", connect_deadline_s=5))
    yield client
    if not client.is_closed:
        await client.drain()


@pytest.fixture
def uid() -> str:
    """A short unique token; tests build their server IDs, relay and destination names from it."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def sid(uid: str) -> str:
    """A server ID no other test uses, so tests share the server without crossing."""
    return f"t{uid}"


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """An empty site directory."""
    path = tmp_path / "site"
    path.mkdir()
    return path
