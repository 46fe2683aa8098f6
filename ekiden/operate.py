"""Commands for operating running work: hold, release, skip, kill, rerun, set-status, audit, purge."""

import argparse
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ekiden.client import CliError, add_connection_args, call_once
from ekiden.render import clock, print_json, table

#: ``--older-than`` units, in seconds.
_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register the run-control subcommands."""
    for verb, what in (("hold", "hold a run (nothing new starts) or a job"), ("release", "release a held run or job")):
        s = sub.add_parser(verb, help=what)
        s.add_argument("run")
        s.add_argument("job", nargs="?")
        add_connection_args(s)
    s = sub.add_parser("skip", help="skip a job that has not started (the jobs after it go on)")
    s.add_argument("run")
    s.add_argument("job")
    add_connection_args(s)
    s = sub.add_parser("kill", help="kill a running job (its whole process group), or a whole run")
    s.add_argument("run")
    s.add_argument("job", nargs="?")
    add_connection_args(s)
    s = sub.add_parser("rerun", help="run again the jobs that did not succeed, or from / only one job")
    s.add_argument("run")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--from", dest="from_job", metavar="JOB", help="this job and everything after it")
    how.add_argument("--only", metavar="JOB", help="only this job")
    how.add_argument("--failed", action="store_true", help="every job that did not succeed (the default)")
    add_connection_args(s)
    s = sub.add_parser("set-status", help="set a job that is not running to succeeded, failed or skipped")
    s.add_argument("run")
    s.add_argument("job")
    s.add_argument("state", choices=["succeeded", "failed", "skipped"])
    add_connection_args(s)
    s = sub.add_parser("audit", help="operator actions: who, what, when, from where")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    add_connection_args(s)
    s = sub.add_parser("purge", help="forget finished runs and audit entries older than an age")
    s.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 90m")
    add_connection_args(s)


def older_than_s(text: str) -> float:
    """Seconds in an age like ``30d``, ``12h``, ``90m`` or ``45s``.

    Raises:
        CliError: the age cannot be read.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match is None:
        raise CliError(f"age {text!r} is not a number followed by s, m, h or d (e.g. 30d)")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


async def cmd_hold(args: argparse.Namespace) -> int:
    """``ekiden hold RUN [JOB]``."""
    print(_said(await call_once(args, "hold", run=args.run, job=args.job)))
    return 0


async def cmd_release(args: argparse.Namespace) -> int:
    """``ekiden release RUN [JOB]``."""
    print(_said(await call_once(args, "release", run=args.run, job=args.job)))
    return 0


async def cmd_skip(args: argparse.Namespace) -> int:
    """``ekiden skip RUN JOB``."""
    print(_said(await call_once(args, "skip", run=args.run, job=args.job)))
    return 0


async def cmd_kill(args: argparse.Namespace) -> int:
    """``ekiden kill RUN [JOB]``."""
    print(_said(await call_once(args, "kill", run=args.run, job=args.job)))
    return 0


async def cmd_rerun(args: argparse.Namespace) -> int:
    """``ekiden rerun RUN [--from JOB | --only JOB | --failed]``."""
    mode, job = ("from", args.from_job) if args.from_job else ("only", args.only) if args.only else ("failed", None)
    result = await call_once(args, "rerun", run=args.run, mode=mode, job=job)
    print(f"run {result['run']}: running again {', '.join(result['rerun'])}")
    return 0


async def cmd_set_status(args: argparse.Namespace) -> int:
    """``ekiden set-status RUN JOB STATE``."""
    print(_said(await call_once(args, "set_status", run=args.run, job=args.job, state=args.state)))
    return 0


async def cmd_audit(args: argparse.Namespace) -> int:
    """``ekiden audit``."""
    rows = await call_once(args, "audit", limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    print(
        table(
            [[clock(r["ts"]), r["who"], r["origin"], r["action"], r["target"], r["outcome"]] for r in rows],
            ["WHEN", "WHO", "FROM", "ACTION", "TARGET", "OUTCOME"],
        )
    )
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    """``ekiden purge --older-than AGE``."""
    result = await call_once(args, "purge", older_than_s=older_than_s(args.older_than))
    print(f"forgot finished runs and audit entries from before {clock(result['purged_before'])}")
    return 0


def _said(result: dict[str, Any]) -> str:
    where = f"run {result['run']}" + (f" job {result['job']}" if result.get("job") else "")
    what = {k: v for k, v in result.items() if k not in ("run", "job")}
    return f"{where}: " + ", ".join(f"{k} {v}" for k, v in what.items())


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "hold": cmd_hold,
    "release": cmd_release,
    "skip": cmd_skip,
    "kill": cmd_kill,
    "rerun": cmd_rerun,
    "set-status": cmd_set_status,
    "audit": cmd_audit,
    "purge": cmd_purge,
}
