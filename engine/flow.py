"""The manager's side of the jobnet language: variables, end judgment, retries, timers and flow units.

The core calls in at a few points of its turn, and everything here runs inside that turn, so what it
changes is committed with the rest before anything follows from it:

- ``started`` when a run is created (parameters, multiple-instances queue, run timeout and delay timers);
- ``take`` for each ready unit before dispatch: a flow unit (branch, loop, nested jobnet, wait, info, end)
  is run here instead of being dispatched; a job whose variables cannot be resolved fails here;
- ``command`` while building a dispatch: ``${NAME}`` substituted into argv, env, cwd and call args, and the
  run's variables given as ``EKIDEN_VAR_<NAME>`` (shell text is never substituted);
- ``attempt_ended`` when an attempt finished: variables read from its stdout, exit code judged (normal,
  warning, abnormal), a failed attempt retried after its (growing) delay;
- ``tick`` from the core's watchdog: due retries, waits, delay watches and run timeouts (one heap of timers
  checked each tick, never a task per timer);
- ``run_ended`` when a run ended: its parent unit goes on, a queued run of its jobnet starts.
"""

import heapq
import logging
import time
from typing import TYPE_CHECKING, Any

from engine import control, paths
from engine.changes import Changes
from engine.flowstore import FlowRows
from engine.jobenv import job_env
from engine.runs import Attempt, JobRun, Run
from engine.states import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JobState, RunState
from schemas.definitions import Jobnet
from schemas.errors import ErrorCode, WireError
from schemas.messages import Finished, JobStatus
from schemas.units import (
    PLAIN_JOB,
    Branch,
    End,
    Info,
    Instances,
    Loop,
    Nested,
    Wait,
)
from schemas.variables import (
    JOBNET,
    RUN_ID,
    MissingVariableError,
    is_var_name,
    parse_output,
    substitute,
    substitute_data,
    var_env,
)

if TYPE_CHECKING:
    from engine.core import Core, Outbound

logger = logging.getLogger(__name__)

#: Attempt end states a retry policy retries (an operator's kill and a lost executor are not retried).
RETRIED_STATES = frozenset({JobState.FAILED, JobState.TIMED_OUT})
#: The job state of a child run's end, for the nested jobnet or loop unit that ran it.
_UNIT_STATE_OF_RUN = {RunState.SUCCEEDED: JobState.SUCCEEDED, RunState.FAILED: JobState.FAILED}

# Timer kinds, in the heap as (due, seq, kind, run, job).
_RETRY, _WAIT, _DELAY, _RUN_DELAY, _RUN_TIMEOUT = "retry", "wait", "delay", "run_delay", "run_timeout"


class Flow:
    """The flow side of one core: its timers and the queues of waiting instances."""

    def __init__(self, core: "Core") -> None:
        self._core = core
        self._timers: list[tuple[float, int, str, str, str]] = []
        self._seq = 0
        #: a flow unit ended or started runs inside dispatch: the core offers ready units once more
        self.again = False

    # -- variables ---------------------------------------------------------------------------------

    @staticmethod
    def values(run: Run) -> dict[str, str]:
        """Every variable of a run: the built-ins, its parameters, then what its units set."""
        params = {k: v for k, v in run.params.items() if is_var_name(k)}
        return {RUN_ID: run.run_id, JOBNET: run.jobnet.name, **params, **run.flow.variables}

    @staticmethod
    def params_for(jobnet: Jobnet, given: dict[str, str]) -> dict[str, str]:
        """A run's parameters: the jobnet's defaults, overridden by those given."""
        return {**jobnet.flow.params, **given} if jobnet.flow.params else given

    def command(self, run: Run, job: JobRun, attempt: Attempt) -> dict[str, Any]:
        """The command fields of a dispatch: argv, shell, call, args, env and cwd, with variables in; a retried
        attempt is given the delay waited before it.

        Raises:
            MissingVariableError: a reference has no value (``take`` fails such a job before dispatch).
        """
        if job.flow.next_delay_s is not None and attempt.delay_s is None:
            attempt.delay_s, job.flow.next_delay_s = job.flow.next_delay_s, None
        return self.resolve(run, job)

    def resolve(self, run: Run, job: JobRun) -> dict[str, Any]:
        """A job's command fields with the run's variables in (see ``command``).

        Raises:
            MissingVariableError: a reference has no value.
        """
        spec = job.job
        values = self.values(run) if (spec.unit.has_refs or run.flow.variables or run.params) else {}
        env = spec.env
        fields: dict[str, Any] = {"argv": spec.argv, "shell": spec.shell, "call": spec.call, "args": spec.args}
        cwd = spec.cwd
        if spec.unit.has_refs:
            if spec.argv is not None:
                fields["argv"] = tuple(substitute(a, values) for a in spec.argv)
            env = {k: substitute(v, values) for k, v in env.items()}
            cwd = substitute(cwd, values) if cwd is not None else None
            if spec.args:
                fields["args"] = substitute_data(spec.args, values)
        env = job_env(env, run.params)
        if values:
            env = {**env, **var_env({k: v for k, v in values.items() if k in run.params or k in run.flow.variables})}
        return fields | {"env": env, "cwd": cwd}

    # -- runs ----------------------------------------------------------------------------------------

    def admit(self, jobnet: Jobnet, args: dict[str, Any], ch: Changes) -> bool:
        """Apply the jobnet's multiple-instances policy to a new run; True if it must queue.

        Raises:
            WireError: ``conflict``: the policy is ``skip`` and a run of the jobnet is running (a schedule's
                fire is then recorded as skipped, so the schedule moves on).
        """
        policy = jobnet.flow.instances
        if policy == Instances.ALLOW:
            return False
        running = sorted((r.run_id for r in self._core.runs.values() if self._instance_of(r, jobnet.name)), key=int)
        if not running:
            return False
        if policy == Instances.QUEUE:
            return True
        fire = args.get("fire")
        if isinstance(fire, dict):
            advance = {
                "action": "advance",
                "name": fire.get("schedule"),
                "digest": fire.get("digest"),
                "from": fire.get("at"),
                "next": fire.get("next"),
                "skipped": 1,
            }
            self._core.schedules.command(advance, ch.schedules)
        logger.info("jobnet %s not started: run %s still running (instances = skip)", jobnet.name, running[0])
        raise WireError(
            ErrorCode.CONFLICT,
            f"jobnet {jobnet.name} not started: run {', '.join(running)} is still running (instances = skip)",
        )

    @staticmethod
    def _instance_of(run: Run, name: str) -> bool:
        return run.jobnet.name == name and run.state == RunState.RUNNING and run.flow.parent is None

    def started(self, run: Run, queued: bool, ch: Changes, now: float) -> None:
        """A run was created: queue it behind earlier instances, arm its timeout and delay watch."""
        if queued:
            run.flow.queued, run.held = True, True
            run.flow.note = "queued behind earlier runs of its jobnet (instances = queue)"
            ch.flow.event(run, "", "queued", run.flow.note, now)
        self._arm_run(run, run.created_at)
        if not run.flow.is_plain():
            ch.flow.run(run)

    def reopened(self, run: Run, ch: Changes, now: float) -> None:
        """A rerun reopened an ended run: what forced its end is forgotten, its watches count from now."""
        if run.flow.forced is not None or run.flow.note or run.flow.delayed:
            run.flow.forced, run.flow.note, run.flow.delayed = None, "", False
            ch.flow.run(run)
        self._arm_run(run, now)

    def _arm_run(self, run: Run, since: float) -> None:
        """Arm the run's timeout and end-delay watch, counted from ``since``."""
        net = run.jobnet.flow
        if net.timeout_s is not None:
            self._arm(since + net.timeout_s, _RUN_TIMEOUT, run, "")
        if net.delay is not None and not run.flow.delayed:
            self._arm(net.delay.due(since), _RUN_DELAY, run, "")

    def run_ended(self, run: Run, ch: Changes, out: "Outbound", now: float) -> None:
        """A run ended: its parent unit goes on; the next queued run of its jobnet starts."""
        if not run.flow.is_plain():
            ch.flow.run(run)
        if run.flow.parent is not None:
            parent_id, _, job_id = run.flow.parent.partition(":")
            parent = self._core.runs.get(parent_id)
            job = parent.jobs.get(job_id) if parent is not None else None
            if (
                parent is not None
                and job is not None
                and job.state == JobState.RUNNING
                and job.flow.children[-1:] == [run.run_id]
            ):
                self._child_ended(parent, job, run, ch, out, now)
            return
        if run.jobnet.flow.instances == Instances.QUEUE and not run.flow.queued:
            self._release_next(run.jobnet.name, ch, out, now)

    def _release_next(self, name: str, ch: Changes, out: "Outbound", now: float) -> None:
        waiting = [r for r in self._core.runs.values() if self._instance_of(r, name)]
        if any(not r.flow.queued for r in waiting):
            return
        queued = min((r for r in waiting if r.flow.queued), key=lambda r: int(r.run_id), default=None)
        if queued is None:
            return
        queued.flow.queued, queued.held, queued.flow.note = False, False, ""
        ch.run(queued)
        ch.flow.run(queued)
        ch.flow.event(queued, "", "dequeued", "the earlier runs of its jobnet ended: started", now)
        self._core.touch(queued, out)
        self._core.requeue_ready(queued)

    # -- dispatch ------------------------------------------------------------------------------------

    def take(self, run: Run, job: JobRun, ch: Changes, out: "Outbound", now: float) -> bool:
        """A ready unit is about to be dispatched: True if it was handled here (a flow unit, or a job that
        cannot start), False if the core dispatches it."""
        unit = job.job.unit
        if unit is PLAIN_JOB:
            return False
        if unit.delay is not None and job.flow.started_at is None:
            job.flow.started_at = now
            self._arm(unit.delay.due(now), _DELAY, run, job.id)
            ch.flow.job(run, job)
        if unit.dispatched:
            if unit.has_refs:
                try:
                    self.resolve(run, job)
                except MissingVariableError as exc:
                    self._end(run, job, JobState.FAILED, None, f"not started: {exc}", ch, out, now)
                    return True
            return False
        job.state, job.started_at, job.reason = JobState.RUNNING, now, ""
        job.flow.started_at = job.flow.started_at or now
        ch.flow.job(run, job)
        self._core.changed(run, job, ch, out)
        config = unit.config
        try:
            if isinstance(config, Branch):
                self._branch(run, job, config, ch, out, now)
            elif isinstance(config, Nested | Loop):
                self._start_child(run, job, ch, out, now)
            elif isinstance(config, Wait):
                job.flow.wait_until = config.due(now)
                self._arm(job.flow.wait_until, _WAIT, run, job.id)
            elif isinstance(config, Info):
                self._info(run, job, config, ch, out, now)
            elif isinstance(config, End):
                self._end_run(run, job, config, ch, out, now)
        except MissingVariableError as exc:
            self._end(run, job, JobState.FAILED, None, f"not started: {exc}", ch, out, now)
        return True

    def _end(
        self,
        run: Run,
        job: JobRun,
        state: JobState,
        code: int | None,
        why: str,
        ch: Changes,
        out: "Outbound",
        now: float,
    ) -> None:
        """End a unit from inside dispatch: the units it makes ready are offered in the same turn."""
        ch.flow.job(run, job)
        self._core.end_job(run, job, state, code, why, ch, out, now)
        self.again = True

    def _branch(self, run: Run, job: JobRun, config: Branch, ch: Changes, out: "Outbound", now: float) -> None:
        values = self.values(run)
        taken, why = set(config.otherwise), "no case held: took else" if config.otherwise else "no case held"
        for i, case in enumerate(config.cases):
            named = run.jobs.get(case.when.job) if case.when.job is not None else None
            state = str(named.state) if named is not None and named.state in FINAL_JOB_STATES else None
            if case.when.holds(state, named.exit_code if named is not None else None, values):
                taken, why = set(case.to), f"case {i} held ({case.when.describe()})"
                break
        job.flow.note = f"{why} -> {', '.join(sorted(taken)) or 'nothing'}"
        ch.flow.event(run, job.id, "branch", job.flow.note, now)
        ready, ended = paths.branch_off(run, job, taken)
        for unit in ended:
            unit.ended_at = now
            ch.flow.job(run, unit)
            self._core.changed(run, unit, ch, out)
        for unit in ready:
            self._core.changed(run, unit, ch, out)
        if ready:
            self._core.requeue_ready(run)
        self._end(run, job, JobState.SUCCEEDED, None, job.flow.note, ch, out, now)

    def _info(self, run: Run, job: JobRun, config: Info, ch: Changes, out: "Outbound", now: float) -> None:
        try:
            found = config.values(run.run_id, run.jobnet.name, run.created_at, now, self._core.schedules.calset)
        except KeyError:
            self._end(run, job, JobState.FAILED, None, f"no calendar named {config.calendar!r}", ch, out, now)
            return
        self._set_variables(run, job, found, ch)
        self._end(run, job, JobState.SUCCEEDED, None, "", ch, out, now)

    def _end_run(self, run: Run, job: JobRun, config: End, ch: Changes, out: "Outbound", now: float) -> None:
        run.flow.forced = config.status
        run.flow.note = f"ended {config.status} by unit {job.id}" + (f": {config.message}" if config.message else "")
        ch.flow.run(run)
        ch.flow.event(run, job.id, "end", run.flow.note, now)
        rest = [j for j in run.jobs.values() if j is not job and j.state not in FINAL_JOB_STATES]
        self._end(run, job, JobState.SUCCEEDED, None, run.flow.note, ch, out, now)
        if run.state == RunState.RUNNING:
            control.kill(self._core, run, None, ch, out, now)
            for other in rest:
                if other.state == JobState.SKIPPED:
                    other.reason = f"not run: the run was ended by unit {job.id}"

    def _start_child(self, run: Run, job: JobRun, ch: Changes, out: "Outbound", now: float) -> None:
        config = job.job.unit.config
        assert isinstance(config, Nested | Loop)
        values = self.values(run)
        params = {k: substitute(v, values) for k, v in config.params.items()}
        if isinstance(config, Loop):
            job.flow.iteration += 1
            params[config.counter] = str(job.flow.iteration)
            self._set_variables(run, job, {config.counter: str(job.flow.iteration)}, ch)
        if config.jobnet not in self._core.jobnets:
            self._end(run, job, JobState.FAILED, None, f"no jobnet named {config.jobnet!r} is applied", ch, out, now)
            return
        child = self._core.open_run(config.jobnet, params, ch, out, now)
        child.flow.parent = f"{run.run_id}:{job.id}"
        self.started(child, False, ch, now)
        job.flow.children.append(child.run_id)
        what = (
            f"iteration {job.flow.iteration}: run {child.run_id}" if isinstance(config, Loop) else f"run {child.run_id}"
        )
        job.flow.note = f"{what} of {config.jobnet}"
        job.reason = job.flow.note
        ch.flow.job(run, job)
        self._core.changed(run, job, ch, out)
        self.again = True

    def _child_ended(self, run: Run, job: JobRun, child: Run, ch: Changes, out: "Outbound", now: float) -> None:
        """A nested jobnet's or loop iteration's run ended: take its variables out, then end or go round."""
        config = job.job.unit.config
        assert isinstance(config, Nested | Loop)
        if child.flow.variables:
            self._set_variables(run, job, child.flow.variables, ch)
        state = _UNIT_STATE_OF_RUN.get(child.state, JobState.KILLED)
        if state != JobState.SUCCEEDED:
            self._core.end_job(
                run, job, state, None, f"run {child.run_id} of {config.jobnet} {child.state}", ch, out, now
            )
            return
        if isinstance(config, Nested):
            self._core.end_job(run, job, JobState.SUCCEEDED, None, f"run {child.run_id} succeeded", ch, out, now)
            return
        n = job.flow.iteration
        if config.until is not None and config.until.holds(None, None, self.values(run)):
            job.flow.note = f"until held after {n} iterations ({config.until.describe()})"
            self._core.end_job(run, job, JobState.SUCCEEDED, None, job.flow.note, ch, out, now)
        elif n >= config.limit and config.until is None:
            job.flow.note = f"{n} iterations done"
            self._core.end_job(run, job, JobState.SUCCEEDED, None, job.flow.note, ch, out, now)
        elif n >= config.limit:
            job.flow.note = f"until did not hold after {n} iterations (max {config.limit})"
            self._core.end_job(run, job, JobState.FAILED, None, job.flow.note, ch, out, now)
        else:
            self._start_child(run, job, ch, out, now)
            return
        ch.flow.event(run, job.id, "loop", job.flow.note, now)
        ch.flow.job(run, job)

    def _set_variables(self, run: Run, job: JobRun, found: dict[str, str], ch: Changes) -> None:
        job.flow.variables.update(found)
        run.flow.variables.update(found)
        ch.flow.job(run, job)
        ch.flow.run(run)

    # -- attempts ------------------------------------------------------------------------------------

    def attempt_ended(
        self,
        run: Run,
        job: JobRun,
        attempt: Attempt,
        fin: Finished,
        state: JobState,
        ch: Changes,
        out: "Outbound",
        now: float,
    ) -> None:
        """An attempt finished: take the variables it printed, judge its exit code, retry or end the job."""
        found = parse_output(fin.stdout)
        if found:
            self._set_variables(run, job, found, ch)
        unit = job.job.unit
        judged = fin.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and fin.exit_code is not None
        reason = fin.reason
        if judged and unit.judge is not None:
            outcome = unit.judge.outcome(int(fin.exit_code or 0))
            state = {"normal": JobState.SUCCEEDED, "warning": JobState.WARNING}.get(outcome, JobState.FAILED)
            if state == JobState.WARNING:
                reason = reason or f"exit {fin.exit_code}: a warning (from {unit.judge.warning_from})"
        retry = unit.retry
        if (
            retry is not None
            and state in RETRIED_STATES
            and len(job.flow.retries) < retry.max
            and not run.stopping
            and run.flow.forced is None
        ):
            self._retry(run, job, attempt, state, fin, ch, out, now)
            return
        self._core.end_job(run, job, state, fin.exit_code, reason, ch, out, now)

    def _retry(
        self,
        run: Run,
        job: JobRun,
        attempt: Attempt,
        state: JobState,
        fin: Finished,
        ch: Changes,
        out: "Outbound",
        now: float,
    ) -> None:
        retry = job.job.unit.retry
        assert retry is not None
        delay_s = retry.delay_before(len(job.flow.retries) + 1)
        job.flow.retries.append(delay_s)
        job.flow.retry_at, job.flow.next_delay_s = now + delay_s, delay_s
        job.exit_code = fin.exit_code
        code = f" (exit {fin.exit_code})" if fin.exit_code is not None else ""
        why = f"attempt {attempt.n} {state}{code}; retry {len(job.flow.retries)}/{retry.max} in {delay_s:g}s"
        self._core.park(run, job, JobState.RETRY_WAIT, why, ch, out)
        ch.flow.job(run, job)
        ch.flow.event(run, job.id, "retry", why, now)
        logger.info("run %s job %s: %s", run.run_id, job.id, why)
        self._arm(job.flow.retry_at, _RETRY, run, job.id)

    # -- operators ------------------------------------------------------------------------------------

    def kill_unit(self, run: Run, job: JobRun, ch: Changes, out: "Outbound", now: float) -> bool:
        """Kill a running flow unit (and its child run); False for a job the core kills through its attempts."""
        if job.job.unit.dispatched:
            return False
        for child_id in job.flow.children[-1:]:
            child = self._core.runs.get(child_id)
            if child is not None and child.state == RunState.RUNNING:
                control.kill(self._core, child, None, ch, out, now)
        if job.state in ACTIVE_JOB_STATES:
            ch.flow.job(run, job)
            self._core.end_job(run, job, JobState.KILLED, None, "killed by an operator", ch, out, now)
        return True

    # -- timers ---------------------------------------------------------------------------------------

    def _arm(self, due: float, kind: str, run: Run, job: str) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (due, self._seq, kind, run.run_id, job))

    def tick(self, ch: Changes, out: "Outbound", now: float) -> None:
        """Act on every timer that came due: retries, waits, delay watches, run timeouts."""
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, run_id, job_id = heapq.heappop(self._timers)
            run = self._core.runs.get(run_id)
            if run is None or run.state != RunState.RUNNING:
                continue
            job = run.jobs.get(job_id)
            if kind == _RUN_TIMEOUT:
                self._run_timeout(run, ch, out, now)
            elif kind == _RUN_DELAY:
                self._run_delay(run, ch, out, now)
            elif job is None:
                continue
            elif kind == _RETRY and job.state == JobState.RETRY_WAIT and (job.flow.retry_at or 0) <= now:
                job.flow.retry_at = None
                run.set_state(job, JobState.READY)
                job.reason = f"retry {len(job.flow.retries)}"
                ch.flow.job(run, job)
                self._core.changed(run, job, ch, out)
                self._core.requeue_ready(run)
            elif kind == _WAIT and job.state == JobState.RUNNING and (job.flow.wait_until or now) <= now:
                ch.flow.job(run, job)
                self._core.end_job(run, job, JobState.SUCCEEDED, None, "", ch, out, now)
            elif kind == _DELAY and job.state not in FINAL_JOB_STATES and not job.flow.delayed and self._late(job, now):
                self._job_delay(run, job, ch, out, now)

    @staticmethod
    def _late(job: JobRun, now: float) -> bool:
        """Whether a unit's delay watch is due for its current start (a timer armed for an earlier start, before
        a rerun, is not)."""
        watch, started = job.job.unit.delay, job.flow.started_at
        return watch is not None and started is not None and watch.due(started) <= now

    def _job_delay(self, run: Run, job: JobRun, ch: Changes, out: "Outbound", now: float) -> None:
        watch = job.job.unit.delay
        assert watch is not None
        job.flow.delayed = True
        limit = (
            f"{watch.after_s:g}s after its start" if watch.after_s is not None else f"by {watch.at} {watch.timezone}"
        )
        why = f"not ended {limit}" + ("; killed" if watch.kill and job.state in ACTIVE_JOB_STATES else "")
        logger.warning("run %s job %s delayed: %s", run.run_id, job.id, why)
        ch.flow.event(run, job.id, "delay", why, now)
        ch.flow.job(run, job)
        self._core.changed(run, job, ch, out)
        if watch.kill and job.state in ACTIVE_JOB_STATES:
            control.kill(self._core, run, job.id, ch, out, now)

    def _run_delay(self, run: Run, ch: Changes, out: "Outbound", now: float) -> None:
        watch = run.jobnet.flow.delay
        if watch is None or run.flow.delayed:
            return
        run.flow.delayed = True
        limit = (
            f"{watch.after_s:g}s after its start" if watch.after_s is not None else f"by {watch.at} {watch.timezone}"
        )
        why = f"run not ended {limit}" + ("; killed" if watch.kill else "")
        logger.warning("run %s (%s) delayed: %s", run.run_id, run.jobnet.name, why)
        ch.flow.event(run, "", "delay", why, now)
        ch.flow.run(run)
        self._core.touch(run, out)
        if watch.kill:
            run.flow.note = why
            control.kill(self._core, run, None, ch, out, now)

    def _run_timeout(self, run: Run, ch: Changes, out: "Outbound", now: float) -> None:
        timeout_s = run.jobnet.flow.timeout_s
        run.flow.forced = str(RunState.FAILED)
        run.flow.note = f"timed out after {timeout_s:g}s: killed"
        logger.warning("run %s (%s) %s", run.run_id, run.jobnet.name, run.flow.note)
        ch.flow.event(run, "", "timeout", run.flow.note, now)
        ch.flow.run(run)
        control.kill(self._core, run, None, ch, out, now)

    # -- recovery -------------------------------------------------------------------------------------

    def restore(self, run: Run, rows: FlowRows | None) -> None:
        """Take a run's flow rows at takeover (or when a finished run is loaded) and arm its timers again."""
        if rows is not None:
            run.flow.load(rows.variables, rows.parent, rows.state)
            for job_id, (variables, state) in rows.jobs.items():
                job = run.jobs.get(job_id)
                if job is not None:
                    job.flow.load(variables, state)
        if run.state != RunState.RUNNING:
            return
        self._arm_run(run, run.reopened_at or run.created_at)
        for job in run.jobs.values():
            if job.state == JobState.RETRY_WAIT:
                self._arm(job.flow.retry_at or time.time(), _RETRY, run, job.id)
            elif job.state == JobState.RUNNING and job.flow.wait_until is not None:
                self._arm(job.flow.wait_until, _WAIT, run, job.id)
            watch = job.job.unit.delay
            if watch is not None and job.flow.started_at is not None and not job.flow.delayed:
                if job.state not in FINAL_JOB_STATES:
                    self._arm(watch.due(job.flow.started_at), _DELAY, run, job.id)
