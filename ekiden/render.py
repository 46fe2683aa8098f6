"""Human-readable tables for the CLI."""

import sys
import time
from typing import Any

import orjson


def table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    widths = (
        [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)] if rows else list(map(len, header))
    )
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def clock(ts: float | None) -> str:
    """A wall-clock time as local HH:MM:SS, or '-'."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def duration(start: float | None, end: float | None) -> str:
    """Seconds between two times (to now if not ended), or '-'."""
    if not start:
        return "-"
    return f"{(end or time.time()) - start:.2f}s"


def run_status(doc: dict[str, Any]) -> str:
    """The status of one run as text."""
    head = (
        f"run {doc['run']}  jobnet {doc['jobnet']} v{doc['version']}  {doc['state']}"
        f"  started {clock(doc['created_at'])}  took {duration(doc['created_at'], doc['ended_at'])}"
    )
    rows = [
        [
            j["id"] if j.get("type", "job") in ("job", None) else f"{j['id']} ({j['type']})",
            j["state"],
            "-" if j["exit_code"] is None else str(j["exit_code"]),
            str(j["attempts"]),
            j["target"] or "-",
            j["host"] or "-",
            duration(j["started_at"], j["ended_at"]),
            j["reason"] or "",
        ]
        for j in doc["jobs"]
    ]
    jobs = table(rows, ["JOB", "STATE", "EXIT", "TRIES", "TARGET", "HOST", "TIME", "NOTE"])
    return "\n".join([head, *_flow_head(doc), jobs, *_flow_tail(doc)])


def _pairs(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def _flow_head(doc: dict[str, Any]) -> list[str]:
    """The run's flow facts above its jobs: parent, note, variables."""
    lines = []
    if doc.get("parent"):
        lines.append(f"  child of run {doc['parent']['run']} (unit {doc['parent']['job']})")
    if doc.get("note") or doc.get("delayed"):
        lines.append(f"  {doc.get('note') or 'delayed'}")
    if doc.get("variables"):
        lines.append(f"  variables: {_pairs(doc['variables'])}")
    return lines


def _flow_tail(doc: dict[str, Any]) -> list[str]:
    """Below the jobs: what each job set, its retries, child runs, and the run's event log."""
    lines = [f"  {j['id']} set {_pairs(j['variables'])}" for j in doc["jobs"] if j.get("variables")]
    for j in doc["jobs"]:
        for a in j.get("attempt_history", []):
            waited = f" after {a['delay_s']:g}s" if a.get("delay_s") else ""
            lines.append(f"  {j['id']} attempt {a['n']}{waited}: {a['status'] or 'running'} exit {a['exit_code']}")
    if doc.get("children"):
        lines.append("  child runs: " + ", ".join(f"{c['run']} ({c['job']})" for c in doc["children"]))
    for e in doc.get("events", []):
        lines.append(f"  {clock(e['ts'])} {e['kind']:<8} {e['job_id'] or 'run'}: {e['detail']}")
    return lines


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


def listing(what: str, rows: list[dict[str, Any]]) -> str:
    """The table ``ekiden ls WHAT`` prints."""
    if what == "runs":
        return table(
            [
                [
                    r["run"],
                    r["jobnet"],
                    str(r["version"]),
                    r["state"],
                    f"{r['succeeded']}/{r['jobs']}",
                    clock(r["created_at"]),
                ]
                for r in rows
            ],
            ["RUN", "JOBNET", "VER", "STATE", "DONE", "STARTED"],
        )
    if what == "jobnets":
        return table(
            [[r["name"], str(r["version"]), str(r["jobs"]), r["tenant"], r["description"]] for r in rows],
            ["JOBNET", "VER", "JOBS", "TENANT", "DESCRIPTION"],
        )
    if what == "locks":
        return table(
            [
                [
                    r["name"],
                    f"{sum(h['weight'] for h in r['holders'])}/{r['capacity']}",
                    ", ".join(
                        f"{h['holder']}" + (f" ({h['weight']})" if h["weight"] != 1 else "") for h in r["holders"]
                    )
                    or "-",
                    ", ".join(r["waiters"]) or "-",
                ]
                for r in rows
            ],
            ["LOCK", "TAKEN", "HOLDERS (RUN:JOB)", "WAITING"],
        )
    if what == "destinations":
        return table(
            [
                [
                    r["name"],
                    r["relay"],
                    *(
                        str(r.get(k, "-")) if r.get("reported") else "-"
                        for k in ("pending", "running", "held", "workers")
                    ),
                    _age(r.get("oldest_pending_age_s")) if r.get("reported") else r.get("error", "not reported"),
                ]
                for r in rows
            ],
            ["DESTINATION", "RELAY", "PENDING", "RUNNING", "HELD", "WORKERS", "OLDEST PENDING"],
        )
    return table(
        [
            [
                r["name"],
                r["kind"],
                r["state"],
                str(r["inventory"].get("host", "-")),
                f"{r['inventory'].get('running', '-')}/{r['inventory'].get('slots', '-')}",
                "never" if r["seen_s_ago"] is None else f"{r['seen_s_ago']}s ago",
            ]
            for r in rows
        ],
        ["AGENT", "KIND", "STATE", "HOST", "RUNNING", "LAST SEEN"],
    )


def print_json(doc: Any) -> None:
    """Print a document as indented JSON (bytes as UTF-8 text)."""
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=_json_default).decode() + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError
