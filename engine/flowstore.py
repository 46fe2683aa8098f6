"""Where the flow state lives in the site database: ``run_flow``, ``job_flow`` and the ``run_events`` log.

The core's group commit writes them with everything else of a turn (``Changes.flow``); recovery reads them
back for the runs it restores; the control API reads them for ``status``.
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from engine.runs import JobRun, Run
    from engine.store import Store

_UPSERT_RUN_FLOW = (
    "INSERT INTO run_flow(run_id, variables, parent, state) VALUES (?,?,?,?)"
    " ON CONFLICT(run_id) DO UPDATE SET variables=excluded.variables, parent=excluded.parent, state=excluded.state"
)
_UPSERT_JOB_FLOW = (
    "INSERT INTO job_flow(run_id, job_id, variables, state) VALUES (?,?,?,?)"
    " ON CONFLICT(run_id, job_id) DO UPDATE SET variables=excluded.variables, state=excluded.state"
)
_INSERT_EVENT = "INSERT INTO run_events(run_id, job_id, ts, kind, detail) VALUES (?,?,?,?,?)"
#: Statements that forget the flow rows of purged runs (the run IDs come from the purge's own query).
PURGE_STATEMENTS = (
    "DELETE FROM run_events WHERE run_id IN ({runs})",
    "DELETE FROM job_flow WHERE run_id IN ({runs})",
    "DELETE FROM run_flow WHERE run_id IN ({runs})",
)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@dataclass(slots=True)
class FlowWrites:
    """The flow rows one turn changed, and the events it logged."""

    runs: "dict[str, Run]" = field(default_factory=dict)
    jobs: "dict[tuple[str, str], tuple[Run, JobRun]]" = field(default_factory=dict)
    #: (run, job or "", ts, kind, detail)
    events: list[tuple[int, str, float, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs or self.jobs or self.events)

    def run(self, run: "Run") -> None:
        """Write the run's flow row this turn."""
        self.runs[run.run_id] = run

    def job(self, run: "Run", job: "JobRun") -> None:
        """Write the job's flow row this turn."""
        self.jobs[(run.run_id, job.id)] = (run, job)

    def event(self, run: "Run", job: str, kind: str, detail: str, now: float) -> None:
        """Log an event of the run (a delay, a timeout, a retry, a decision)."""
        self.events.append((int(run.run_id), job, now, kind, detail))

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The statements of this turn, for ``engine.store``'s commit."""
        runs = [
            (int(r.run_id), _json(r.flow.variables), r.flow.parent, _json(r.flow.state())) for r in self.runs.values()
        ]
        jobs = [(int(r.run_id), j.id, _json(j.flow.variables), _json(j.flow.state())) for r, j in self.jobs.values()]
        for _, job in self.jobs.values():
            job.flow.written = True
        return [(_UPSERT_RUN_FLOW, runs), (_UPSERT_JOB_FLOW, jobs), (_INSERT_EVENT, self.events)]


@dataclass(slots=True)
class FlowRows:
    """The flow rows of one run, as read back."""

    variables: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    #: job -> (variables, state)
    jobs: dict[str, tuple[dict[str, str], dict[str, Any]]] = field(default_factory=dict)


async def load(store: "Store", run_id: str) -> FlowRows | None:
    """The flow rows of a run (on the writer connection, for recovery); None if it has none."""
    rows = await store.read_for_write("SELECT variables, parent, state FROM run_flow WHERE run_id=?", (int(run_id),))
    jobs = await store.read_for_write("SELECT job_id, variables, state FROM job_flow WHERE run_id=?", (int(run_id),))
    if not rows and not jobs:
        return None
    found = FlowRows()
    if rows:
        variables, parent, state = rows[0]
        found.variables, found.parent, found.state = orjson.loads(variables), parent, orjson.loads(state)
    found.jobs = {str(j): (orjson.loads(v), orjson.loads(s)) for j, v, s in jobs}
    return found


async def status_of(store: "Store", run_id: int) -> dict[str, Any]:
    """What ``status`` shows of a run's flow (reader connection): variables, parent, children, units, events."""
    run_rows = await store.query("SELECT variables, parent, state FROM run_flow WHERE run_id=?", (run_id,))
    job_rows = await store.query("SELECT job_id, variables, state FROM job_flow WHERE run_id=?", (run_id,))
    events = await store.query("SELECT ts, job_id, kind, detail FROM run_events WHERE run_id=? ORDER BY id", (run_id,))
    children = await store.query(
        "SELECT run_id, parent FROM run_flow WHERE parent >= ? AND parent < ? ORDER BY run_id",
        (f"{run_id}:", f"{run_id};"),
    )
    retried = await store.query(
        "SELECT job_id, n, status, exit_code, dispatched_at, finished_at, delay_s, reason FROM attempts"
        " WHERE run_id=? AND job_id IN (SELECT job_id FROM jobs WHERE run_id=? AND attempts > 1) ORDER BY job_id, n",
        (run_id, run_id),
    )
    doc: dict[str, Any] = {"variables": {}, "parent": None, "note": "", "delayed": False}
    if run_rows:
        state = orjson.loads(run_rows[0]["state"])
        doc.update(
            variables=orjson.loads(run_rows[0]["variables"]),
            parent=_link(run_rows[0]["parent"]),
            note=state.get("note", ""),
            delayed=bool(state.get("delayed")),
        )
        if state.get("queued"):
            doc["queued"] = True
    doc["children"] = [{"run": str(r["run_id"]), "job": str(r["parent"]).partition(":")[2]} for r in children]
    doc["events"] = [dict(e) for e in events]
    jobs: dict[str, dict[str, Any]] = {}
    for row in job_rows:
        jobs[row["job_id"]] = {"variables": orjson.loads(row["variables"]), "flow": orjson.loads(row["state"])}
    for a in retried:
        entry = jobs.setdefault(a["job_id"], {"variables": {}, "flow": {}})
        entry.setdefault("attempt_history", []).append(
            {k: a[k] for k in ("n", "status", "exit_code", "dispatched_at", "finished_at", "delay_s", "reason")}
        )
    doc["jobs"] = jobs
    return doc


async def add_to_status(store: "Store", run_id: int, doc: dict[str, Any], body_jobs: list[dict[str, Any]]) -> None:
    """Add a run's flow to its status document: the run's variables, parent, children, note and event log;
    each job's type, the variables it set, its flow facts and, for a job tried more than once, every attempt
    (with the delay waited before it)."""
    flow = await status_of(store, run_id)
    kinds = {j["id"]: j.get("type", "job") for j in body_jobs}
    doc["variables"] = {**{k: v for k, v in doc.get("params", {}).items()}, **flow["variables"]}
    for key in ("parent", "children", "events", "note", "delayed"):
        doc[key] = flow[key]
    if flow.get("queued"):
        doc["queued"] = True
    for job in doc["jobs"]:
        extra = flow["jobs"].get(job["id"], {})
        job["type"] = kinds.get(job["id"], "job")
        job["variables"] = extra.get("variables", {})
        job["flow"] = extra.get("flow", {})
        if "attempt_history" in extra:
            job["attempt_history"] = extra["attempt_history"]


def _link(parent: str | None) -> dict[str, str] | None:
    if not parent:
        return None
    run, _, job = parent.partition(":")
    return {"run": run, "job": job}
