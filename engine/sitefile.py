"""Reading a site directory with no manager running: the site database, opened read-only.

The operator's view (``ekiden site status`` and ``ekiden site ls``, and the API's ``site`` verb) must work
when no manager is active, so it reads the file itself with the standard library's ``sqlite3`` in
read-only mode. A WAL reader takes no lock that a writer waits for, so this is safe beside a running pair.
Nothing here writes.
"""

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import StoreError

#: The site database's file name inside a site directory.
SITE_DB = "site.db"
#: The lease row's name; one manager per site holds it.
LEASE_NAME = "manager"
#: ``site_settings`` key of maintenance mode ("on" or "off").
MAINTENANCE_KEY = "maintenance"
#: Seconds between a standby's updates of its row in ``managers`` (the active updates on lease renewal).
SEEN_INTERVAL_S = 2.0
#: Seconds after which a standby that was not seen is shown as gone.
STANDBY_GONE_AFTER_S = 15.0
#: Seconds a manager's row is kept after it was last seen; a manager taking over prunes older rows.
MANAGER_ROW_KEPT_S = 86_400.0
#: Seconds one read waits for a lock (a reader only waits while a writer checkpoints or recovers).
READ_BUSY_TIMEOUT_S = 5.0


def site_db(site_dir: Path) -> Path:
    """The site database file of a site directory."""
    return site_dir / SITE_DB


def is_site(path: Path) -> bool:
    """Whether ``path`` is a site directory (it holds a site database)."""
    return site_db(path).is_file()


@contextlib.contextmanager
def open_read_only(site_dir: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a site's database, closed when the block ends.

    Raises:
        StoreError: there is no site database there, or the file is not one.
    """
    path = site_db(site_dir)
    if not path.is_file():
        raise StoreError(f"{site_dir} is not a site directory: {path} does not exist")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=READ_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        yield db
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    finally:
        db.close()


def read_status(site_dir: Path, now: float | None = None) -> dict[str, Any]:
    """The site's state as the operator sees it: server ID, lease, managers seen, maintenance.

    Args:
        site_dir: the site directory.
        now: wall-clock seconds to judge expiry and age by (default: now).

    Returns:
        A JSON-ready document: ``site``, ``server_id``, ``schema_version``, ``lease`` (or None),
        ``active`` (the holder of a valid lease, or None), ``managers`` (each with its ``state``:
        active, standby, gone or stopped), ``standbys`` (how many are standing by), ``maintenance``
        and ``runs_running``.

    Raises:
        StoreError: the directory is not a readable site.
    """
    now = time.time() if now is None else now
    with open_read_only(site_dir) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            raise StoreError(f"{site_db(site_dir)} is not a site database (no meta table)")
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        row = db.execute(
            "SELECT holder, host, pid, epoch, expires_at, acquired_at FROM lease WHERE name=?", (LEASE_NAME,)
        ).fetchone()
        settings: dict[str, str] = {}
        managers: list[tuple[Any, ...]] = []
        if "site_settings" in tables:
            settings = dict(db.execute("SELECT key, value FROM site_settings").fetchall())
        if "managers" in tables:
            managers = db.execute(
                "SELECT holder, host, pid, role, started_at, seen_at FROM managers ORDER BY started_at"
            ).fetchall()
        running = db.execute("SELECT COUNT(*) FROM runs WHERE state='running'").fetchone()[0]
    lease = _lease_doc(row, now)
    holder = lease["holder"] if lease is not None and lease["valid"] else None
    manager_docs = [_manager_doc(m, holder, now) for m in managers]
    return {
        "site": str(site_dir),
        "server_id": meta.get("server_id"),
        "schema_version": int(meta.get("schema_version", 0)),
        "lease": lease,
        "active": (
            {k: lease[k] for k in ("host", "pid", "epoch", "expires_at", "expires_in_s")} if holder and lease else None
        ),
        "managers": manager_docs,
        "standbys": sum(1 for m in manager_docs if m["state"] == "standby"),
        "maintenance": settings.get(MAINTENANCE_KEY) == "on",
        "runs_running": int(running),
    }


def _lease_doc(row: tuple[Any, ...] | None, now: float) -> dict[str, Any] | None:
    if row is None:
        return None
    holder, host, pid, epoch, expires_at, acquired_at = row
    return {
        "holder": holder,
        "host": host,
        "pid": pid,
        "epoch": epoch,
        "acquired_at": acquired_at,
        "expires_at": expires_at,
        "expires_in_s": round(expires_at - now, 2),
        "valid": expires_at > now,
        # given up by a clean stop, so a standby need not wait for it to expire
        "released": expires_at == 0,
    }


def _manager_doc(row: tuple[Any, ...], active_holder: str | None, now: float) -> dict[str, Any]:
    holder, host, pid, role, started_at, seen_at = row
    if role == "stopped":
        state = "stopped"
    elif holder == active_holder:
        state = "active"
    elif role == "standby" and now - seen_at <= STANDBY_GONE_AFTER_S:
        state = "standby"
    else:
        state = "gone"  # killed, hung, or an active one whose lease ran out
    return {
        "holder": holder,
        "host": host,
        "pid": pid,
        "role": role,
        "state": state,
        "started_at": started_at,
        "seen_at": seen_at,
        "seen_s_ago": round(now - seen_at, 1),
    }


def first_dispatch_after(site_dir: Path, since: float) -> float | None:
    """Wall-clock time of the first attempt dispatched at or after ``since`` (for measuring a takeover)."""
    with open_read_only(site_dir) as db:
        row = db.execute("SELECT MIN(dispatched_at) FROM attempts WHERE dispatched_at >= ?", (since,)).fetchone()
    return float(row[0]) if row and row[0] is not None else None
