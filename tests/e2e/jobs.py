"""Call targets of the fault tests' jobs: each leaves one line in a file, so a job that ran twice shows."""

import asyncio
import os


async def mark(path: str, line: str, delay_s: float = 0.0) -> None:
    """Sleep ``delay_s``, then append ``line`` to the file at ``path``."""
    await asyncio.sleep(delay_s)
    await asyncio.to_thread(_append, path, line)


def _append(path: str, line: str) -> None:
    # One write(2) with O_APPEND: lines from concurrent jobs on two workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)
