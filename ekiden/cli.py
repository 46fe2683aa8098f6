"""The ``ekiden`` command: validate, apply, run and watch jobnets; start the embedded stack; run services."""

import argparse
import asyncio
import io
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ekiden import language, operate
from ekiden import schedule as schedule_cli
from ekiden import security as security_cli
from ekiden import site as site_cli
from ekiden.client import ApiClient, CliError, add_connection_args, endpoint_of, site_dir
from ekiden.deffiles import load_definitions
from ekiden.follow import RunFollower
from ekiden.livelogs import follow_logs
from ekiden.render import listing, run_status
from ekiden.render import print_json as _print_json
from ekiden.up import Stack, StackPlan
from schemas.definitions import DefinitionError, Definitions
from schemas.errors import WireError

#: Exit codes of ``ekiden run --wait`` (and of every command: 0 and 2), documented in docs/run-control.md.
EXIT_OK = 0  #: the command did what was asked; with --wait, the run succeeded
EXIT_RUN_FAILED = 1  #: the run ended failed
EXIT_ERROR = 2  #: the command itself failed: bad arguments, refused, unknown names, no manager answering
EXIT_RUN_STOPPED = 3  #: the run was killed by an operator (it ended stopped)
EXIT_WAIT_TIMEOUT = 4  #: --timeout-s passed while the run was still running (it goes on)
#: The exit code of a run that ended in a state.
RUN_EXIT = {"succeeded": EXIT_OK, "failed": EXIT_RUN_FAILED, "stopped": EXIT_RUN_STOPPED}
#: Services that ``ekiden NAME ...`` runs in place of this process.
SERVICES = {"manager": "engine", "relay": "relay", "agent": "agents"}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="ekiden", description="Ekiden job scheduler")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check definition files (no server needed)")
    s.add_argument("paths", nargs="+", metavar="PATH")

    s = sub.add_parser("apply", help="register definitions with the manager (each change is a new version)")
    s.add_argument("paths", nargs="+", metavar="PATH")
    add_connection_args(s)

    s = sub.add_parser("run", help="start a run of a jobnet")
    s.add_argument("jobnet")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--wait", action="store_true", help="wait for the run to end; exit 0 only if it succeeded")
    s.add_argument("--follow", action="store_true", help="show progress until the run ends (implies --wait)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--hold", action="store_true", help="start the run held: nothing starts until 'ekiden release'")
    s.add_argument("--dedupe", metavar="KEY", help="a retried submission with the same key returns the same run")
    s.add_argument("--timeout-s", type=float, help="with --wait/--follow: stop waiting after this long (exit 4)")
    s.add_argument("--dry-run", action="store_true", help="show what would run on which target; run nothing")
    add_connection_args(s)

    s = sub.add_parser("status", help="show a run")
    s.add_argument("run")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", action="store_true", help="follow the run live until it ends")
    add_connection_args(s)

    s = sub.add_parser("ls", help="list jobnets, runs, agents, destinations, locks or a jobnet's versions")
    s.add_argument("what", choices=["jobnets", "runs", "agents", "destinations", "locks", "versions"])
    s.add_argument("name", nargs="?", help="with versions: the jobnet")
    s.add_argument("--jobnet", help="runs of this jobnet only")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    add_connection_args(s)

    s = sub.add_parser("agents", help="change how the manager routes to a standard agent")
    s.add_argument("action", choices=["hold", "release", "block", "cleanup", "unregister"])
    s.add_argument("name")
    add_connection_args(s)

    s = sub.add_parser("logs", help="show a job's output")
    s.add_argument("run")
    s.add_argument("job")
    s.add_argument("--attempt", type=int, help="attempt number (default: the latest)")
    s.add_argument("--follow", action="store_true", help="print the output as the job runs, until it ends")
    add_connection_args(s)

    s = sub.add_parser("up", help="start the embedded stack: NATS, manager, relay, workers, agent")
    s.add_argument("paths", nargs="*", metavar="DEFS", help="definition files or directories (default: examples/)")
    s.add_argument("--site", help="site directory (default: $EKIDEN_SITE or ./ekiden-site)")
    s.add_argument("--run", metavar="JOBNET", help="run this jobnet, show progress, stop, exit 0 if it succeeded")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--workers", type=int, default=2, help="workers per destination")
    s.add_argument("--concurrency", type=int, default=4, help="jobs at once per worker")
    s.add_argument("--standby", action="store_true", help="also start a standby manager (an active-standby pair)")
    s.add_argument("--insecure", action="store_true", help="NATS without credentials or permissions (comparisons)")

    site_cli.add_parser(sub)
    security_cli.add_parser(sub)
    operate.add_parsers(sub)
    language.add_parsers(sub)
    schedule_cli.add_parsers(sub)

    for name in SERVICES:
        s = sub.add_parser(
            name, help=f"run {'an' if name[0] in 'aeiou' else 'a'} {name} (see 'ekiden {name} --help')", add_help=False
        )
        s.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ekiden`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVICES:
        # The service parses its own options (argparse's REMAINDER would stop at the first one).
        os.execv(sys.executable, [sys.executable, "-m", SERVICES[argv[0]], *argv[1:]])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ekiden: %(message)s")
    # A command retries its connection for a few seconds, then fails with one message saying why.
    logging.getLogger("runtime.bus").setLevel(logging.ERROR)
    try:
        code = _run_async(COMMANDS[args.command](args))
    except DefinitionError as exc:
        print(f"ekiden: definitions refused ({len(exc.errors)} errors):", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        code = EXIT_ERROR
    except (CliError, WireError) as exc:
        print(f"ekiden: {exc}", file=sys.stderr)
        code = EXIT_ERROR
    sys.exit(code)


def _run_async(coro: Awaitable[int]) -> int:
    import uvloop

    async def _main() -> int:
        return await coro

    return uvloop.run(_main())


def _params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"parameter {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


async def _client(args: argparse.Namespace) -> ApiClient:
    return await ApiClient.connect(endpoint_of(args))


async def cmd_validate(args: argparse.Namespace) -> int:
    """``ekiden validate``."""
    defs = load_definitions(args.paths)
    jobs = sum(len(n.jobs) for n in defs.jobnets.values())
    print(f"ok: {len(defs.jobnets)} jobnets, {jobs} jobs, {len(defs.destinations)} destinations")
    return 0


async def cmd_apply(args: argparse.Namespace) -> int:
    """``ekiden apply``."""
    defs = load_definitions(args.paths, complete=False)  # names the manager already holds are fine
    client = await _client(args)
    try:
        result = await client.call("apply", definitions=defs.to_dict())
    finally:
        await client.close()
    _print_applied(result)
    return 0


def _print_applied(result: dict[str, Any]) -> None:
    for net in result["jobnets"]:
        change = "applied" if net["changed"] else "unchanged"
        print(f"jobnet {net['name']}: version {net['version']} ({change})")
    for dest in result["destinations"]:
        print(f"destination {dest}: applied")
    for cal in result.get("calendars", []):
        print(f"calendar {cal}: applied")
    changed = [s for s in result.get("schedules", []) if s["changed"]]
    if result.get("schedules"):
        print(f"schedules: {len(changed)} applied, {len(result['schedules']) - len(changed)} unchanged")


async def cmd_run(args: argparse.Namespace) -> int:
    """``ekiden run``."""
    if args.dry_run:
        return await language.dry_run(args, _params(args.param))
    client = await _client(args)
    try:
        submit = {"params": _params(args.param), "hold": args.hold, "dedupe": args.dedupe}
        return await _start_and_watch(client, args.jobnet, submit, args.follow, args.wait, args.json, args.timeout_s)
    finally:
        await client.close()


async def _start_and_watch(
    client: ApiClient,
    jobnet: str,
    submit: dict[str, Any],
    follow: bool,
    wait: bool,
    as_json: bool,
    timeout_s: float | None = None,
) -> int:
    started = await client.call("run", jobnet=jobnet, **{k: v for k, v in submit.items() if v is not None})
    run_id = started["run"]
    if not (follow or wait):
        said = "already started (same dedupe key)" if started.get("deduplicated") else "started"
        _print_json(started) if as_json else print(f"run {run_id} of {jobnet} {said}")
        return EXIT_OK
    out = sys.stdout if follow and not as_json else io.StringIO()
    try:
        async with asyncio.timeout(timeout_s):
            doc = await RunFollower(client, run_id, out, screen=follow and out.isatty()).follow()
    except TimeoutError:
        print(f"ekiden: run {run_id} still running after {timeout_s:g}s", file=sys.stderr)
        return EXIT_WAIT_TIMEOUT
    if as_json:
        _print_json(doc)
    elif not follow:
        print(run_status(doc))
    return RUN_EXIT.get(doc["state"], EXIT_RUN_FAILED)


async def cmd_status(args: argparse.Namespace) -> int:
    """``ekiden status``."""
    client = await _client(args)
    try:
        if args.watch and not args.json:
            doc = await RunFollower(client, args.run, sys.stdout, screen=sys.stdout.isatty()).follow()
            return RUN_EXIT.get(doc["state"], EXIT_RUN_FAILED)
        doc = await client.call("status", run=args.run)
    finally:
        await client.close()
    _print_json(doc) if args.json else print(run_status(doc))
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    """``ekiden ls``."""
    if args.what == "versions":
        return await language.ls_versions(args)
    client = await _client(args)
    try:
        if args.what == "runs":
            rows = await client.call("runs", jobnet=args.jobnet, limit=args.limit)
        else:
            rows = await client.call(args.what)
    finally:
        await client.close()
    _print_json(rows) if args.json else print(listing(args.what, rows))
    return 0


async def cmd_agents(args: argparse.Namespace) -> int:
    """``ekiden agents ACTION NAME``."""
    client = await _client(args)
    try:
        result = await client.call("agent", name=args.name, action=args.action)
    finally:
        await client.close()
    lost = result.get("attempts_lost")
    print(f"agent {result['agent']}: {result['state']}" + (f" ({lost} running attempts lost)" if lost else ""))
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    """``ekiden logs``."""
    client = await _client(args)
    try:
        if args.follow:
            job = await follow_logs(client, args.run, args.job)
            print(f"({args.job} {job['state']})", file=sys.stderr)
            return 0
        out = await client.call("logs", run=args.run, job=args.job, attempt=args.attempt)
    finally:
        await client.close()
    sys.stdout.buffer.write(out["stdout"])
    sys.stdout.flush()
    sys.stderr.buffer.write(out["stderr"])
    if not out["finished"]:
        print(f"(attempt {out['attempt']} has not finished)", file=sys.stderr)
    return 0


async def cmd_up(args: argparse.Namespace) -> int:
    """``ekiden up``."""
    paths = args.paths or ["examples"]
    defs = await asyncio.to_thread(_load_for_up, paths, bool(args.paths))
    if args.run and args.run not in defs.jobnets:
        raise CliError(f"--run {args.run}: no such jobnet in {', '.join(paths)}")
    params = _params(args.param)
    stack = Stack(site_dir(args.site).resolve(), secure=not args.insecure)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting the embedded stack in {stack.site} ...", flush=True)
    try:
        await stack.start(StackPlan.for_definitions(defs, args.workers, args.concurrency, 2 if args.standby else 1))
        client = await ApiClient.connect(stack.endpoint)
        try:
            _print_applied(await client.call("apply", definitions=defs.to_dict()))
            print(f"up: NATS at {stack.endpoint.nats_url}, server id {stack.server_id}, logs in {stack.site}/logs")
            if args.run:
                return await _run_or_stop(client, args.run, params, stop)
            print("serving; press Ctrl-C to stop")
            await stop.wait()
            return 0
        finally:
            await client.close()
    finally:
        print("stopping ...", flush=True)
        await stack.stop()


def _load_for_up(paths: list[str], named: bool) -> Definitions:
    if not named and not Path("examples").is_dir():
        raise CliError("no definitions given and no ./examples directory: run from the repository or name files")
    return load_definitions(paths)


async def _run_or_stop(client: ApiClient, jobnet: str, params: dict[str, str], stop: asyncio.Event) -> int:
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(_start_and_watch(client, jobnet, {"params": params}, True, True, False))
        stopper = tg.create_task(stop.wait())
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if run not in done:
            run.cancel()
            print("interrupted", file=sys.stderr)
            return EXIT_RUN_FAILED
        stopper.cancel()
    return run.result()


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "validate": cmd_validate,
    "apply": cmd_apply,
    "run": cmd_run,
    "status": cmd_status,
    "ls": cmd_ls,
    "logs": cmd_logs,
    "agents": cmd_agents,
    "up": cmd_up,
    "site": site_cli.cmd_site,
    "security": security_cli.cmd_security,
    **operate.COMMANDS,
    **language.COMMANDS,
    **schedule_cli.COMMANDS,
}
