"""Jobnet and destination definitions: the model, and validation that names every error by its path.

The input is the map read from TOML (or JSON)::

    [destination.cloud]
    relay = "gw"

    [jobnet.nightly]
    description = "..."

    [[jobnet.nightly.job]]
    id = "extract"
    cmd = ["python3", "extract.py"]
    agent = "db-host"

A definition that does not validate is refused whole: ``DefinitionError`` carries every error found,
each with a path such as ``jobnet.nightly.job[3].after`` (job indexes count from 0).
"""

import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from schemas.calendars import Calendar, parse_calendar
from schemas.fields import DefinitionError as DefinitionError
from schemas.fields import FieldError as FieldError
from schemas.fields import check_keys as _check_keys
from schemas.fields import child as _child
from schemas.fields import named_table, named_tables
from schemas.fields import string as _string
from schemas.names import is_valid_name
from schemas.resources import Lock, LockUse, parse_lock_uses, parse_locks, parse_max_running
from schemas.schedules import Schedule, parse_schedule
from schemas.unit_checks import check_units, command_references, cross_errors
from schemas.unit_parse import parse_flow_unit, parse_job_unit, parse_jobnet_flow, unit_kind
from schemas.units import (
    FILEWATCH_CALL,
    JOB_FLOW_KEYS,
    JOBNET_FLOW_KEYS,
    PLAIN_JOB,
    PLAIN_JOBNET,
    FileWatch,
    JobnetFlow,
    Unit,
    UnitKind,
)

_T = TypeVar("_T")
_TOP_KEYS = frozenset({"jobnet", "destination", "agent", "group", "lock", "calendar", "schedule"})
_JOBNET_KEYS = frozenset({"description", "tenant", "job", "locks", "max_running"}) | JOBNET_FLOW_KEYS
_JOB_KEYS = (
    frozenset(
        {
            "id",
            "description",
            "cmd",
            "shell",
            "call",
            "args",
            "env",
            "cwd",
            "timeout_s",
            "after",
            "agent",
            "dest",
            "group",
            "broadcast",
            "restart",
            "user",
            "locks",
        }
    )
    | JOB_FLOW_KEYS
)
_DEST_KEYS = frozenset({"relay", "restart", "tenant", "description", "max_running"})
_AGENT_KEYS = frozenset({"restart", "tenant", "description", "max_running"})
_GROUP_KEYS = frozenset({"agents", "tenant", "description"})
#: Relay name a destination uses when its definition names none.
DEFAULT_RELAY = "main"
#: Tenant of definitions that name none.
DEFAULT_TENANT = "default"
#: Longest job timeout accepted, in seconds (30 days).
MAX_TIMEOUT_S = 30 * 24 * 3600
#: A call target: a dotted module path, a colon, and a function name ("package.module:function").
CALL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_CALL_RE = re.compile(CALL_PATTERN)
#: An OS user name a job may run as (POSIX portable names; no leading '-').
USER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$"
_USER_RE = re.compile(USER_PATTERN)
#: Smallest number accepted inside a call job's args (msgpack's smallest integer), unitless.
ARGS_MIN_NUMBER = -(2**63)
#: Largest number accepted inside a call job's args (msgpack's largest integer), unitless.
ARGS_MAX_NUMBER = 2**64 - 1


class RestartAttribute(StrEnum):
    """What happens to an attempt whose executor was lost (JobCenter's queue restart attribute)."""

    RESTART = "RESTART"
    PURGE = "PURGE"
    STOP = "STOP"


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of a jobnet. A job (and a file watch) has exactly one of ``argv``, ``shell``, ``call`` and
    exactly one target; a flow unit the manager runs itself (``unit.kind``: branch, loop, ...) has none."""

    id: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    call: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float | None = None
    after: tuple[str, ...] = ()
    agent: str | None = None
    dest: str | None = None
    #: a group of standard agents: any one member runs it, or every member when ``broadcast``
    group: str | None = None
    broadcast: bool = False
    restart: bool = True
    description: str = ""
    #: the OS user the job runs as (the agent must run as root and allow that user with --allow-user)
    user: str | None = None
    #: resource locks the job holds while it runs
    locks: tuple[LockUse, ...] = ()
    #: the unit's kind and flow settings (judge, retry, recovery, ...): ``schemas.units``
    unit: Unit = PLAIN_JOB

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this job, in the input format (defaults left out)."""
        head: dict[str, Any] = {"id": self.id, **({"description": self.description} if self.description else {})}
        return head | (self._job_dict() if self.unit.kind == UnitKind.JOB else self._unit_dict())

    def _job_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.argv is not None:
            out["cmd"] = list(self.argv)
        elif self.shell is not None:
            out["cmd"] = self.shell
            out["shell"] = True
        else:
            out["call"] = self.call
            if self.args:
                out["args"] = self.args
        if self.env:
            out["env"] = dict(self.env)
        if self.cwd is not None:
            out["cwd"] = self.cwd
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.after:
            out["after"] = list(self.after)
        if self.agent is not None:
            out["agent"] = self.agent
        elif self.dest is not None:
            out["dest"] = self.dest
        else:
            out["group"] = self.group
            if self.broadcast:
                out["broadcast"] = True
        # restart only when off, user only when set
        out |= {k: v for k, v in (("restart", self.restart), ("user", self.user)) if v is not None and v is not True}
        if self.locks:
            out["locks"] = [u.to_wire() for u in self.locks]
        return out | self.unit.to_dict()

    def _unit_dict(self) -> dict[str, Any]:
        """A flow unit's map: its after, a file watch's target, its kind's settings."""
        out: dict[str, Any] = {"after": list(self.after)} if self.after else {}
        if self.unit.kind == UnitKind.FILEWATCH:
            out |= {k: v for k, v in (("agent", self.agent), ("dest", self.dest), ("group", self.group)) if v}
        return out | self.unit.to_dict()


@dataclass(frozen=True, slots=True)
class Jobnet:
    """A named DAG of jobs."""

    name: str
    jobs: tuple[Job, ...]
    description: str = ""
    tenant: str = DEFAULT_TENANT
    #: resource locks each run holds from its first dispatch to its end
    locks: tuple[LockUse, ...] = ()
    #: jobs of this jobnet running at once, across its runs
    max_running: int | None = None
    #: parameters with their defaults, run timeout, delay watch, multiple-instances policy
    flow: JobnetFlow = PLAIN_JOBNET

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this jobnet, in the input format."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.tenant != DEFAULT_TENANT:
            out["tenant"] = self.tenant
        if self.locks:
            out["locks"] = [u.to_wire() for u in self.locks]
        if self.max_running is not None:
            out["max_running"] = self.max_running
        out |= self.flow.to_dict()
        out["job"] = [j.to_dict() for j in self.jobs]
        return out

    def job(self, job_id: str) -> Job:
        """The job with this ID.

        Raises:
            KeyError: there is none.
        """
        for j in self.jobs:
            if j.id == job_id:
                return j
        raise KeyError(job_id)


@dataclass(frozen=True, slots=True)
class Destination:
    """A pool of auto-scaled workers behind one name, reached through relays of one name."""

    name: str
    relay: str = DEFAULT_RELAY
    restart: RestartAttribute = RestartAttribute.RESTART
    tenant: str = DEFAULT_TENANT
    description: str = ""
    #: jobs of this destination running at once
    max_running: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this destination, in the input format."""
        out: dict[str, Any] = {"relay": self.relay, "restart": str(self.restart)}
        if self.tenant != DEFAULT_TENANT:
            out["tenant"] = self.tenant
        if self.description:
            out["description"] = self.description
        if self.max_running is not None:
            out["max_running"] = self.max_running
        return out


@dataclass(frozen=True, slots=True)
class Agent:
    """Settings of a standard agent the manager addresses by name (an agent need not be defined to run jobs)."""

    name: str
    restart: RestartAttribute = RestartAttribute.RESTART
    tenant: str = DEFAULT_TENANT
    description: str = ""
    #: jobs running at once on this agent (besides its own slots)
    max_running: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this agent, in the input format."""
        out: dict[str, Any] = {"restart": str(self.restart)}
        if self.tenant != DEFAULT_TENANT:
            out["tenant"] = self.tenant
        if self.description:
            out["description"] = self.description
        if self.max_running is not None:
            out["max_running"] = self.max_running
        return out


@dataclass(frozen=True, slots=True)
class Group:
    """Standard agents that share work; ``agents`` is in priority order (the first is preferred)."""

    name: str
    agents: tuple[str, ...]
    tenant: str = DEFAULT_TENANT
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this group, in the input format."""
        out: dict[str, Any] = {"agents": list(self.agents)}
        if self.tenant != DEFAULT_TENANT:
            out["tenant"] = self.tenant
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Definitions:
    """A validated set of jobnets, destinations, agents and agent groups."""

    jobnets: dict[str, Jobnet] = field(default_factory=dict)
    destinations: dict[str, Destination] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    locks: dict[str, Lock] = field(default_factory=dict)
    calendars: dict[str, Calendar] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of everything, in the input format (what JSON export writes)."""
        out: dict[str, Any] = {}
        if self.calendars:
            out["calendar"] = {n: c.to_dict() for n, c in sorted(self.calendars.items())}
        if self.schedules:
            out["schedule"] = {n: c.to_dict() for n, c in sorted(self.schedules.items())}
        if self.destinations:
            out["destination"] = {n: d.to_dict() for n, d in sorted(self.destinations.items())}
        if self.agents:
            out["agent"] = {n: a.to_dict() for n, a in sorted(self.agents.items())}
        if self.groups:
            out["group"] = {n: g.to_dict() for n, g in sorted(self.groups.items())}
        if self.locks:
            out["lock"] = {n: lk.to_dict() for n, lk in sorted(self.locks.items())}
        if self.jobnets:
            out["jobnet"] = {n: j.to_dict() for n, j in sorted(self.jobnets.items())}
        return out


def parse_toml(text: str, source: str = "<toml>") -> Definitions:
    """Parse and validate TOML definition text.

    Raises:
        DefinitionError: the text is not TOML, or the definitions do not validate.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError([FieldError(source, f"not valid TOML: {exc}")]) from exc
    return parse_definitions(data)


def parse_definitions(data: Any, complete: bool = True) -> Definitions:
    """Validate a definitions map (from TOML or JSON) and build the model.

    Args:
        data: the map.
        complete: the map is the whole set, so every calendar and jobnet a schedule or calendar names must be in
            it; False for one file of several (``merge`` checks the set) or for what the manager adds to what it
            already holds (it checks with ``reference_errors``).

    Raises:
        DefinitionError: with every problem found, each named by its path.
    """
    errors: list[FieldError] = []
    if not isinstance(data, dict):
        raise DefinitionError([FieldError("$", "definitions must be a map")])
    for key in sorted(set(data) - _TOP_KEYS, key=str):
        errors.append(FieldError(_child("", key), "unknown key (expected 'jobnet' or 'destination')"))
    destinations = _parse_destinations(data.get("destination", {}), errors)
    agents = _parse_agents(data.get("agent", {}), errors)
    groups = _parse_groups(data.get("group", {}), errors)
    locks = parse_locks(data.get("lock", {}), errors)
    calendars = _parse_tables(data.get("calendar", {}), "calendar", parse_calendar, errors)
    schedules = _parse_tables(data.get("schedule", {}), "schedule", parse_schedule, errors)
    jobnets: dict[str, Jobnet] = {}
    raw_nets = data.get("jobnet", {})
    if not isinstance(raw_nets, dict):
        errors.append(FieldError("jobnet", "must be a table of jobnets"))
        raw_nets = {}
    for name, body in raw_nets.items():
        net = _parse_jobnet(str(name), body, errors)
        if net is not None:
            jobnets[net.name] = net
    if complete and not errors:
        errors.extend(reference_errors(calendars, schedules, jobnets))
        errors.extend(cross_errors(jobnets, jobnets, calendars))
    if errors:
        raise DefinitionError(errors)
    return Definitions(
        jobnets=jobnets,
        destinations=destinations,
        agents=agents,
        groups=groups,
        locks=locks,
        calendars=calendars,
        schedules=schedules,
    )


def merge(parts: list[Definitions], complete: bool = True) -> Definitions:
    """Combine definitions read from several files.

    Args:
        parts: the files' definitions.
        complete: the files are the whole set, so what schedules and calendars name must be among them (False
            for a set applied to a manager that may hold the rest: it checks).

    Raises:
        DefinitionError: a jobnet, destination, agent or group is defined twice, or (``complete``) a schedule or
            calendar names what is not in the set.
    """
    errors: list[FieldError] = []
    merged = Definitions(
        jobnets=_merged("jobnet", [p.jobnets for p in parts], errors),
        destinations=_merged("destination", [p.destinations for p in parts], errors),
        agents=_merged("agent", [p.agents for p in parts], errors),
        groups=_merged("group", [p.groups for p in parts], errors),
        locks=_merged("lock", [p.locks for p in parts], errors),
        calendars=_merged("calendar", [p.calendars for p in parts], errors),
        schedules=_merged("schedule", [p.schedules for p in parts], errors),
    )
    if complete and not errors:
        errors.extend(reference_errors(merged.calendars, merged.schedules, merged.jobnets))
        errors.extend(cross_errors(merged.jobnets, merged.jobnets, merged.calendars))
    if errors:
        raise DefinitionError(errors)
    return merged


def reference_errors(
    calendars: Mapping[str, Calendar],
    schedules: Mapping[str, Schedule],
    jobnets: Collection[str],
    registered: Mapping[str, Calendar] | None = None,
) -> list[FieldError]:
    """What the calendars and schedules name that does not exist, and cycles of calendars naming each other.

    Args:
        calendars: the calendars being defined.
        schedules: the schedules being defined.
        jobnets: every jobnet name a schedule may start.
        registered: calendars that already exist (the manager's), overridden by ``calendars``.
    """
    known = {**(registered or {}), **calendars}
    errors: list[FieldError] = []
    for name, cal in sorted(calendars.items()):
        for missing in sorted(cal.references() - set(known)):
            errors.append(FieldError(f"calendar.{name}", f"names unknown calendar {missing!r}"))
    for name, sched in sorted(schedules.items()):
        if sched.jobnet not in jobnets:
            errors.append(FieldError(f"schedule.{name}.jobnet", f"unknown jobnet {sched.jobnet!r}"))
        for missing in sorted(sched.references() - set(known)):
            errors.append(FieldError(f"schedule.{name}", f"names unknown calendar {missing!r}"))
    cycle = find_cycle({n: tuple(sorted(c.references() & set(known))) for n, c in known.items()})
    if cycle:
        errors.append(FieldError(f"calendar.{cycle[0]}", "calendars name each other in a cycle: " + " -> ".join(cycle)))
    return errors


def _parse_tables(
    raw: Any, kind: str, parse: Callable[[str, Any, list[FieldError]], _T | None], errors: list[FieldError]
) -> dict[str, _T]:
    if not isinstance(raw, dict):
        errors.append(FieldError(kind, f"must be a table of {kind}s"))
        return {}
    found = {str(name): parse(str(name), body, errors) for name, body in raw.items()}
    return {name: item for name, item in found.items() if item is not None}


def _merged(kind: str, tables: list[dict[str, _T]], errors: list[FieldError]) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for table in tables:
        for name, item in table.items():
            if name in out:
                errors.append(FieldError(f"{kind}.{name}", "defined more than once"))
            out[name] = item
    return out


def _restart_attribute(body: dict[str, Any], path: str, errors: list[FieldError]) -> RestartAttribute:
    restart = body.get("restart", "RESTART")
    if not isinstance(restart, str) or restart not in RestartAttribute._value2member_map_:
        errors.append(FieldError(f"{path}.restart", "must be one of RESTART, PURGE, STOP"))
        return RestartAttribute.RESTART
    return RestartAttribute(restart)


def _parse_agents(raw: Any, errors: list[FieldError]) -> dict[str, Agent]:
    out: dict[str, Agent] = {}
    for name, (path, body) in named_tables(raw, "agent", _AGENT_KEYS, errors).items():
        restart = _restart_attribute(body, path, errors)
        tenant = _tenant(body, path, errors)
        desc = _string(body, "description", path, errors) or ""
        out[name] = Agent(name, restart, tenant, desc, parse_max_running(body, path, errors))
    return out


def _parse_groups(raw: Any, errors: list[FieldError]) -> dict[str, Group]:
    out: dict[str, Group] = {}
    for name, (path, body) in named_tables(raw, "group", _GROUP_KEYS, errors).items():
        members = body.get("agents")
        if not isinstance(members, list) or not members or not all(is_valid_name(m) for m in members):
            errors.append(FieldError(f"{path}.agents", "must be a non-empty list of agent names (priority order)"))
            continue
        if len(set(members)) != len(members):
            errors.append(FieldError(f"{path}.agents", "lists an agent more than once"))
            continue
        tenant = _tenant(body, path, errors)
        out[name] = Group(name, tuple(members), tenant, _string(body, "description", path, errors) or "")
    return out


def _parse_destinations(raw: Any, errors: list[FieldError]) -> dict[str, Destination]:
    out: dict[str, Destination] = {}
    for name, (path, body) in named_tables(raw, "destination", _DEST_KEYS, errors).items():
        relay = body.get("relay", DEFAULT_RELAY)
        if not is_valid_name(relay):
            errors.append(FieldError(f"{path}.relay", "must be a valid relay name"))
        restart = _restart_attribute(body, path, errors)
        tenant = _tenant(body, path, errors)
        desc = _string(body, "description", path, errors) or ""
        limit = parse_max_running(body, path, errors)
        out[name] = Destination(str(name), str(relay), restart, tenant, desc, limit)
    return out


def _tenant(body: dict[str, Any], path: str, errors: list[FieldError]) -> str:
    tenant = body.get("tenant", DEFAULT_TENANT)
    if not is_valid_name(tenant):
        errors.append(FieldError(f"{path}.tenant", "must be a valid tenant name"))
        return DEFAULT_TENANT
    return str(tenant)


def _parse_jobnet(name: str, body: Any, errors: list[FieldError]) -> Jobnet | None:
    found = named_table("jobnet", name, body, _JOBNET_KEYS, errors)
    if found is None:
        return None
    path, body = found
    raw_jobs = body.get("job")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        errors.append(FieldError(f"{path}.job", "a jobnet needs at least one job ([[jobnet.NAME.job]])"))
        return None
    before = len(errors)
    jobs = [job for i, raw in enumerate(raw_jobs) if (job := _parse_job(raw, f"{path}.job[{i}]", errors))]
    # Identity and dependency checks read the raw tables, so a job with a bad field still has its
    # duplicate ID and unknown dependencies reported in the same pass.
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_jobs):
        job_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(job_id, str) or not is_valid_name(job_id):
            continue
        if job_id in seen:
            errors.append(
                FieldError(f"{path}.job[{i}].id", f"duplicate job id {job_id!r} (first at job[{seen[job_id]}])")
            )
        else:
            seen[job_id] = i
    for i, raw in enumerate(raw_jobs):
        after = raw.get("after", []) if isinstance(raw, dict) else []
        for dep in [after] if isinstance(after, str) else after if isinstance(after, list) else []:
            if isinstance(dep, str) and dep not in seen:
                errors.append(FieldError(f"{path}.job[{i}].after", f"unknown job {dep!r}"))
            elif isinstance(dep, str) and seen.get(dep) == i:
                errors.append(FieldError(f"{path}.job[{i}].after", "a job cannot come after itself"))
    flow = parse_jobnet_flow(body, path, errors)
    if len(errors) == before:
        cycle = find_cycle({j.id: j.after for j in jobs})
        if cycle:
            errors.append(FieldError(path, "dependency cycle: " + " -> ".join(cycle)))
        else:
            check_units(name, tuple(jobs), flow, path, errors)
    desc = _string(body, "description", path, errors) or ""
    tenant = _tenant(body, path, errors)
    locks = parse_lock_uses(body.get("locks"), f"{path}.locks", errors)
    limit = parse_max_running(body, path, errors)
    return Jobnet(
        name=name, jobs=tuple(jobs), description=desc, tenant=tenant, locks=locks, max_running=limit, flow=flow
    )


def _parse_job(raw: Any, path: str, errors: list[FieldError]) -> Job | None:
    if not isinstance(raw, dict):
        errors.append(FieldError(path, "must be a table"))
        return None
    before = len(errors)
    kind = unit_kind(raw, path, errors)
    if kind is None:
        return None
    if kind != UnitKind.JOB:
        return _parse_unit(raw, kind, path, errors)
    raw = _check_keys(raw, _JOB_KEYS, path, errors)
    job_id = raw.get("id")
    if not isinstance(job_id, str) or not is_valid_name(job_id):
        errors.append(FieldError(f"{path}.id", "missing or invalid: use letters, digits, '_' and '-' (at most 64)"))
    argv, shell, call = _command(raw, path, errors)
    args = _args(raw, path, errors)
    env = _env(raw, path, errors)
    cwd = _string(raw, "cwd", path, errors)
    timeout_s = raw.get("timeout_s")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S
    ):
        errors.append(FieldError(f"{path}.timeout_s", f"must be a number of seconds in (0, {MAX_TIMEOUT_S}]"))
    after = _after(raw, path, errors)
    agent, dest, group, broadcast = _target(raw, path, errors)
    restart = raw.get("restart", True)
    if not isinstance(restart, bool):
        errors.append(FieldError(f"{path}.restart", "must be true or false"))
    desc = _string(raw, "description", path, errors) or ""
    locks = parse_lock_uses(raw.get("locks"), f"{path}.locks", errors)
    user = _user(raw, call is not None, path, errors)
    has_refs = any(True for _ in command_references(argv, env, cwd, args))
    unit = parse_job_unit(raw, path, has_refs, errors)
    if len(errors) != before:
        return None
    return Job(
        id=str(job_id),
        argv=argv,
        shell=shell,
        call=call,
        args=args,
        env=env,
        cwd=cwd,
        timeout_s=float(timeout_s) if timeout_s is not None else None,
        after=tuple(after),
        agent=agent,
        dest=dest,
        group=group,
        broadcast=broadcast,
        restart=restart,
        description=desc,
        user=user,
        locks=locks,
        unit=unit,
    )


def _after(raw: dict[str, Any], path: str, errors: list[FieldError]) -> list[str]:
    after = raw.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        errors.append(FieldError(f"{path}.after", "must be a list of job ids"))
        return []
    if len(set(after)) != len(after):
        errors.append(FieldError(f"{path}.after", "lists a job more than once"))
    return after


def _parse_unit(raw: dict[str, Any], kind: UnitKind, path: str, errors: list[FieldError]) -> Job | None:
    """A flow unit (``type`` other than ``job``): its kind's settings are ``schemas.units``'."""
    before = len(errors)
    job_id = raw.get("id")
    if not isinstance(job_id, str) or not is_valid_name(job_id):
        errors.append(FieldError(f"{path}.id", "missing or invalid: use letters, digits, '_' and '-' (at most 64)"))
    after = _after(raw, path, errors)
    unit = parse_flow_unit(raw, kind, path, errors)
    desc = _string(raw, "description", path, errors) or ""
    if kind != UnitKind.FILEWATCH:
        if len(errors) != before or unit is None:
            return None
        return Job(id=str(job_id), after=tuple(after), description=desc, unit=unit)
    agent, dest, group, broadcast = _target(raw, path, errors)
    if broadcast:
        errors.append(FieldError(f"{path}.broadcast", "a file watch runs on one agent"))
    if len(errors) != before or unit is None or not isinstance(unit.config, FileWatch):
        return None
    return Job(
        id=str(job_id),
        call=FILEWATCH_CALL,
        args=unit.config.args(),
        after=tuple(after),
        agent=agent,
        dest=dest,
        group=group,
        description=desc,
        unit=unit,
    )


def _target(raw: dict[str, Any], path: str, errors: list[FieldError]) -> tuple[Any, Any, Any, bool]:
    """The job's target (agent, dest, group) and broadcast flag, checked: exactly one target is set."""
    agent, dest, group = raw.get("agent"), raw.get("dest"), raw.get("group")
    broadcast = raw.get("broadcast", False)
    if sum(t is not None for t in (agent, dest, group)) != 1:
        errors.append(
            FieldError(
                path,
                "needs exactly one target: 'agent' (a standard agent), 'dest' (a destination) or 'group' (agents)",
            )
        )
    elif agent is not None and not is_valid_name(agent):
        errors.append(FieldError(f"{path}.agent", "must be a valid agent name"))
    elif dest is not None and not is_valid_name(dest):
        errors.append(FieldError(f"{path}.dest", "must be a valid destination name"))
    elif group is not None and not is_valid_name(group):
        errors.append(FieldError(f"{path}.group", "must be a valid group name"))
    if not isinstance(broadcast, bool):
        errors.append(FieldError(f"{path}.broadcast", "must be true or false"))
    elif broadcast and group is None:
        errors.append(FieldError(f"{path}.broadcast", "only a 'group' job can run on every member"))
    return agent, dest, group, broadcast is True


def _command(
    raw: dict[str, Any], path: str, errors: list[FieldError]
) -> tuple[tuple[str, ...] | None, str | None, str | None]:
    cmd, call, shell = raw.get("cmd"), raw.get("call"), raw.get("shell", False)
    if not isinstance(shell, bool):
        errors.append(FieldError(f"{path}.shell", "must be true or false"))
        shell = False
    if cmd is None and call is None:
        errors.append(
            FieldError(path, "missing command: set 'cmd' (argv list, or a string with shell = true) or 'call'")
        )
        return None, None, None
    if cmd is not None and call is not None:
        errors.append(FieldError(path, "set either 'cmd' or 'call', not both"))
        return None, None, None
    if call is not None:
        if shell:
            errors.append(FieldError(f"{path}.shell", "only a 'cmd' string runs in a shell"))
        if not isinstance(call, str) or _CALL_RE.fullmatch(call) is None:
            errors.append(FieldError(f"{path}.call", "must be 'package.module:function' (Python identifiers)"))
            return None, None, None
        return None, None, call
    if isinstance(cmd, str):
        if not shell:
            errors.append(
                FieldError(f"{path}.cmd", "a string command runs in a shell only with shell = true; use an argv list")
            )
            return None, None, None
        if not cmd.strip():
            errors.append(FieldError(f"{path}.cmd", "must not be empty"))
            return None, None, None
        return None, cmd, None
    if shell:
        errors.append(FieldError(f"{path}.shell", "shell = true needs 'cmd' to be one string"))
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd) or not cmd[0]:
        errors.append(FieldError(f"{path}.cmd", "must be a non-empty list of strings (argv)"))
        return None, None, None
    return tuple(cmd), None, None


def _args(raw: dict[str, Any], path: str, errors: list[FieldError]) -> dict[str, Any]:
    """A call job's keyword arguments: a table of JSON data, each number within what msgpack can carry."""
    args = raw.get("args", {})
    if not isinstance(args, dict):
        errors.append(FieldError(f"{path}.args", "must be a table"))
        return {}
    # Test the key, not the parsed target: a job whose call is invalid already has that error.
    if args and "call" not in raw:
        errors.append(FieldError(f"{path}.args", "only a 'call' job takes args"))
        return {}
    # Walk with a stack, not recursion, so a deeply nested document cannot exhaust the interpreter's stack;
    # children go on reversed so that errors come out in document order.
    stack: list[tuple[str, Any]] = [(f"{path}.args", args)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                errors.append(FieldError(where, "table keys must be strings"))
            else:
                stack.extend(reversed([(_child(where, k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{where}[{i}]", v) for i, v in enumerate(value)]))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not (math.isfinite(value) and ARGS_MIN_NUMBER <= value <= ARGS_MAX_NUMBER):
                errors.append(
                    FieldError(where, f"number must be finite and within [{ARGS_MIN_NUMBER}, {ARGS_MAX_NUMBER}]")
                )
        elif value is not None and not isinstance(value, str | bool):
            # TOML dates and times land here: neither JSON export nor the msgpack wire can carry them.
            errors.append(FieldError(where, "must be JSON data (string, number, boolean, array, table); use a string"))
    return args


def _user(raw: dict[str, Any], is_call: bool, path: str, errors: list[FieldError]) -> str | None:
    """The OS user a job runs as: a portable user name, and never for a call job (it runs inside the agent)."""
    user = raw.get("user")
    if user is None:
        return None
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        errors.append(FieldError(f"{path}.user", "must be a user name (letters, digits, '_', '-', '.'; at most 32)"))
        return None
    if is_call:
        errors.append(FieldError(f"{path}.user", "a call job runs inside the agent's process and cannot change user"))
        return None
    return user


def _env(raw: dict[str, Any], path: str, errors: list[FieldError]) -> dict[str, str]:
    """A job's environment: string names without '=' or NUL, string values without NUL (what exec accepts)."""
    env = raw.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        errors.append(FieldError(f"{path}.env", "must be a table of strings"))
        return {}
    bad = sorted(k for k, v in env.items() if not k or "=" in k or "\0" in k or "\0" in v)
    if bad:
        errors.append(
            FieldError(
                f"{path}.env",
                f"invalid variables {bad!r}: names must be non-empty without '=' or NUL, values without NUL",
            )
        )
        return {}
    return env


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """Find one dependency cycle, as the list of nodes that walks it (first node repeated at the end).

    ``graph`` maps each node to the nodes it comes after. Returns an empty list when there is none.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            deps = graph.get(node, ())
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if colour.get(nxt, black) == grey:
                    cyc = [*path[path.index(nxt) :], nxt]
                    cyc.reverse()  # read it in run order: a -> b means b comes after a
                    return cyc
                if colour.get(nxt) == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return []
