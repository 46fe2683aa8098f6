"""Where jobs run: destinations, standard agents and agent groups, their routing state and restart rules.

Pure bookkeeping, no I/O: the core asks it where a job goes, which member of a group takes the next job,
and what happens to a job whose executor was lost (JobCenter's restart table).
"""

from dataclasses import dataclass
from enum import StrEnum

from schemas.definitions import (
    DEFAULT_RELAY,
    DEFAULT_TENANT,
    Agent,
    Definitions,
    Destination,
    Group,
    Job,
    RestartAttribute,
)


class AgentState(StrEnum):
    """Whether the manager routes new jobs to a standard agent."""

    EFFECTIVE = "effective"  #: takes jobs
    HELD = "held"  #: takes no new jobs until released (running ones go on)
    BLOCKED = "blocked"  #: cleaned up or blocked by an operator: no jobs, its running attempts are lost


class LostOutcome(StrEnum):
    """What happens to a job whose executor was lost."""

    RESTART = "restart"  #: run again, as a new attempt
    FAIL = "fail"  #: marked lost (failed); not run again
    HOLD = "hold"  #: held for the operator: release re-runs it, skip or kill ends it


@dataclass(slots=True)
class AgentStatus:
    """What the manager knows of one standard agent at run time."""

    name: str
    state: AgentState = AgentState.EFFECTIVE
    slots: int = 0
    running: int = 0
    #: wall-clock time of the last dispatch to it (least recently used wins a tie)
    used_at: float = 0.0

    @property
    def usage(self) -> float:
        """Share of its slots in use (an agent that never said how many it has counts as idle)."""
        return self.running / self.slots if self.slots else 0.0


class Targets:
    """The targets known to one manager: definitions plus the agents' routing state."""

    def __init__(self) -> None:
        self.destinations: dict[str, Destination] = {}
        self.agents: dict[str, Agent] = {}
        self.groups: dict[str, Group] = {}
        self.status: dict[str, AgentStatus] = {}

    def define(self, defs: Definitions) -> None:
        """Take the destinations, agents and groups of applied definitions."""
        self.destinations.update(defs.destinations)
        self.agents.update(defs.agents)
        self.groups.update(defs.groups)

    def relay_of(self, dest: str) -> str:
        """The relay name that carries a destination's jobs."""
        found = self.destinations.get(dest)
        return found.relay if found is not None else DEFAULT_RELAY

    def agent(self, name: str) -> AgentStatus:
        """The run-time status of an agent (created on first mention)."""
        status = self.status.get(name)
        if status is None:
            status = self.status[name] = AgentStatus(name)
        return status

    def refusal(self, agent: str) -> str:
        """Why no new job may go to ``agent`` now ('' if it may)."""
        status = self.status.get(agent)
        if status is None or status.state == AgentState.EFFECTIVE:
            return ""
        return f"agent {agent} is {status.state}"

    def pick(self, group: str) -> str | None:
        """The member of ``group`` to take the next job: by priority, then lowest usage, then least recently used.

        Returns None when the group is unknown or no member takes jobs.
        """
        found = self.groups.get(group)
        if found is None:
            return None
        candidates = [(i, name) for i, name in enumerate(found.agents) if not self.refusal(name)]
        if not candidates:
            return None
        _, best = min(candidates, key=lambda c: (c[0], self.agent(c[1]).usage, self.agent(c[1]).used_at))
        return best

    def members(self, group: str) -> list[str]:
        """Every member of ``group`` that takes jobs, in priority order."""
        found = self.groups.get(group)
        return [name for name in found.agents if not self.refusal(name)] if found is not None else []

    def lost_outcome(self, job: Job, target: str) -> LostOutcome:
        """The restart table: the target's restart attribute, then the job's own restart setting."""
        kind, _, name = target.partition(":")
        holder = self.destinations.get(name) if kind == "dest" else self.agents.get(name)
        attribute = holder.restart if holder is not None else RestartAttribute.RESTART
        if attribute == RestartAttribute.STOP:
            return LostOutcome.HOLD
        if attribute == RestartAttribute.PURGE or not job.restart:
            return LostOutcome.FAIL
        return LostOutcome.RESTART

    def tenant_errors(self, defs: Definitions) -> list[str]:
        """Every job of ``defs`` that targets a destination, agent or group of another tenant, or an unknown group."""
        dests = {**self.destinations, **defs.destinations}
        agents = {**self.agents, **defs.agents}
        groups = {**self.groups, **defs.groups}
        errors: list[str] = []
        for net in defs.jobnets.values():
            for i, job in enumerate(net.jobs):
                path = f"jobnet.{net.name}.job[{i}]"
                if job.agent is None and job.dest is None and job.group is None:
                    continue  # a flow unit the manager runs itself has no target
                if job.group is not None and job.group not in groups:
                    errors.append(f"{path}.group: no agent group named {job.group!r} is defined")
                    continue
                kind, name, tenant = _target_tenant(job, dests, agents, groups)
                if tenant != net.tenant:
                    errors.append(f"{path}.{kind}: {name!r} belongs to tenant {tenant!r}, not {net.tenant!r}")
        return errors


def _target_tenant(
    job: Job, dests: dict[str, Destination], agents: dict[str, Agent], groups: dict[str, Group]
) -> tuple[str, str, str]:
    if job.dest is not None:
        d = dests.get(job.dest)
        return "dest", job.dest, d.tenant if d is not None else DEFAULT_TENANT
    if job.agent is not None:
        a = agents.get(job.agent)
        return "agent", job.agent, a.tenant if a is not None else DEFAULT_TENANT
    group = str(job.group)
    return "group", group, groups[group].tenant
