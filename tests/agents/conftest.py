"""Fixtures of the agents tests: real agent processes that are always cleaned up."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.agents.helpers import AgentProcess

Spawn = Callable[..., AgentProcess]


@pytest.fixture
async def spawn(nats_url: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``python -m agents`` with the given options (``--nats`` added); stopped at teardown if still up.

    Async, so the event loop runs while agents drain at teardown and the tests' event sinks keep acking.
    """
    procs: list[AgentProcess] = []

    def start(*args: str) -> AgentProcess:
        proc = AgentProcess([*args, "--nats", nats_url, "--log-level", "DEBUG"], tmp_path / f"agent{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        await proc.stop()
