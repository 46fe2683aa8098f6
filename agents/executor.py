"""The executor: runs one attempt (a command, a shell line or a Python call) and says how it ended."""

import asyncio
import logging
import os
import socket
import time

from agents.calls import CallTargets, invoke
from agents.errors import CallTargetError
from agents.outcome import Interrupted, Outcome, race
from agents.processes import OnStarted, ProcessRunner
from schemas.messages import Finished, JobSpec, JobStatus

logger = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when a job is stopped.
KILL_GRACE_S = 5.0
#: Seconds to wait for a job's pipes to close after its leader exited.
PIPE_CLOSE_S = 1.0
#: The shell that runs ``shell`` jobs.
SHELL = "/bin/sh"


class Executor:
    """Runs attempts. One executor serves every attempt of a process; call targets are imported once."""

    def __init__(self, kill_grace_s: float = KILL_GRACE_S, pipe_close_s: float = PIPE_CLOSE_S, host: str = "") -> None:
        """Set how jobs are stopped.

        Args:
            kill_grace_s: seconds between SIGTERM and SIGKILL for a job that timed out or is killed.
            pipe_close_s: seconds to wait for output after a job's leader exited, before its group is killed.
            host: the host name put in results (default: this host's).
        """
        self._processes = ProcessRunner(kill_grace_s, pipe_close_s)
        self._calls = CallTargets()
        self.host = host or socket.gethostname()

    async def run(
        self, spec: JobSpec, kill: asyncio.Event | None = None, on_started: OnStarted | None = None
    ) -> Finished:
        """Run one attempt to its end; a job that fails, cannot start, times out or is killed is a result.

        Args:
            spec: what to run.
            kill: set it to stop the job (its whole process group); it then finishes KILLED.
            on_started: awaited with the process ID (for a call, this process's) once the job runs.

        Returns:
            The result, with exit code, bounded output, duration and host.
        """
        kill = kill if kill is not None else asyncio.Event()
        started = time.monotonic()
        if spec.call is not None:
            outcome = await self._run_call(spec, spec.call, kill, on_started)
        else:
            argv = list(spec.argv) if spec.argv is not None else [SHELL, "-c", spec.shell or ""]
            # The child inherits this process's environment, with the job's own variables on top.
            env = {**os.environ, **spec.env}
            outcome = await self._processes.run(
                argv, env, spec.cwd, spec.output_limit_bytes, spec.timeout_s, kill, on_started
            )
        finished = Finished(
            attempt_id=spec.attempt_id,
            status=outcome.status,
            exit_code=outcome.exit_code,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            truncated_bytes=outcome.truncated_bytes,
            duration_s=time.monotonic() - started,
            reason=outcome.reason,
            host=self.host,
        )
        logger.debug("attempt %s: %s (exit %s)", spec.attempt_id, finished.status, finished.exit_code)
        return finished

    async def _run_call(self, spec: JobSpec, target: str, kill: asyncio.Event, on_started: OnStarted | None) -> Outcome:
        try:
            fn = await self._calls.resolve(target)
        except CallTargetError as exc:
            return Outcome.error(str(exc))
        if on_started is not None:
            await on_started(os.getpid())
        try:
            return await race(invoke(fn, spec.args, spec.output_limit_bytes), kill, spec.timeout_s)
        except Interrupted as stop:
            # A coroutine is cancelled; a thread cannot be, and runs on unobserved (see calls._in_thread).
            if stop.status == JobStatus.TIMED_OUT:
                return Outcome(stop.status, None, reason=f"timed out after {spec.timeout_s:g} s")
            return Outcome(stop.status, None, reason="killed on request")
