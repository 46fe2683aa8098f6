"""The operator's commands, applied in the core's turn: apply definitions, start a run, schedules, agents,
maintenance mode, purge, and the commands on one run (``engine.control``).

Each command is checked against its caller's tenant first; what it changes is committed with the rest of
the turn before its result is sent, and every command an operator sent is recorded in the audit log with
its outcome.
"""

import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from engine import control, events, tenancy
from engine.changes import Changes
from engine.sitefile import MAINTENANCE_KEY
from engine.states import JobState
from engine.targets import AgentState
from schemas.definitions import DefinitionError, Definitions, parse_definitions
from schemas.errors import ErrorCode, WireError
from schemas.names import is_valid_name
from schemas.unit_checks import cross_errors

if TYPE_CHECKING:
    from engine.core import Command, Core, Outbound

logger = logging.getLogger(__name__)

#: Commands that act on one run (loaded from the database first if it already ended).
RUN_COMMANDS = frozenset({"hold", "release", "skip", "kill", "rerun", "set_status"})


def handle(core: "Core", cmd: "Command", ch: Changes, out: "Outbound", now: float) -> None:
    """Apply one command; its result (or why it was refused) is sent after commit, and audited."""
    try:
        result = _apply(core, cmd, ch, out, now)
    except WireError as exc:
        out.results.append((cmd.done, exc))
        _audit(cmd, f"refused: {exc.message}", ch, now)
    else:
        out.results.append((cmd.done, result))
        _audit(cmd, "ok", ch, now)


def _apply(core: "Core", cmd: "Command", ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    tenancy.check_command(cmd.verb, cmd.args, cmd.caller.get("tenant"), core.jobnets, core.targets, core.runs)
    if cmd.verb == "apply":
        return _apply_definitions(core, cmd.args.get("definitions"), ch, now)
    if cmd.verb == "run":
        return _start_run(core, cmd.args, ch, out, now)
    if cmd.verb == "schedule":
        return core.schedules.command(cmd.args, ch.schedules)
    if cmd.verb == "maintenance":
        return _set_maintenance(core, cmd.args.get("on"), ch)
    if cmd.verb == "agent":
        return _agent_command(core, cmd.args, ch, out, now)
    if cmd.verb in RUN_COMMANDS:
        return _run_command(core, cmd, ch, out, now)
    if cmd.verb == "purge":
        older_than_s = cmd.args.get("older_than_s")
        if isinstance(older_than_s, bool) or not isinstance(older_than_s, int | float) or older_than_s < 0:
            raise WireError(ErrorCode.INVALID, "purge needs older_than_s, a number of seconds >= 0")
        ch.purge_before = now - older_than_s
        return {"purged_before": ch.purge_before}
    raise WireError(ErrorCode.INVALID, f"unknown command {cmd.verb!r}")


def _audit(cmd: "Command", outcome: str, ch: Changes, now: float) -> None:
    if not cmd.caller:
        return  # the manager's own commands (schedules) are in the run history, not the audit log
    who = f"{cmd.caller.get('user', '?')}"
    origin = f"{cmd.caller.get('host', '?')} pid {cmd.caller.get('pid', '?')}"
    detail = {k: v for k, v in cmd.args.items() if k != "definitions"}
    if "definitions" in cmd.args:
        detail["definitions"] = _summary(cmd.args["definitions"])
    target = str(cmd.args.get("run") or cmd.args.get("jobnet") or cmd.args.get("name") or "")
    if cmd.args.get("job"):
        target += f" job {cmd.args['job']}"
    ch.audit.append((now, who, origin, cmd.verb, target, orjson.dumps(detail, default=str).decode(), outcome))


def _summary(definitions: Any) -> dict[str, list[str]]:
    """What a definitions map names, for the audit log (not its whole body)."""
    if not isinstance(definitions, dict):
        return {}
    return {k: sorted(map(str, v)) for k, v in definitions.items() if isinstance(v, dict)}


def _apply_definitions(core: "Core", raw: Any, ch: Changes, now: float) -> dict[str, Any]:
    try:
        # References may name what is already registered: checked against it just below.
        defs = parse_definitions(raw, complete=False)
    except DefinitionError as exc:
        raise WireError(ErrorCode.INVALID, "definitions refused:\n" + str(exc)) from exc
    _check_targets(core, defs)
    known = {**{n: net for n, (_, net, _) in core.jobnets.items()}, **defs.jobnets}
    calendars = {*core.schedules.calendars, *defs.calendars}
    if crossed := cross_errors(defs.jobnets, known, calendars):
        raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(map(str, crossed)))
    if unknown := core.schedules.check(defs, {*core.jobnets, *defs.jobnets}):
        raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(unknown))
    result: list[dict[str, Any]] = []
    for name, net in sorted(defs.jobnets.items()):
        body = orjson.dumps(net.to_dict(), option=orjson.OPT_SORT_KEYS).decode()
        digest = hashlib.sha256(body.encode()).hexdigest()
        current = core.jobnets.get(name)
        if current is not None and current[2] == digest:
            result.append({"name": name, "version": current[0], "changed": False})
            continue
        version = current[0] + 1 if current else 1
        ch.jobnet_versions.append((name, version, body, digest, net.tenant, now))
        core.jobnets[name] = (version, net, digest)
        result.append({"name": name, "version": version, "changed": True})
    for name, dest in sorted(defs.destinations.items()):
        ch.destinations.append((name, orjson.dumps(dest.to_dict()).decode(), now))
    for name, agent in sorted(defs.agents.items()):
        ch.agent_definitions.append(("agent", name, orjson.dumps(agent.to_dict()).decode(), now))
    for name, group in sorted(defs.groups.items()):
        ch.agent_definitions.append(("group", name, orjson.dumps(group.to_dict()).decode(), now))
    core.targets.define(defs)
    core.admission.define(defs)
    for name, lock in sorted(defs.locks.items()):
        ch.agent_definitions.append(("lock", name, orjson.dumps(lock.to_dict()).decode(), now))
    return {
        "jobnets": result,
        "destinations": sorted(defs.destinations),
        "agents": sorted(defs.agents),
        "groups": sorted(defs.groups),
        **core.schedules.apply(defs, ch.schedules, now),
    }


def _check_targets(core: "Core", defs: Definitions) -> None:
    errors = core.targets.tenant_errors(defs)
    known = {**core.admission.locks, **defs.locks}
    for net in defs.jobnets.values():
        uses = [(f"jobnet.{net.name}.locks", u) for u in net.locks]
        uses += [(f"jobnet.{net.name}.job[{i}].locks", u) for i, j in enumerate(net.jobs) for u in j.locks]
        errors += [f"{path}: no lock named {u.name!r} is defined" for path, u in uses if u.name not in known]
    if errors:
        raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(errors))


def _run_command(core: "Core", cmd: "Command", ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    run_id, job = cmd.args.get("run"), cmd.args.get("job")
    run = core.runs.get(run_id) if isinstance(run_id, str) else None
    if run is None:
        raise WireError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
    if cmd.verb == "hold":
        return control.hold(core, run, job, ch, out)
    if cmd.verb == "release":
        return control.release(core, run, job, ch, out)
    if cmd.verb == "skip":
        return control.skip(core, run, job, ch, out, now)
    if cmd.verb == "kill":
        return control.kill(core, run, job, ch, out, now)
    if cmd.verb == "rerun":
        return control.rerun(core, run, cmd.args, ch, out, now)
    return control.set_status(core, run, job, cmd.args.get("state"), ch, out, now)


def _agent_command(core: "Core", args: dict[str, Any], ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    """hold, release, block, cleanup or unregister a standard agent."""
    name, action = args.get("name"), args.get("action")
    if not isinstance(name, str) or not is_valid_name(name):
        raise WireError(ErrorCode.INVALID, f"invalid agent name {name!r}")
    states = {"hold": AgentState.HELD, "release": AgentState.EFFECTIVE, "block": AgentState.BLOCKED}
    states["cleanup"] = AgentState.BLOCKED
    if action == "unregister":
        ch.agent_deletes.append(name)
        core.targets.status.pop(name, None)
        return {"agent": name, "state": "unregistered"}
    if action not in states:
        raise WireError(ErrorCode.INVALID, f"unknown agent action {action!r}: use {', '.join(states)}, unregister")
    status = core.targets.agent(name)
    status.state = states[action]
    ch.agent_states[name] = (name, now, str(status.state), status.used_at)
    lost = 0
    if status.state == AgentState.BLOCKED:
        # A target that died: what it was running is lost, and the restart table decides what follows.
        for aid, (run, job) in list(core.dispatch.on_agents.items()):
            attempt = job.attempt_of(aid)
            if attempt is not None and attempt.target == f"agent:{name}":
                events.lose(core, run, job, attempt, f"agent {name} was {action}ed", ch, out, now)
                lost += 1
    return {"agent": name, "state": str(status.state), "attempts_lost": lost}


def _set_maintenance(core: "Core", on: Any, ch: Changes) -> dict[str, Any]:
    if not isinstance(on, bool):
        raise WireError(ErrorCode.INVALID, "maintenance needs 'on': true or false")
    if on != core.maintenance:
        ch.settings[MAINTENANCE_KEY] = "on" if on else "off"
        logger.warning("maintenance mode %s", "on: nothing new starts" if on else "off")
    core.maintenance = on
    held = sum(1 for _, job in core.dispatch.ready if job.state == JobState.READY) if on else 0
    return {"maintenance": on, "jobs_held": held}


def _start_run(core: "Core", args: dict[str, Any], ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    if core.maintenance:
        raise WireError(
            ErrorCode.CONFLICT,
            "the site is in maintenance mode: no run starts until 'ekiden site maintenance off'",
        )
    name = args.get("jobnet")
    params = args.get("params") or {}
    if not isinstance(name, str) or name not in core.jobnets:
        raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()):
        raise WireError(ErrorCode.INVALID, "params must map names to strings")
    fire = args.get("fire")
    if fire is not None and (fired := core.schedules.check_fire(fire)) is not None:
        return {"run": fired, "jobnet": name, "deduplicated": True}
    key = args.get("dedupe")
    if key is not None and not isinstance(key, str):
        raise WireError(ErrorCode.INVALID, "dedupe must be a string")
    if key is not None and key in core.dedupe:
        earlier = core.dedupe[key]
        return {"run": earlier, "jobnet": name, "deduplicated": True}
    version, jobnet, _ = core.jobnets[name]
    queued = core.flow.admit(jobnet, args, ch)
    run = core.open_run(name, params, ch, out, now)
    run.held, run.dedupe_key = bool(args.get("hold")), key
    if key is not None:
        core.dedupe[key] = run.run_id
    if fire is not None:
        core.schedules.record_fire(fire, run.run_id, ch.schedules, now)
    core.flow.started(run, queued, ch, now)
    logger.info("run %s of %s v%d started%s", run.run_id, name, version, " held" if run.held else "")
    return {"run": run.run_id, "jobnet": name, "version": version, "held": run.held}
