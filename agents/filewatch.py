"""The call a ``filewatch`` unit runs on its agent: wait until a file appears (and is stable), or time out.

The manager builds a file watch as an ordinary call job (``agents.filewatch:watch``), so an agent needs no
protocol of its own for it: the call polls the file, and its end is the unit's end (exit 0 when the file is
there, a failure naming the path when the timeout passed). Killing the job cancels the wait.
"""

import asyncio
import os
import time

from schemas.units import FILEWATCH_PATH_VAR, FILEWATCH_SIZE_VAR
from schemas.variables import var_line


async def watch(path: str, timeout_s: float, stable_s: float = 0.0, poll_s: float = 1.0) -> str:
    """Wait until ``path`` exists and its size and modification time have not changed for ``stable_s``.

    Returns:
        What was found, with the marked lines that set ``FILEWATCH_PATH`` and ``FILEWATCH_SIZE``.

    Raises:
        SystemExit: the timeout passed first (the job fails with that message).
    """
    deadline = time.monotonic() + timeout_s
    seen: tuple[int, int] | None = None
    since = 0.0
    while True:
        now = time.monotonic()
        try:
            st = os.stat(path)
        except OSError:
            seen = None
        else:
            mark = (st.st_size, st.st_mtime_ns)
            if mark != seen:
                seen, since = mark, now
            if now - since >= stable_s:
                lines = [f"found {path} ({st.st_size} bytes)", var_line(FILEWATCH_PATH_VAR, path)]
                return "\n".join([*lines, var_line(FILEWATCH_SIZE_VAR, str(st.st_size))]) + "\n"
        if now >= deadline:
            state = "not stable" if seen is not None else "not there"
            raise SystemExit(f"{path}: {state} after {timeout_s:g}s")
        await asyncio.sleep(max(0.0, min(poll_s, deadline - now)))
