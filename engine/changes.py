"""What one turn of the core changed, and the statements that write it in one transaction.

The core marks what it changes (a run, a job and its live attempts, definitions, agents, locks, audit
entries, ...) on a ``Changes``; ``engine.store``'s group commit writes them all with ``statements()``, each
run, job and attempt row built from the object's latest state, whatever order the changes came in.
"""

from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.flowstore import PURGE_STATEMENTS, FlowWrites
from engine.runs import Attempt, JobRun, Run
from engine.schedule_store import ScheduleWrites

_INSERT_JOBNET_VERSION = (
    "INSERT INTO jobnet_versions(name, version, body, digest, tenant, applied_at) VALUES (?,?,?,?,?,?)"
)
_UPSERT_AGENT_STATE = (
    "INSERT INTO agents(name, kind, inventory, registered_at, last_seen, state, used_at)"
    " VALUES (?, 'agent', '{}', ?, 0, ?, ?)"
    " ON CONFLICT(name) DO UPDATE SET state=excluded.state, used_at=excluded.used_at"
)
_UPSERT_REGISTRATION = (
    "INSERT INTO agents(name, kind, inventory, registered_at, last_seen, state) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT(name) DO UPDATE SET kind=excluded.kind, inventory=excluded.inventory, last_seen=excluded.last_seen"
)
_INSERT_AUDIT = "INSERT INTO audit(ts, who, origin, action, target, detail, outcome) VALUES (?,?,?,?,?,?,?)"
#: Forgetting history older than a cutoff: the attempts and jobs of finished runs, the runs, the audit log.
_OLD_RUNS = "SELECT run_id FROM runs WHERE state != 'running' AND ended_at < ?"
_PURGE = (
    *(sql.format(runs=_OLD_RUNS) for sql in PURGE_STATEMENTS),
    f"DELETE FROM attempts WHERE run_id IN ({_OLD_RUNS})",
    f"DELETE FROM jobs WHERE run_id IN ({_OLD_RUNS})",
    "DELETE FROM runs WHERE state != 'running' AND ended_at < ?",
    "DELETE FROM audit WHERE ts < ?",
)
_UPSERT_RUN = """
INSERT INTO runs(run_id, jobnet, version, state, tenant, params, created_at, ended_at, held, dedupe_key, stopping,
    reopened_at)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, ended_at=excluded.ended_at, held=excluded.held,
    stopping=excluded.stopping, reopened_at=excluded.reopened_at"""
_UPSERT_JOB = """
INSERT INTO jobs(run_id, job_id, state, attempts, attempt_id, exit_code, started_at, ended_at, reason, bypassed)
VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(run_id, job_id) DO UPDATE SET state=excluded.state, attempts=excluded.attempts,
attempt_id=excluded.attempt_id, exit_code=excluded.exit_code, started_at=excluded.started_at,
ended_at=excluded.ended_at, reason=excluded.reason, bypassed=excluded.bypassed"""
_UPSERT_ATTEMPT = """
INSERT INTO attempts(attempt_id, run_id, job_id, n, target, dispatched_at, accepted_at, started_at, finished_at,
reported_at, status, exit_code, host, pid, reason, stdout, stderr, truncated_bytes, queued_at, delay_s)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(attempt_id) DO UPDATE SET accepted_at=excluded.accepted_at, started_at=excluded.started_at,
finished_at=excluded.finished_at, reported_at=excluded.reported_at, status=excluded.status,
exit_code=excluded.exit_code, host=excluded.host, pid=excluded.pid, reason=excluded.reason,
stdout=COALESCE(excluded.stdout, stdout), stderr=COALESCE(excluded.stderr, stderr),
truncated_bytes=COALESCE(excluded.truncated_bytes, truncated_bytes), queued_at=excluded.queued_at,
delay_s=excluded.delay_s"""


@dataclass(slots=True)
class Changes:
    """Everything one loop tick changed, written in one transaction."""

    runs: dict[str, Run] = field(default_factory=dict)
    jobs: dict[tuple[str, str], tuple[Run, JobRun]] = field(default_factory=dict)
    attempts: dict[str, tuple[Run, JobRun, Attempt]] = field(default_factory=dict)
    jobnet_versions: list[tuple[str, int, str, str, str, float]] = field(default_factory=list)
    destinations: list[tuple[str, str, float]] = field(default_factory=list)
    #: (kind 'agent' or 'group', name, body, applied at)
    agent_definitions: list[tuple[str, str, str, float]] = field(default_factory=list)
    agents: list[tuple[str, str, str, float, float, str]] = field(default_factory=list)
    #: (name, now, state, used at) of agents an operator or a dispatch changed
    agent_states: dict[str, tuple[str, float, str, float]] = field(default_factory=dict)
    #: agents unregistered by an operator
    agent_deletes: list[str] = field(default_factory=list)
    #: lock holders taken (lock, holder, weight, mode, since) and given back (lock, holder)
    lock_takes: list[tuple[str, str, int, str, float]] = field(default_factory=list)
    lock_gives: list[tuple[str, str]] = field(default_factory=list)
    #: operator actions: (ts, who, origin, action, target, detail, outcome)
    audit: list[tuple[float, str, str, str, str, str, str]] = field(default_factory=list)
    #: forget finished runs and audit entries older than this wall-clock time
    purge_before: float | None = None
    #: site settings that changed (key -> value), such as maintenance mode
    settings: dict[str, str] = field(default_factory=dict)
    #: calendars, schedules, fires and one-off changes (engine.schedule_store)
    schedules: ScheduleWrites = field(default_factory=ScheduleWrites)
    #: runs' and jobs' flow state and the run event log (engine.flowstore)
    flow: FlowWrites = field(default_factory=FlowWrites)

    def __bool__(self) -> bool:
        return bool(
            self.schedules
            or self.flow
            or self.runs
            or self.jobs
            or self.attempts
            or self.jobnet_versions
            or self.destinations
            or self.agent_definitions
            or self.agents
            or self.agent_states
            or self.agent_deletes
            or self.settings
            or self.audit
            or self.purge_before is not None
            or self.lock_takes
            or self.lock_gives
        )

    def run(self, run: Run) -> None:
        """Mark a run's row to be written."""
        self.runs[run.run_id] = run

    def job(self, run: Run, job: JobRun) -> None:
        """Mark a job's row (and the rows of its current round's attempts) to be written."""
        self.jobs[(run.run_id, job.id)] = (run, job)
        for attempt in job.live_attempts():
            self.attempts[attempt.attempt_id] = (run, job, attempt)

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The statements of one commit, in an order that respects references (a run before its jobs)."""
        return [
            (_INSERT_JOBNET_VERSION, self.jobnet_versions),
            ("INSERT OR REPLACE INTO destinations(name, body, applied_at) VALUES (?,?,?)", self.destinations),
            (
                "INSERT OR REPLACE INTO agent_definitions(kind, name, body, applied_at) VALUES (?,?,?,?)",
                self.agent_definitions,
            ),
            (_UPSERT_RUN, [_run_row(r) for r in self.runs.values()]),
            (_UPSERT_JOB, [_job_row(r, j) for r, j in self.jobs.values()]),
            (_UPSERT_ATTEMPT, [_attempt_row(r, j, a) for r, j, a in self.attempts.values()]),
            *self.flow.statements(),
            ("DELETE FROM agents WHERE name=?", [(n,) for n in self.agent_deletes]),
            (_UPSERT_AGENT_STATE, list(self.agent_states.values())),
            (_UPSERT_REGISTRATION, self.agents),
            ("INSERT OR REPLACE INTO site_settings(key, value) VALUES (?,?)", list(self.settings.items())),
            *self.schedules.statements(),
            ("DELETE FROM lock_holders WHERE lock=? AND holder=?", self.lock_gives),
            (
                "INSERT OR REPLACE INTO lock_holders(lock, holder, weight, mode, acquired_at) VALUES (?,?,?,?,?)",
                self.lock_takes,
            ),
            (_INSERT_AUDIT, self.audit),
            *((sql, [(self.purge_before,)]) for sql in _PURGE if self.purge_before is not None),
        ]


def _run_row(r: Run) -> tuple[Any, ...]:
    return (
        int(r.run_id),
        r.jobnet.name,
        r.version,
        str(r.state),
        r.tenant,
        orjson.dumps(r.params).decode(),
        r.created_at,
        r.ended_at,
        int(r.held),
        r.dedupe_key,
        int(r.stopping),
        r.reopened_at,
    )


def _job_row(r: Run, j: JobRun) -> tuple[Any, ...]:
    aid = j.current.attempt_id if j.current else None
    return (
        int(r.run_id),
        j.id,
        str(j.state),
        j.attempts,
        aid,
        j.exit_code,
        j.started_at,
        j.ended_at,
        j.reason,
        int(j.bypassed),
    )


def _attempt_row(r: Run, j: JobRun, a: Attempt) -> tuple[Any, ...]:
    return (
        a.attempt_id,
        int(r.run_id),
        j.id,
        a.n,
        a.target,
        a.dispatched_at,
        a.accepted_at,
        a.started_at,
        a.finished_at,
        a.reported_at,
        a.status,
        a.exit_code,
        a.host,
        a.pid,
        a.reason,
        *(a.output or (None, None, None)),
        a.queued_at,
        a.delay_s,
    )
