"""Commands for definitions as data and test runs: export, import, diff, ls versions, run --dry-run."""

import argparse
import asyncio
import difflib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from ekiden.client import ApiClient, CliError, add_connection_args, call_once, endpoint_of
from ekiden.render import clock, print_json, table
from schemas.definitions import DefinitionError, FieldError
from schemas.definitions_schema import parse_export


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register ``export``, ``import`` and ``diff``."""
    s = sub.add_parser("export", help="write every definition the manager holds as one JSON document")
    s.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    add_connection_args(s)
    s = sub.add_parser("import", help="apply a JSON export document (everything in it, or nothing)")
    s.add_argument("file", metavar="FILE")
    add_connection_args(s)
    s = sub.add_parser("diff", help="show what changed in a jobnet between two versions")
    s.add_argument("jobnet")
    s.add_argument("v1", type=int)
    s.add_argument("v2", type=int)
    add_connection_args(s)


async def cmd_export(args: argparse.Namespace) -> int:
    """``ekiden export [--out FILE]``."""
    doc = await call_once(args, "export")
    text = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    if args.out:
        await asyncio.to_thread(Path(args.out).write_text, text, encoding="utf-8")
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(doc["definitions"].items()))
        print(f"exported {counts or 'nothing'} to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


async def cmd_import(args: argparse.Namespace) -> int:
    """``ekiden import FILE``: the document is checked whole before anything is sent."""
    path = Path(args.file)
    try:
        doc = orjson.loads(await asyncio.to_thread(path.read_bytes))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise DefinitionError([FieldError(str(path), f"not valid JSON: {exc}")]) from exc
    defs = parse_export(doc)
    result = await call_once(args, "apply", definitions=defs.to_dict())
    changed = [n["name"] for n in result["jobnets"] if n["changed"]]
    print(f"imported {path}: {len(result['jobnets'])} jobnets ({len(changed)} new versions)", end="")
    others = [(k, len(result.get(k, []))) for k in ("destinations", "agents", "groups", "calendars")]
    print("".join(f", {n} {k}" for k, n in others if n) + f", {len(result.get('schedules', []))} schedules")
    return 0


async def cmd_diff(args: argparse.Namespace) -> int:
    """``ekiden diff JOBNET V1 V2``: a unified diff of the two versions' canonical JSON."""
    client = await ApiClient.connect(endpoint_of(args))
    try:
        old = await client.call("version", jobnet=args.jobnet, version=args.v1)
        new = await client.call("version", jobnet=args.jobnet, version=args.v2)
    finally:
        await client.close()
    before = json.dumps(old["definition"], indent=2, sort_keys=True).splitlines(keepends=True)
    after = json.dumps(new["definition"], indent=2, sort_keys=True).splitlines(keepends=True)
    name = args.jobnet
    lines = list(difflib.unified_diff(before, after, f"{name} v{args.v1}", f"{name} v{args.v2}"))
    sys.stdout.write("".join(lines) if lines else f"{name}: v{args.v1} and v{args.v2} are the same\n")
    return 0


async def ls_versions(args: argparse.Namespace) -> int:
    """``ekiden ls versions JOBNET``."""
    if not args.name:
        raise CliError("ls versions needs a jobnet: ekiden ls versions JOBNET")
    rows = await call_once(args, "versions", jobnet=args.name)
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            [[str(r["version"]), clock(r["applied_at"]), str(r["units"]), r["digest"][:12]] for r in rows],
            ["VERSION", "APPLIED", "UNITS", "DIGEST"],
        )
    )
    return 0


async def dry_run(args: argparse.Namespace, params: dict[str, str]) -> int:
    """``ekiden run JOBNET --dry-run``: what would run where, and nothing runs."""
    plan = await call_once(args, "dry_run", jobnet=args.jobnet, params=params)
    if args.json:
        print_json(plan)
        return 0
    given = " ".join(f"{k}={v}" for k, v in plan["params"].items())
    print(f"dry run of {plan['jobnet']} v{plan['version']}" + (f" with {given}" if given else "") + ": nothing runs")
    print(table([_row(u) for u in plan["units"]], ["UNIT", "TYPE", "AFTER", "WHERE", "WOULD"]))
    return 0


def _row(unit: dict[str, Any]) -> list[str]:
    flags = f" [{', '.join(unit['flags'])}]" if unit.get("flags") else ""
    return [
        "  " * unit["depth"] + unit["unit"].rsplit("/", 1)[-1],
        unit["type"],
        ",".join(unit["after"]) or "-",
        unit["target"],
        unit["would"] + flags,
    ]


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "export": cmd_export,
    "import": cmd_import,
    "diff": cmd_diff,
}
