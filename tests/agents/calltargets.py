"""Functions that ``call`` jobs in the executor tests name."""

import asyncio
import sys


def add(a: int, b: int) -> int:
    """Sync: the sum is the exit code."""
    return a + b


async def nap(seconds: float = 0.0) -> None:
    """Async: sleeps, then exit 0."""
    await asyncio.sleep(seconds)


def boom(message: str) -> None:
    """Sync: raises."""
    raise RuntimeError(message)


async def aboom() -> None:
    """Async: raises."""
    raise ValueError("async failure")


def leave(code: int) -> None:
    """Sync: exits through SystemExit."""
    sys.exit(code)


def greet(name: str) -> str:
    """Sync: a string result becomes the output."""
    return f"hello {name}"


NOT_CALLABLE = 42
