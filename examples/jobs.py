"""Callables that the example jobnets run inside destination workers (``call = "examples.jobs:NAME"``)."""

import asyncio
import random


async def extract(region: str, rows: int = 1000) -> int:
    """Pretend to extract ``rows`` rows of one region; exit code 0."""
    await asyncio.sleep(random.uniform(0.05, 0.3))
    return 0


def checksum(text: str) -> int:
    """A synchronous job (runs in a worker thread): exit code 0 when the text is not empty."""
    return 0 if sum(text.encode()) > 0 else 1


async def noop() -> None:
    """Does nothing: for measuring the engine without process start-up."""
