"""The executor: runs one attempt (a command, a shell line or a Python call) and says how it ended.

What a job runs is never built from text: an argv job is exec'd as its list of arguments, a shell line runs
only when its definition says ``shell = true``, and run parameters reach a job as environment variables
(``EKIDEN_PARAM_<NAME>``), never spliced into a command. A job gets the agent's variables that its
allow-list passes (never the agent's own ``EKIDEN_*`` configuration), then its own on top; it runs as
another OS user only if it asks to and the agent may switch to that user (``agents.identity``).
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Mapping

from agents.calls import CallTargets, invoke
from agents.errors import CallTargetError, RunAsError
from agents.identity import resolve_user
from agents.janitor import Janitor
from agents.outcome import Interrupted, Outcome, race
from agents.processes import OnStarted, ProcessRunner
from agents.settings import AgentSettings, default_job_env
from schemas.messages import Finished, JobSpec, JobStatus

logger = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when a job is stopped.
KILL_GRACE_S = 5.0
#: Seconds to wait for a job's pipes to close after its leader exited.
PIPE_CLOSE_S = 1.0
#: The shell that runs ``shell`` jobs.
SHELL = "/bin/sh"


def identity_env(spec: JobSpec) -> dict[str, str]:
    """Variables that tell a job what it is: its attempt, job, jobnet and target (they win over the definition's)."""
    return {
        "EKIDEN_ATTEMPT_ID": spec.attempt_id,
        "EKIDEN_JOB": spec.job,
        "EKIDEN_JOBNET": spec.jobnet,
        "EKIDEN_AGENT": spec.agent or "",
        "EKIDEN_DEST": spec.dest or "",
    }


class Executor:
    """Runs attempts. One executor serves every attempt of a process; call targets are imported once."""

    def __init__(
        self,
        kill_grace_s: float = KILL_GRACE_S,
        pipe_close_s: float = PIPE_CLOSE_S,
        host: str = "",
        job_env: Mapping[str, str] | None = None,
        allow_users: Collection[str] = (),
        janitor: Janitor | None = None,
    ) -> None:
        """Set how jobs are stopped, what environment they get and whom they may run as.

        Args:
            kill_grace_s: seconds between SIGTERM and SIGKILL for a job that timed out or is killed.
            pipe_close_s: seconds to wait for output after a job's leader exited, before its group is killed.
            host: the host name put in results (default: this host's).
            job_env: the agent's variables every job gets (default: the default allow-list's).
            allow_users: OS users a job may ask to run as (honoured only when this process is root).
            janitor: kills the jobs' process groups should this process die without doing it.
        """
        self._processes = ProcessRunner(kill_grace_s, pipe_close_s, janitor)
        self._calls = CallTargets()
        self.host = host or socket.gethostname()
        self._job_env = dict(job_env) if job_env is not None else default_job_env()
        self._allow_users = frozenset(allow_users)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> "Executor":
        """The executor an agent's settings describe, with a janitor (``agents.janitor``)."""
        return cls(
            settings.kill_grace_s,
            settings.pipe_close_s,
            job_env=settings.job_env,
            allow_users=settings.allow_users,
            janitor=Janitor(),
        )

    async def run(
        self,
        spec: JobSpec,
        kill: asyncio.Event | None = None,
        on_started: OnStarted | None = None,
        tap: Callable[[str, bytes], None] | None = None,
    ) -> Finished:
        """Run one attempt to its end; a job that fails, cannot start, times out or is killed is a result.

        Args:
            spec: what to run.
            kill: set it to stop the job (its whole process group); it then finishes KILLED.
            on_started: awaited with the process ID (for a call, this process's) once the job runs.
            tap: sees a command's output as it comes, with the stream's name (live output).

        Returns:
            The result, with exit code, bounded output, duration and host.
        """
        kill = kill if kill is not None else asyncio.Event()
        started = time.monotonic()
        if spec.call is not None:
            outcome = (
                Outcome.error(f"cannot run as user {spec.user!r}: a call job runs inside the agent")
                if spec.user is not None
                else await self._run_call(spec, spec.call, kill, on_started)
            )
        else:
            outcome = await self._run_process(spec, kill, on_started, tap)
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

    async def _run_process(
        self,
        spec: JobSpec,
        kill: asyncio.Event,
        on_started: OnStarted | None,
        tap: Callable[[str, bytes], None] | None = None,
    ) -> Outcome:
        argv = list(spec.argv) if spec.argv is not None else [SHELL, "-c", spec.shell or ""]
        env = {**self._job_env, **spec.env, **identity_env(spec)}
        cwd, switch = spec.cwd, None
        if spec.user is not None:
            try:
                run_as = resolve_user(spec.user, self._allow_users)
            except RunAsError as exc:
                logger.warning("attempt %s refused: %s", spec.attempt_id, exc)
                return Outcome.error(str(exc))
            env.update(run_as.env())
            cwd, switch = cwd or run_as.workdir, run_as.switcher()
        return await self._processes.run(
            argv, env, cwd, spec.output_limit_bytes, spec.timeout_s, kill, on_started, preexec_fn=switch, tap=tap
        )

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
