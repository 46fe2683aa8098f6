"""Running a command in its own process group, with bounded output, timeout, kill and no leftovers."""

import asyncio
import functools
import logging
import os
import signal
import subprocess
from asyncio.subprocess import DEVNULL, PIPE, SubprocessStreamProtocol
from collections.abc import Awaitable, Callable, Mapping, Sequence

from agents.janitor import Janitor
from agents.outcome import Interrupted, Outcome, race
from agents.output import READ_CHUNK_BYTES, BoundedCapture
from schemas.messages import JobStatus

logger = logging.getLogger(__name__)

#: Bytes a pipe's stream reader buffers before it stops reading from the pipe (back-pressure on the job).
STREAM_LIMIT_BYTES = 64 * 1024
#: Seconds to wait for a process that got SIGKILL to be reaped before giving up on it.
REAP_TIMEOUT_S = 10.0

#: Called with the process ID once the process runs.
OnStarted = Callable[[int], Awaitable[None]]


class _Protocol(SubprocessStreamProtocol):
    """Stream protocol that also says when the leader exits.

    ``Process.wait()`` on the default event loop returns only once the pipes are closed too, and a
    background child can hold them open for ever; uvloop returns at the exit. The exit is what counts.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of a group; a group with nobody left is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # only if the group ID was reused by another user's processes
        logger.warning("cannot signal process group %d: %s", pgid, exc)


async def _pump(reader: asyncio.StreamReader | None, sink: BoundedCapture) -> None:
    if reader is None:
        return
    while chunk := await reader.read(READ_CHUNK_BYTES):
        sink.feed(chunk)


class ProcessRunner:
    """Runs commands; each is the leader of a new session, so it and everything it starts can be signalled."""

    def __init__(self, kill_grace_s: float, pipe_close_s: float, janitor: Janitor | None = None) -> None:
        """Set how stopping behaves.

        Args:
            kill_grace_s: seconds between SIGTERM and SIGKILL when a job times out or is killed.
            pipe_close_s: seconds to wait for the output pipes to close after the leader exited, before
                the rest of the group gets SIGKILL.
            janitor: told of every job's process group, to kill them should this process die.
        """
        self._kill_grace_s = kill_grace_s
        self._pipe_close_s = pipe_close_s
        self._janitor = janitor

    async def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        limit_bytes: int,
        timeout_s: float | None,
        kill: asyncio.Event,
        on_started: OnStarted | None = None,
        preexec_fn: Callable[[], None] | None = None,
        tap: Callable[[str, bytes], None] | None = None,
    ) -> Outcome:
        """Run ``argv`` to its end, its timeout or ``kill``; never raises for a job that fails or cannot start.

        Args:
            argv: the program and its arguments.
            env: the whole environment of the process.
            cwd: its working directory (None: ours).
            limit_bytes: output kept per stream (head and tail).
            timeout_s: seconds the job may run (None: no limit).
            kill: set to stop the job.
            on_started: awaited with the process ID once it runs.
            preexec_fn: run in the child before exec (switching to another user); None: nothing.
            tap: sees each piece of output as it comes, with its stream's name (live output).
        """
        loop = asyncio.get_running_loop()
        # loop.subprocess_exec is what asyncio.create_subprocess_exec wraps; calling it directly lets the
        # protocol report the leader's exit on its own (see _Protocol).
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(STREAM_LIMIT_BYTES, loop),
                *argv,
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=PIPE,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return Outcome.error(f"cannot start {argv[0]!r}: {exc}")
        pgid = transport.get_pid()
        if self._janitor is not None:
            self._janitor.watch(pgid)
        deadline = loop.time() + timeout_s if timeout_s is not None else None
        out = BoundedCapture(limit_bytes, functools.partial(tap, "stdout") if tap else None)
        err = BoundedCapture(limit_bytes, functools.partial(tap, "stderr") if tap else None)
        stopped: JobStatus | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                pumps = {tg.create_task(_pump(protocol.stdout, out)), tg.create_task(_pump(protocol.stderr, err))}
                if on_started is not None:
                    await on_started(pgid)
                remaining_s = max(0.0, deadline - loop.time()) if deadline is not None else None
                try:
                    await race(protocol.exited.wait(), kill, remaining_s)
                except Interrupted as stop:
                    stopped = stop.status
                    await self._terminate(pgid, protocol)
                await self._collect(pgid, transport, pumps)
        except BaseException:
            # Cancelled (the service is going down) or a bug: never leave the job running behind us.
            signal_group(pgid, signal.SIGKILL)
            transport.close()
            raise
        finally:
            if self._janitor is not None:
                self._janitor.forget(pgid)
        code = transport.get_returncode()
        return Outcome(
            status=_status(stopped, code),
            exit_code=code,
            stdout=out.value(),
            stderr=err.value(),
            truncated_bytes=out.cut_bytes + err.cut_bytes,
            reason=_reason(stopped, code, timeout_s),
        )

    async def _terminate(self, pgid: int, protocol: _Protocol) -> None:
        """SIGTERM the group, then SIGKILL it if the leader is still there after the grace."""
        signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(self._kill_grace_s):
                await protocol.exited.wait()
            return
        except TimeoutError:
            pass
        signal_group(pgid, signal.SIGKILL)
        try:
            async with asyncio.timeout(REAP_TIMEOUT_S):
                await protocol.exited.wait()
        except TimeoutError:  # stuck in the kernel (D state); nothing more can be done from here
            logger.error("process %d did not die after SIGKILL", pgid)

    async def _collect(self, pgid: int, transport: asyncio.SubprocessTransport, pumps: set[asyncio.Task[None]]) -> None:
        """After the leader exited: read what is left, kill the rest of its group, close the pipes."""
        _, pending = await asyncio.wait(pumps, timeout=self._pipe_close_s)
        # Background children of the job are part of its group: none may outlive it.
        signal_group(pgid, signal.SIGKILL)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self._pipe_close_s)
        # Whatever still holds a pipe now left the group (setsid); stop reading instead of waiting for it.
        transport.close()
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self._pipe_close_s)
            for task in pending:
                task.cancel()


def _status(stopped: JobStatus | None, code: int | None) -> JobStatus:
    if stopped is not None:
        return stopped
    return JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED


def _reason(stopped: JobStatus | None, code: int | None, timeout_s: float | None) -> str:
    if stopped == JobStatus.TIMED_OUT:
        return f"timed out after {timeout_s:g} s"
    if stopped == JobStatus.KILLED:
        return "killed on request"
    if code is not None and code < 0:
        try:
            return f"ended by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"ended by signal {-code}"
    if code is None:
        return "exit status unknown"
    return ""
