"""Human-readable tables for the CLI."""

import time
from typing import Any


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
            j["id"],
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
    return head + "\n" + table(rows, ["JOB", "STATE", "EXIT", "TRIES", "TARGET", "HOST", "TIME", "NOTE"])
