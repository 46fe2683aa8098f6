"""The control API's definition reads: a dry run of a jobnet, the export document, a jobnet's versions.

Registered with ``Api.add_verbs``; like every verb outside ``engine.tenancy.TENANT_VERBS`` they answer the
admin only. ``ekiden import`` needs no verb of its own: it validates an export document and applies it.
"""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from engine.dryrun import walk
from schemas.definitions import Definitions, Job
from schemas.definitions_schema import export_document
from schemas.errors import ErrorCode, WireError
from schemas.names import is_valid_name

if TYPE_CHECKING:
    from engine.core import Core
    from engine.store import Store


def flow_verbs(core: "Core", store: "Store") -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    """The verbs, by name, for ``Api.add_verbs``."""

    async def dry_run(args: dict[str, Any]) -> dict[str, Any]:
        name, params = args.get("jobnet"), args.get("params") or {}
        if not isinstance(name, str) or name not in core.jobnets:
            raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise WireError(ErrorCode.INVALID, "params must map names to strings")
        version, net, _ = core.jobnets[name]
        nets = {n: jobnet for n, (_, jobnet, _) in core.jobnets.items()}
        units = walk(nets, name, params, lambda job: _target(core, job))
        return {"jobnet": name, "version": version, "params": {**net.flow.params, **params}, "units": units}

    async def export(_args: dict[str, Any]) -> dict[str, Any]:
        return export_document(definitions_of(core))

    async def versions(args: dict[str, Any]) -> list[dict[str, Any]]:
        name = _name(args)
        rows = await store.query(
            "SELECT version, digest, applied_at, body FROM jobnet_versions WHERE name=? ORDER BY version", (name,)
        )
        if not rows:
            raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
        return [
            {
                "jobnet": name,
                "version": r["version"],
                "applied_at": r["applied_at"],
                "digest": r["digest"],
                "units": len(orjson.loads(r["body"])["job"]),
            }
            for r in rows
        ]

    async def version(args: dict[str, Any]) -> dict[str, Any]:
        name, number = _name(args), args.get("version")
        if isinstance(number, bool) or not isinstance(number, int):
            raise WireError(ErrorCode.INVALID, "version must be an integer")
        rows = await store.query("SELECT body FROM jobnet_versions WHERE name=? AND version=?", (name, number))
        if not rows:
            raise WireError(ErrorCode.NOT_FOUND, f"jobnet {name} has no version {number}")
        return {"jobnet": name, "version": number, "definition": orjson.loads(rows[0]["body"])}

    return {"dry_run": dry_run, "export": export, "versions": versions, "version": version}


def _name(args: dict[str, Any]) -> str:
    name = args.get("jobnet")
    if not is_valid_name(name):
        raise WireError(ErrorCode.INVALID, f"invalid jobnet name {name!r}")
    return str(name)


def _target(core: "Core", job: Job) -> str:
    if job.agent is not None:
        return f"agent:{job.agent}"
    if job.dest is not None:
        return f"dest:{job.dest} via relay {core.targets.relay_of(job.dest)}"
    group = core.targets.groups.get(str(job.group))
    members = ", ".join(group.agents) if group is not None else "unknown group"
    return f"group:{job.group} ({'every member' if job.broadcast else 'one of'} {members})"


def definitions_of(core: "Core") -> Definitions:
    """Every definition the manager holds, at its latest version: what ``ekiden export`` writes."""
    book = core.schedules
    return Definitions(
        jobnets={name: net for name, (_, net, _) in core.jobnets.items()},
        destinations=dict(core.targets.destinations),
        agents=dict(core.targets.agents),
        groups=dict(core.targets.groups),
        locks=dict(core.admission.locks),
        calendars={name: cal for name, (_, cal) in book.calendars.items()},
        schedules={name: book.schedule(name) for name in book.rows},
    )
