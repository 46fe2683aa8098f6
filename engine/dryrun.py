"""A test run: walk a jobnet's flow and say what each unit would do and where, without running anything.

Units are listed in an order that respects ``after`` (definition order among the units that are free), a
nested jobnet's or loop body's units indented under it. ``${NAME}`` is replaced where the value is known
before the run (parameters with their defaults and what ``-p`` gives, the run's built-ins); a variable a
unit sets while the run goes is left as written.
"""

from collections.abc import Callable, Mapping
from typing import Any

from schemas.definitions import Job, Jobnet
from schemas.units import Branch, End, FileWatch, Info, Loop, Nested, UnitKind, Wait
from schemas.variables import JOBNET, RUN_ID, is_var_name, substitute

#: Deepest nesting a dry run follows (validation already refuses cycles).
MAX_DEPTH = 16


class _Known(dict[str, str]):
    """Values known before the run; any other reference is kept as written."""

    def __missing__(self, key: str) -> str:
        return "${" + key + "}"


def run_order(net: Jobnet) -> list[Job]:
    """The units in an order that respects ``after``: each free unit in definition order."""
    done: set[str] = set()
    order: list[Job] = []
    left = list(net.jobs)
    while left:
        free = [j for j in left if all(d in done for d in j.after)]
        if not free:  # a cycle: validation refuses it, but never loop for ever
            free = left[:1]
        for job in free:
            order.append(job)
            done.add(job.id)
        left = [j for j in left if j.id not in done]
    return order


def walk(
    jobnets: Mapping[str, Jobnet], name: str, params: Mapping[str, str], target_of: Callable[[Job], str]
) -> list[dict[str, Any]]:
    """What a run of ``name`` with ``params`` would do: one entry per unit, nested units included.

    Args:
        jobnets: the applied jobnets (latest versions).
        name: the jobnet to walk.
        params: the parameters given (the jobnet's defaults fill the rest).
        target_of: where a job would run, as text (``agent:NAME``, ``dest:NAME via relay R``, ...).
    """
    out: list[dict[str, Any]] = []
    _walk(jobnets, name, dict(params), target_of, "", 0, out)
    return out


def _walk(
    jobnets: Mapping[str, Jobnet],
    name: str,
    params: dict[str, str],
    target_of: Callable[[Job], str],
    prefix: str,
    depth: int,
    out: list[dict[str, Any]],
) -> None:
    net = jobnets[name]
    known = _Known({RUN_ID: "<run id>", JOBNET: name})
    known.update({k: v for k, v in {**net.flow.params, **params}.items() if is_var_name(k)})
    for job in run_order(net):
        entry: dict[str, Any] = {
            "unit": prefix + job.id,
            "type": str(job.unit.kind),
            "depth": depth,
            "after": list(job.after),
            "target": target_of(job) if job.unit.dispatched else "manager",
            "would": _would(job, known),
        }
        flags = [
            f
            for f, on in (("recovery", job.unit.recovery), ("continue_on_failure", job.unit.continue_on_failure))
            if on
        ]
        if job.unit.retry is not None:
            flags.append(f"retry x{job.unit.retry.max}")
        if flags:
            entry["flags"] = flags
        out.append(entry)
        config = job.unit.config
        if isinstance(config, Nested | Loop) and config.jobnet in jobnets and depth < MAX_DEPTH:
            inner = {k: substitute(v, known) for k, v in config.params.items()}
            if isinstance(config, Loop):
                inner[config.counter] = "1"
            _walk(jobnets, config.jobnet, inner, target_of, f"{prefix}{job.id}/", depth + 1, out)


def _would(job: Job, known: _Known) -> str:
    config = job.unit.config
    if job.unit.kind == UnitKind.JOB:
        if job.argv is not None:
            return "run " + " ".join(_quote(substitute(a, known)) for a in job.argv)
        if job.shell is not None:
            return f"run in a shell: {job.shell}"
        return f"call {job.call}"
    if isinstance(config, FileWatch):
        stable = f", stable {config.stable_s:g}s" if config.stable_s else ""
        return f"wait for file {substitute(config.path, known)}{stable} (at most {config.timeout_s:g}s)"
    if isinstance(config, Branch):
        cases = [f"if {c.when.describe()} -> {', '.join(c.to)}" for c in config.cases]
        if config.otherwise:
            cases.append(f"else -> {', '.join(config.otherwise)}")
        return "branch: " + "; ".join(cases)
    if isinstance(config, Loop):
        times = (
            f"{config.count} times"
            if config.count is not None
            else f"until {config.until.describe() if config.until else '?'} (at most {config.max})"
        )
        return f"run jobnet {config.jobnet} {times}, counter ${{{config.counter}}}"
    if isinstance(config, Nested):
        given = ", ".join(f"{k}={substitute(v, known)}" for k, v in config.params.items())
        return f"run jobnet {config.jobnet}" + (f" with {given}" if given else "")
    if isinstance(config, Wait):
        return f"wait {config.for_s:g}s" if config.for_s is not None else f"wait until {config.until} {config.timezone}"
    if isinstance(config, Info):
        facts = ", ".join(f"{k}={v}" for k, v in config.get.items())
        return f"set {facts}" + (f" (calendar {config.calendar})" if config.calendar else "")
    if isinstance(config, End):
        return f"end the run {config.status}" + (f": {config.message}" if config.message else "")
    return str(job.unit.kind)


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:,@%+${}" for c in arg) else repr(arg)
