"""The rules across the units of a jobnet (branch targets, conditions, variable references, end units) and
across jobnets (nested jobnets and loop bodies exist, take what is passed, form no cycle)."""

from collections.abc import Collection, Iterator, Mapping
from pathlib import PurePosixPath
from typing import Any, Protocol

from schemas.fields import FieldError, child
from schemas.unit_parse import unit_references
from schemas.units import Branch, End, Info, JobnetFlow, Loop, Nested, Unit, UnitKind
from schemas.variables import BUILTINS, ENV_PREFIX, data_references, is_var_name, references

#: Programs whose ``-c`` / ``-e`` argument is code: a variable must not be substituted into it.
INTERPRETERS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "ash", "fish", "python", "perl", "ruby", "node", "php", "pwsh", "tclsh", "lua"}
)


class UnitLike(Protocol):
    """What the checks read of a unit (``schemas.definitions.Job``)."""

    @property
    def id(self) -> str: ...

    @property
    def after(self) -> tuple[str, ...]: ...

    @property
    def unit(self) -> Unit: ...

    @property
    def argv(self) -> tuple[str, ...] | None: ...

    @property
    def env(self) -> dict[str, str]: ...

    @property
    def cwd(self) -> str | None: ...

    @property
    def args(self) -> dict[str, Any]: ...


class JobnetLike(Protocol):
    """What the checks read of a jobnet (``schemas.definitions.Jobnet``)."""

    @property
    def name(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def jobs(self) -> tuple[Any, ...]: ...

    @property
    def flow(self) -> JobnetFlow: ...


def command_references(
    argv: tuple[str, ...] | None, env: Mapping[str, str], cwd: str | None, args: Any
) -> Iterator[tuple[str, str]]:
    """``(key path, name)`` of each variable a job's argv, env values, cwd and call args refer to."""
    for i, arg in enumerate(argv or ()):
        yield from ((f"cmd[{i}]", name) for name in references(arg))
    for key, value in env.items():
        yield from ((child("env", key), name) for name in references(value))
    if cwd is not None:
        yield from (("cwd", name) for name in references(cwd))
    yield from ((f"args{where}", name) for where, name in data_references(args))


def job_references(job: UnitLike) -> Iterator[tuple[str, str]]:
    """``(key path, name)`` of each variable a unit refers to: argv, env, cwd, args, and its own settings."""
    if job.unit.kind == UnitKind.JOB:
        yield from command_references(job.argv, job.env, job.cwd, job.args)
    if job.unit.config is not None:
        yield from unit_references(job.unit.config)


def ancestors(jobs: Mapping[str, UnitLike]) -> dict[str, set[str]]:
    """For each unit, every unit it comes after, transitively (the graph must have no cycle)."""
    found: dict[str, set[str]] = {}
    for root in jobs:
        if root in found:
            continue
        stack = [root]
        while stack:
            node = stack[-1]
            pending = [d for d in jobs[node].after if d not in found and d in jobs]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if node not in found:
                found[node] = {a for d in jobs[node].after if d in jobs for a in (d, *found[d])}
    return found


def check_units(net: str, jobs: tuple[UnitLike, ...], flow: JobnetFlow, path: str, errors: list[FieldError]) -> None:
    """Rules across the units of one jobnet (run once its ids and dependencies are known to be sound).

    Branch targets exist and come after their branch, every unit after a branch is one of its targets,
    conditions name units that come before, nothing comes after an end unit, no unit runs its own jobnet,
    and every variable reference names a parameter, a built-in or a variable set by a unit that comes before.
    """
    if all(j.unit.kind == UnitKind.JOB and not j.unit.has_refs for j in jobs):
        return  # plain jobs only: nothing to check (and no ancestor sets to build for a big jobnet)
    by_id = {j.id: j for j in jobs}
    index = {j.id: i for i, j in enumerate(jobs)}
    before = ancestors(by_id)
    dependants: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for dep in j.after:
            dependants[dep].append(j.id)
    for job in jobs:
        where = f"{path}.job[{index[job.id]}]"
        config = job.unit.config
        if isinstance(config, Branch):
            _check_branch(job, config, by_id, before, dependants, where, errors)
        if isinstance(config, Nested | Loop) and config.jobnet == net:
            errors.append(FieldError(f"{where}.jobnet", f"a jobnet cannot include itself ({net})"))
        if isinstance(config, End) and dependants[job.id]:
            later = ", ".join(sorted(dependants[job.id]))
            errors.append(FieldError(where, f"nothing can come after an end unit (found: {later})"))
        known = set(flow.params) | BUILTINS
        known.update(v for a in before[job.id] for v in by_id[a].unit.outputs())
        code = _code_index(job.argv)
        for key, name in job_references(job):
            if code is not None and key == f"cmd[{code}]":
                argv = job.argv or ()
                program = f"{argv[0]} {argv[code - 1]}"
                errors.append(
                    FieldError(
                        f"{where}.{key}",
                        f"${{{name}}} inside the code of {program} would make a value code:"
                        f' pass it as an argument ("$1", sys.argv[1]) or read ${ENV_PREFIX}{name}',
                    )
                )
            elif not is_var_name(name):
                errors.append(FieldError(f"{where}.{key}", f"${{{name}}} is not a variable reference"))
            elif name not in known and not (key == "until.var" and name in job.unit.outputs()):
                errors.append(
                    FieldError(
                        f"{where}.{key}",
                        f"unknown variable ${{{name}}}: not a parameter of jobnet {net}, a built-in, or set"
                        " (declared in 'sets') by a unit that comes before",
                    )
                )


def _code_index(argv: tuple[str, ...] | None) -> int | None:
    """The index of the argv element that an interpreter runs as code (``sh -c CODE``), if any."""
    if not argv or PurePosixPath(argv[0]).name.rstrip("0123456789.") not in INTERPRETERS:
        return None
    flags = [i for i, a in enumerate(argv[1:], 1) if a in ("--command", "--eval") or _short_code_flag(a)]
    return flags[0] + 1 if flags and flags[0] + 1 < len(argv) else None


def _short_code_flag(arg: str) -> bool:
    """``-c``, ``-e`` or a cluster ending in one (``-ec``, ``-le``)."""
    return len(arg) >= 2 and arg[0] == "-" and arg[1:].isalpha() and arg[-1] in "ce"


def _check_branch(
    job: UnitLike,
    config: Branch,
    by_id: Mapping[str, UnitLike],
    before: Mapping[str, set[str]],
    dependants: Mapping[str, list[str]],
    where: str,
    errors: list[FieldError],
) -> None:
    leads = [(f"cases[{i}].to", t) for i, c in enumerate(config.cases) for t in c.to]
    leads += [("else", t) for t in config.otherwise]
    for key, target in leads:
        if target not in by_id:
            errors.append(FieldError(f"{where}.{key}", f"unknown unit {target!r}"))
        elif job.id not in by_id[target].after:
            errors.append(FieldError(f"{where}.{key}", f"unit {target!r} must come after branch {job.id!r}"))
    for dep in dependants.get(job.id, ()):
        if dep not in config.targets():
            errors.append(FieldError(where, f"unit {dep!r} comes after branch {job.id!r} but no case leads to it"))
    for i, case in enumerate(config.cases):
        named = case.when.job
        if named is not None and named not in before[job.id]:
            errors.append(
                FieldError(f"{where}.cases[{i}].job", f"unit {named!r} does not come before branch {job.id!r}")
            )


def cross_errors(
    defining: Mapping[str, JobnetLike], known: Mapping[str, JobnetLike], calendars: Collection[str]
) -> list[FieldError]:
    """Rules across jobnets, for the jobnets being defined against every jobnet known (``known`` includes them).

    A nested jobnet or loop body exists, belongs to the same tenant, takes the parameters passed to it and can
    set what the unit declares it takes out; nesting forms no cycle; an info unit's calendar exists.
    """
    errors: list[FieldError] = []
    for name, net in sorted(defining.items()):
        for i, job in enumerate(net.jobs):
            where = f"jobnet.{name}.job[{i}]"
            config = job.unit.config
            if isinstance(config, Info) and config.calendar is not None and config.calendar not in calendars:
                errors.append(FieldError(f"{where}.calendar", f"no calendar named {config.calendar!r} is defined"))
            if not isinstance(config, Nested | Loop) or config.jobnet == name:
                continue
            inner = known.get(config.jobnet)
            if inner is None:
                errors.append(FieldError(f"{where}.jobnet", f"no jobnet named {config.jobnet!r} is defined"))
                continue
            if inner.tenant != net.tenant:
                errors.append(
                    FieldError(
                        f"{where}.jobnet", f"{config.jobnet!r} belongs to tenant {inner.tenant!r}, not {net.tenant!r}"
                    )
                )
            for param in sorted(set(config.params) - set(inner.flow.params)):
                errors.append(
                    FieldError(
                        f"{where}.{child('params', param)}", f"jobnet {config.jobnet!r} declares no parameter {param!r}"
                    )
                )
            can_set = {v for j in inner.jobs for v in j.unit.outputs()}
            for var in sorted(set(job.unit.sets) - can_set):
                errors.append(FieldError(f"{where}.sets", f"no unit of jobnet {config.jobnet!r} sets {var!r}"))
    cycle = nesting_cycle(known)
    if any(n in defining for n in cycle):
        # Name the cycle from a jobnet being defined, at the unit that runs the next one.
        start = next(i for i, n in enumerate(cycle[:-1]) if n in defining)
        cycle = [*cycle[start:-1], *cycle[:start], cycle[start]]
        first, second = cycle[0], cycle[1]
        at = next(i for i, j in enumerate(known[first].jobs) if _runs(j, second))
        errors.append(
            FieldError(f"jobnet.{first}.job[{at}].jobnet", "nested jobnets form a cycle: " + " -> ".join(cycle))
        )
    return errors


def _runs(job: Any, jobnet: str) -> bool:
    config = job.unit.config
    return isinstance(config, Nested | Loop) and config.jobnet == jobnet


def nested_names(net: JobnetLike) -> list[str]:
    """The jobnets a jobnet runs as units (nested jobnets and loop bodies), in unit order."""
    return [j.unit.config.jobnet for j in net.jobs if isinstance(j.unit.config, Nested | Loop)]


def nesting_cycle(nets: Mapping[str, JobnetLike]) -> list[str]:
    """One cycle of jobnets running each other (``a -> b -> a``), or [] (a jobnet running itself is not looked for)."""
    graph = {name: [n for n in nested_names(net) if n != name and n in nets] for name, net in nets.items()}
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(graph[root])]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return []
