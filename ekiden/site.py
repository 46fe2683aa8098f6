"""``ekiden site``: the site directory and its manager pair (status, maintenance, create, ls).

``status`` reads the site database itself, read-only, so it works with no manager running; given
``--nats`` it asks the active manager instead, which answers with the same document. ``maintenance`` is a
command to the active manager, committed like any other (so a takeover keeps it). ``create`` makes a
site directory with an initialized database (like JobCenter's cjcmksite) and ``ls`` lists site
directories (like cjcls).
"""

import argparse
import asyncio
from pathlib import Path
from typing import Any

from ekiden.client import ApiClient, CliError, call_once, endpoint_of, site_dir
from ekiden.render import clock, print_json, table
from engine.errors import EngineError
from engine.settings import DEFAULT_SERVER_ID
from engine.sitefile import is_site, read_status, site_db
from engine.store import Store
from schemas.names import is_valid_name


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``ekiden site`` and its subcommands."""
    site = sub.add_parser("site", help="the site directory and its managers: status, maintenance, create, ls")
    cmds = site.add_subparsers(dest="site_command", required=True, metavar="SUBCOMMAND")

    s = cmds.add_parser("status", help="active manager, lease, standbys and maintenance (needs no manager)")
    s.add_argument("--site", help="site directory to read (default: $EKIDEN_SITE or ./ekiden-site)")
    s.add_argument("--nats", help="ask the active manager at this NATS URL instead of reading the site database")
    s.add_argument("--server-id", help="with --nats: the manager's server ID (default: $EKIDEN_SERVER_ID or main)")
    s.add_argument("--json", action="store_true")

    s = cmds.add_parser("maintenance", help="hold the site: the manager stays up but starts nothing new")
    s.add_argument("state", choices=["on", "off"])
    s.add_argument("--site", help="site directory (default: $EKIDEN_SITE or ./ekiden-site)")
    s.add_argument("--nats", help="NATS URL of the site (default: $EKIDEN_NATS or the site's endpoint.json)")
    s.add_argument("--server-id", help="manager server ID (default: $EKIDEN_SERVER_ID or the site's)")

    s = cmds.add_parser("create", help="create a site directory with an initialized site database")
    s.add_argument("dir", metavar="DIR")
    s.add_argument(
        "--server-id", default=DEFAULT_SERVER_ID, help=f"the site's server ID (default: {DEFAULT_SERVER_ID})"
    )

    s = cmds.add_parser("ls", help="list site directories: the given ones, or those inside the given parents")
    s.add_argument("dirs", nargs="*", metavar="DIR", help="site directories or their parents (default: .)")
    s.add_argument("--json", action="store_true")


async def cmd_site(args: argparse.Namespace) -> int:
    """``ekiden site SUBCOMMAND``."""
    if args.site_command == "status":
        return await _status(args)
    if args.site_command == "maintenance":
        return await _maintenance(args)
    if args.site_command == "create":
        return await _create(Path(args.dir), args.server_id)
    return await _ls([Path(d) for d in args.dirs or ["."]], args.json)


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_status(path)
    except EngineError as exc:
        raise CliError(str(exc)) from exc


async def _status(args: argparse.Namespace) -> int:
    if args.nats:
        client = await ApiClient.connect(endpoint_of(args), timeout_s=10)
        try:
            doc: dict[str, Any] = await client.call("site")
        finally:
            await client.close()
    else:
        doc = await asyncio.to_thread(_read, site_dir(args.site))
    if args.json:
        print_json(doc)
    else:
        print(render_status(doc))
    return 0


def render_status(doc: dict[str, Any]) -> str:
    """The site status document as text."""
    lines = [
        f"site         {doc['site']}",
        f"server id    {doc['server_id'] or '-'}",
        f"schema       {doc['schema_version']}",
        f"active       {_active_line(doc)}",
        f"standbys     {doc['standbys']}",
        f"maintenance  {'ON: nothing new starts' if doc['maintenance'] else 'off'}",
        f"runs         {doc['runs_running']} running",
    ]
    if "answered_by" in doc:
        by = doc["answered_by"]
        lines.append(f"answered by  {by['host']} pid {by['pid']} (epoch {by['epoch']})")
    if doc["managers"]:
        rows = [
            [m["host"], str(m["pid"]), m["state"], f"{m['seen_s_ago']}s ago", clock(m["started_at"]), m["holder"]]
            for m in doc["managers"]
        ]
        lines += ["", table(rows, ["HOST", "PID", "STATE", "SEEN", "STARTED", "HOLDER"])]
    return "\n".join(lines)


def _active_line(doc: dict[str, Any]) -> str:
    lease = doc["lease"]
    if lease is None:
        return "none (no manager has ever held the lease)"
    who = f"{lease['host']} pid {lease['pid']}, epoch {lease['epoch']}"
    if lease["valid"]:
        return f"{who}, lease expires in {lease['expires_in_s']:.1f}s"
    if lease.get("released"):
        return f"none: {who} gave the lease up when it stopped"
    return f"none: the lease of {who} expired {-lease['expires_in_s']:.1f}s ago"


async def _maintenance(args: argparse.Namespace) -> int:
    result = await call_once(args, "maintenance", on=args.state == "on")
    if result["maintenance"]:
        print(f"maintenance on: nothing new starts, new runs are refused ({result['jobs_held']} ready jobs held)")
    else:
        print("maintenance off: jobs start again")
    return 0


def _check_new_site(path: Path, server_id: str) -> None:
    if not is_valid_name(server_id):
        raise CliError(f"invalid server id {server_id!r}: use letters, digits, '_' and '-' (at most 64)")
    if is_site(path):
        raise CliError(f"{path} is already a site directory ({site_db(path)} exists)")
    if path.exists() and not path.is_dir():
        raise CliError(f"{path} exists and is not a directory")


async def _create(path: Path, server_id: str) -> int:
    await asyncio.to_thread(_check_new_site, path, server_id)
    try:
        store = await Store.open(site_db(path))
        try:
            await store.claim_server_id(server_id)
        finally:
            await store.close()
        doc = await asyncio.to_thread(read_status, path)
    except (EngineError, OSError) as exc:
        raise CliError(f"cannot create a site in {path}: {exc}") from exc
    print(f"site {path} created: server id {server_id}, schema {doc['schema_version']}")
    return 0


def find_sites(paths: list[Path]) -> list[Path]:
    """The site directories among ``paths`` and their immediate subdirectories.

    Raises:
        CliError: a path does not exist or is not a directory.
    """
    found: list[Path] = []
    for path in paths:
        if is_site(path):
            found.append(path)
        elif path.is_dir():
            found += sorted(child for child in path.iterdir() if child.is_dir() and is_site(child))
        else:
            raise CliError(f"{path}: no such directory")
    return found


def _summary(path: Path) -> dict[str, Any]:
    try:
        return read_status(path)
    except EngineError as exc:
        return {"site": str(path), "error": str(exc)}


async def _ls(paths: list[Path], as_json: bool) -> int:
    sites = await asyncio.to_thread(find_sites, paths)
    docs = [await asyncio.to_thread(_summary, path) for path in sites]
    if as_json:
        print_json(docs)
        return 0
    rows = []
    for doc in docs:
        if "error" in doc:
            rows.append([doc["site"], "-", "-", f"unreadable: {doc['error']}", "-", "-", "-"])
            continue
        active = doc["active"]
        rows.append(
            [
                doc["site"],
                doc["server_id"] or "-",
                str(doc["schema_version"]),
                f"{active['host']} pid {active['pid']} (epoch {active['epoch']})" if active else "none",
                str(doc["standbys"]),
                "on" if doc["maintenance"] else "off",
                str(doc["runs_running"]),
            ]
        )
    print(table(rows, ["SITE", "SERVER ID", "SCHEMA", "ACTIVE", "STANDBYS", "MAINT", "RUNNING"]))
    return 0
