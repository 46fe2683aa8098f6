"""Read-only questions the control API asks of the site database: run status documents, lists, output.

Every query runs on the store's reader connection, so it never sees a group commit half done and never
waits for one.
"""

from typing import TYPE_CHECKING, Any

import orjson

from engine import flowstore

if TYPE_CHECKING:
    from engine.store import Store

#: Bytes of the end of each stream a status document shows per job.
OUTPUT_TAIL_BYTES = 512


class SiteQueries:
    """Read-only questions the control API asks of the site database (reader connection)."""

    def __init__(self, store: "Store") -> None:
        self._store = store

    async def run_doc(self, run_id: str) -> dict[str, Any] | None:
        """The status document of one run, jobs in definition order."""
        if not run_id.isdigit():
            return None
        rows = await self._store.query(
            "SELECT r.run_id, r.jobnet, r.version, r.state, r.tenant, r.params, r.created_at, r.ended_at, v.body,"
            " r.held, r.dedupe_key"
            " FROM runs r JOIN jobnet_versions v ON v.name = r.jobnet AND v.version = r.version WHERE r.run_id=?",
            (int(run_id),),
        )
        if not rows:
            return None
        r = rows[0]
        body_jobs = orjson.loads(r["body"])["job"]
        order = {j["id"]: i for i, j in enumerate(body_jobs)}
        broadcast = {j["id"]: j.get("group") for j in body_jobs if j.get("broadcast")}
        jobs = await self._store.query(
            "SELECT j.job_id, j.state, j.attempts, j.exit_code, j.started_at, j.ended_at, j.reason, a.target, a.host,"
            f" a.attempt_id, substr(a.stdout, -{OUTPUT_TAIL_BYTES}) AS out_tail,"
            f" substr(a.stderr, -{OUTPUT_TAIL_BYTES}) AS err_tail"
            " FROM jobs j LEFT JOIN attempts a ON a.attempt_id = j.attempt_id WHERE j.run_id=?",
            (int(run_id),),
        )
        job_docs = [
            {
                "id": j["job_id"],
                "state": j["state"],
                "exit_code": j["exit_code"],
                "attempts": j["attempts"],
                "attempt_id": j["attempt_id"],
                "target": j["target"],
                "host": j["host"] or None,
                "started_at": j["started_at"],
                "ended_at": j["ended_at"],
                "reason": j["reason"],
                "output_tail": {"stdout": _text(j["out_tail"]), "stderr": _text(j["err_tail"])},
            }
            for j in jobs
        ]
        job_docs.sort(key=lambda d: order.get(d["id"], len(order)))
        for doc in job_docs:
            if doc["id"] in broadcast:
                doc["target"] = f"group:{broadcast[doc['id']]}"
                doc["members"] = await self._members(run_id, doc["id"], doc["attempts"])
        status = {
            "run": str(r["run_id"]),
            "jobnet": r["jobnet"],
            "version": r["version"],
            "state": r["state"],
            "tenant": r["tenant"],
            "params": orjson.loads(r["params"]),
            "created_at": r["created_at"],
            "ended_at": r["ended_at"],
            "held": bool(r["held"]),
            "dedupe_key": r["dedupe_key"],
            "jobs": job_docs,
        }
        await flowstore.add_to_status(self._store, int(run_id), status, body_jobs)
        return status

    async def _members(self, run_id: str, job_id: str, n: int) -> list[dict[str, Any]]:
        """A broadcast job's members in its latest round: one result per agent."""
        rows = await self._store.query(
            "SELECT target, status, exit_code, host, started_at, finished_at, reason FROM attempts"
            " WHERE run_id=? AND job_id=? AND n=? ORDER BY target",
            (int(run_id), job_id, n),
        )
        return [
            {
                "agent": m["target"].partition(":")[2],
                "state": m["status"] or ("running" if m["started_at"] else "dispatched"),
                "exit_code": m["exit_code"],
                "host": m["host"] or None,
                "reason": m["reason"],
            }
            for m in rows
        ]

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest operator actions, newest first."""
        rows = await self._store.query(
            "SELECT ts, who, origin, action, target, detail, outcome FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [dict(r) | {"detail": orjson.loads(r["detail"])} for r in rows]

    async def runs(self, jobnet: str | None, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        """The newest runs, optionally of one jobnet and of one tenant only, with job counts."""
        clauses = [c for c, v in (("r.jobnet=?", jobnet), ("r.tenant=?", tenant)) if v]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params = (*(v for v in (jobnet, tenant) if v), limit)
        rows = await self._store.query(
            "SELECT r.run_id, r.jobnet, r.version, r.state, r.tenant, r.created_at, r.ended_at,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.run_id) AS total,"
            " (SELECT COUNT(*) FROM jobs j WHERE j.run_id = r.run_id AND j.state='succeeded') AS succeeded"
            f" FROM runs r {where} ORDER BY r.run_id DESC LIMIT ?",
            params,
        )
        return [
            {
                "run": str(r["run_id"]),
                "jobnet": r["jobnet"],
                "version": r["version"],
                "state": r["state"],
                "tenant": r["tenant"],
                "created_at": r["created_at"],
                "ended_at": r["ended_at"],
                "jobs": r["total"],
                "succeeded": r["succeeded"],
            }
            for r in rows
        ]

    async def jobnets(self) -> list[dict[str, Any]]:
        """Every applied jobnet at its latest version."""
        rows = await self._store.query(
            "SELECT name, version, tenant, applied_at, body FROM jobnet_versions v"
            " WHERE version = (SELECT MAX(version) FROM jobnet_versions WHERE name = v.name) ORDER BY name"
        )
        out = []
        for r in rows:
            body = orjson.loads(r["body"])
            out.append(
                {
                    "name": r["name"],
                    "version": r["version"],
                    "tenant": r["tenant"],
                    "applied_at": r["applied_at"],
                    "jobs": len(body["job"]),
                    "description": body.get("description", ""),
                }
            )
        return out

    async def agents(self) -> list[dict[str, Any]]:
        """Every agent that registered, with its last inventory."""
        rows = await self._store.query(
            "SELECT name, kind, inventory, registered_at, last_seen, state FROM agents ORDER BY name"
        )
        return [
            {
                "name": r["name"],
                "kind": r["kind"],
                "state": r["state"],
                "registered_at": r["registered_at"],
                "last_seen": r["last_seen"],
                "inventory": orjson.loads(r["inventory"]),
            }
            for r in rows
        ]

    async def output(self, run_id: str, job_id: str, n: int | None) -> dict[str, Any] | None:
        """Output of one attempt of a job (the latest if ``n`` is None)."""
        if not run_id.isdigit():
            return None
        rows = await self._store.query(
            "SELECT a.attempt_id, a.n, a.status, a.exit_code, a.host, a.stdout, a.stderr, a.truncated_bytes"
            " FROM attempts a WHERE a.run_id=? AND a.job_id=? AND (? IS NULL OR a.n=?) ORDER BY a.n DESC LIMIT 1",
            (int(run_id), job_id, n, n),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "attempt_id": r["attempt_id"],
            "attempt": r["n"],
            "status": r["status"],
            "exit_code": r["exit_code"],
            "host": r["host"],
            "stdout": r["stdout"] or b"",
            "stderr": r["stderr"] or b"",
            "truncated_bytes": r["truncated_bytes"] or 0,
            "finished": r["stdout"] is not None,
        }


def _text(data: bytes | None) -> str:
    """Captured output as text for a JSON document (a cut multibyte character becomes U+FFFD)."""
    return data.decode("utf-8", errors="replace") if data else ""
