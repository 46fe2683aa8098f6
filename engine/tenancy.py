"""Tenants: what an operator of one tenant may ask of the manager, and which of the site's state is theirs.

An API request arrives on ``ekiden.<sid>.api.<tenant>.<verb>``. NATS permissions pin every operator
credential to its tenant's token (``ekiden security init``), so the token is trusted: it is the caller's
tenant, or ``subjects.ALL_TENANTS`` for the admin, who sees and changes everything. A tenant's operator sees
only its tenant's jobnets, runs, agents and destinations (another tenant's look like they do not exist), runs
only its own jobnets, and applies only definitions that are all its own and change nothing of another's.
Verbs not in ``TENANT_VERBS`` (maintenance, schedules, purge, audit, site) are the admin's.

A read-only operator is the same tenant with a credential that may publish only the ``READ_VERBS``: NATS
refuses the rest before the manager sees them.
"""

from collections.abc import Mapping
from typing import Any

from engine.runs import Run
from engine.targets import Targets
from schemas import subjects
from schemas.definitions import DEFAULT_TENANT, DefinitionError, Definitions, Jobnet, parse_definitions
from schemas.errors import ErrorCode, WireError

#: The caller's tenant token of an admin.
ADMIN = subjects.ALL_TENANTS
#: Verbs that only read; a read-only operator credential may publish these and no others.
READ_VERBS = ("ping", "status", "runs", "jobnets", "agents", "logs", "live", "destinations")
#: Commands on one run (``engine.control``) that an operator may give for its own tenant's runs.
RUN_VERBS = ("hold", "release", "skip", "kill", "rerun", "set_status")
#: Verbs an operator of one tenant may call (each scoped to the tenant); every other verb is the admin's.
TENANT_VERBS = frozenset({*READ_VERBS, *RUN_VERBS, "apply", "run", "agent"})


def is_admin(tenant: str | None) -> bool:
    """True for the admin (and for the manager's own commands, which carry no tenant)."""
    return tenant is None or tenant == ADMIN


def check_verb(verb: str, tenant: str) -> None:
    """Refuse a verb the caller's tenant may not call.

    Raises:
        WireError: ``forbidden``.
    """
    if not is_admin(tenant) and verb not in TENANT_VERBS:
        raise WireError(ErrorCode.FORBIDDEN, f"{verb!r} is the admin's; tenant {tenant!r} may not call it")


def visible(rows: list[dict[str, Any]], tenant: str, key: str = "tenant") -> list[dict[str, Any]]:
    """The rows of a listing that belong to ``tenant`` (all of them for the admin)."""
    if is_admin(tenant):
        return rows
    return [r for r in rows if (r.get(key) or DEFAULT_TENANT) == tenant]


def check_command(
    verb: str,
    args: Mapping[str, Any],
    tenant: str | None,
    jobnets: Mapping[str, tuple[int, Jobnet, str]],
    targets: Targets,
    runs: Mapping[str, Run],
) -> None:
    """Refuse a state-changing command that reaches beyond the caller's tenant (checked in the core's loop).

    Raises:
        WireError: ``not_found`` for another tenant's jobnet, run or agent (as if it did not exist),
            ``forbidden`` for definitions that are not all the caller's.
    """
    if is_admin(tenant):
        return
    run_id = args.get("run")
    run = runs.get(run_id) if isinstance(run_id, str) else None
    if run is not None and run.tenant != tenant:
        raise WireError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
    if verb == "run":
        name = args.get("jobnet")
        found = jobnets.get(name) if isinstance(name, str) else None
        if found is not None and found[1].tenant != tenant:
            raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
    elif verb == "agent":
        name = args.get("name")
        if isinstance(name, str) and agent_tenant(name, targets) != tenant:
            raise WireError(ErrorCode.NOT_FOUND, f"no agent named {name!r} of tenant {tenant!r}")
    elif verb == "apply":
        _check_definitions(args.get("definitions"), str(tenant), jobnets, targets)


def agent_tenant(name: str, targets: Targets) -> str:
    """The tenant a standard agent belongs to (its definition's, else the default tenant)."""
    found = targets.agents.get(name)
    return found.tenant if found is not None else DEFAULT_TENANT


def _check_definitions(raw: Any, tenant: str, jobnets: Mapping[str, tuple[int, Jobnet, str]], targets: Targets) -> None:
    try:
        defs = parse_definitions(raw, complete=False)
    except DefinitionError:
        return  # the core refuses it with every error named
    problems = _foreign(defs, tenant, jobnets, targets)
    if problems:
        raise WireError(ErrorCode.FORBIDDEN, f"tenant {tenant!r} may not apply:\n" + "\n".join(problems))


def _foreign(
    defs: Definitions, tenant: str, jobnets: Mapping[str, tuple[int, Jobnet, str]], targets: Targets
) -> list[str]:
    """What in ``defs`` is another tenant's, or would change another tenant's."""
    problems: list[str] = []
    if defs.calendars or defs.schedules:
        problems.append("calendars and schedules: only the admin applies them")
    owned: list[tuple[str, str, str, str | None]] = []
    for name, net in defs.jobnets.items():
        old = jobnets.get(name)
        owned.append(("jobnet", name, net.tenant, old[1].tenant if old is not None else None))
    for kind, new, old_map in (
        ("destination", defs.destinations, targets.destinations),
        ("agent", defs.agents, targets.agents),
        ("group", defs.groups, targets.groups),
    ):
        for name, item in new.items():
            old_item = old_map.get(name)
            owned.append((kind, name, item.tenant, old_item.tenant if old_item is not None else None))
    for kind, name, new_tenant, old_tenant in owned:
        if new_tenant != tenant:
            problems.append(f"{kind}.{name}: belongs to tenant {new_tenant!r}, not {tenant!r}")
        elif old_tenant is not None and old_tenant != tenant:
            problems.append(f"{kind}.{name}: the name is taken by another tenant")
    return problems
