"""The jobnet language beyond plain jobs: flow units, end judgment, retries, delay watches, parameters.

An entry of ``[[jobnet.NAME.job]]`` is a *unit*. Its ``type`` says which kind (``job`` when absent):

- ``job``: a command, shell line or call run by an agent or a destination's worker;
- ``branch``: takes the first of its ``cases`` that holds (on a job's exit code or end status, or on a
  variable's value), else its ``else``; the units it does not take end skipped without failing the run;
- ``loop``: runs a jobnet (its body) again and again: ``count`` times, or until a condition holds, never
  more than its limit;
- ``jobnet``: runs another jobnet as one unit (a child run), passes parameters in, takes variables out;
- ``wait``: waits for a duration, or until a clock time;
- ``info``: sets variables from facts (is today an operating day of a calendar, the run's start, ...);
- ``end``: ends the run with the end status it names;
- ``filewatch``: waits on an agent until a file appears (or is stable), with a timeout.

Every unit may come ``after`` others, be a ``recovery`` unit (it runs only when a unit it comes after ended
abnormally), ``continue_on_failure`` (the units after it run even if it failed) and carry a ``delay`` watch.
A job also takes a ``judge`` (exit code thresholds), a ``retry`` policy and the ``sets`` it declares.

This module is the model, pure data that answers questions about units (does a condition hold, how long is
the next retry delay); ``schemas.unit_parse`` reads units from a definition, ``schemas.unit_checks`` checks
the rules across units and jobnets, and the manager's ``engine.flow`` runs them.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from schemas.calendars import CalendarSet
from schemas.schedules import DEFAULT_TIMEZONE, parse_clock

#: Longest duration accepted anywhere in a unit, in seconds (30 days).
MAX_SECONDS = 30 * 24 * 3600
#: Most retries, loop iterations and branch cases a unit may have.
MAX_RETRIES = 100
MAX_ITERATIONS = 10_000
MAX_CASES = 100
#: The call target a ``filewatch`` unit runs on its agent (see ``agents.filewatch``).
FILEWATCH_CALL = "agents.filewatch:watch"
#: The variables a file watch sets: the file's path and its size in bytes.
FILEWATCH_PATH_VAR, FILEWATCH_SIZE_VAR = "FILEWATCH_PATH", "FILEWATCH_SIZE"
#: Seconds between looks at a watched file, by default.
DEFAULT_POLL_S = 1.0
#: Loop counter variable when a loop names none.
DEFAULT_COUNTER = "LOOP_COUNT"


class UnitKind(StrEnum):
    """What a unit of a jobnet is."""

    JOB = "job"
    BRANCH = "branch"
    LOOP = "loop"
    JOBNET = "jobnet"
    WAIT = "wait"
    INFO = "info"
    END = "end"
    FILEWATCH = "filewatch"


class Instances(StrEnum):
    """What happens when a jobnet is started while a run of it is still running."""

    ALLOW = "allow"  #: both run
    SKIP = "skip"  #: the new run is refused (a schedule's fire is skipped)
    QUEUE = "queue"  #: the new run waits until the earlier ones ended


#: The end states a branch condition may test (a job's state once it ended).
END_STATES = ("succeeded", "warning", "failed", "timed_out", "killed", "skipped", "lost")
#: What an ``info`` unit can read into a variable.
INFO_ITEMS = (
    "operating_day",
    "next_operating_day",
    "previous_operating_day",
    "date",
    "time",
    "weekday",
    "run_id",
    "jobnet",
    "run_started_at",
    "run_date",
)
CALENDAR_ITEMS = frozenset({"operating_day", "next_operating_day", "previous_operating_day"})
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Days an info unit looks ahead or back for the next or previous operating day.
_OPERATING_DAY_SEARCH = 366

#: Keys every kind of unit takes.
COMMON_KEYS = frozenset({"id", "type", "description", "after", "recovery", "continue_on_failure", "delay"})
#: Keys a plain job takes on top of its command, target and the common keys.
JOB_FLOW_KEYS = frozenset({"type", "judge", "retry", "sets", "recovery", "continue_on_failure", "delay"})
#: Keys of each kind of flow unit.
UNIT_KEYS: dict[UnitKind, frozenset[str]] = {
    UnitKind.BRANCH: COMMON_KEYS | {"cases", "else"},
    UnitKind.LOOP: COMMON_KEYS | {"jobnet", "count", "until", "max", "counter", "params", "sets"},
    UnitKind.JOBNET: COMMON_KEYS | {"jobnet", "params", "sets"},
    UnitKind.WAIT: COMMON_KEYS | {"for_s", "until", "timezone"},
    UnitKind.INFO: COMMON_KEYS | {"calendar", "timezone", "get"},
    UnitKind.END: frozenset({"id", "type", "description", "after", "recovery", "status", "message"}),
    UnitKind.FILEWATCH: COMMON_KEYS | {"path", "stable_s", "timeout_s", "poll_s", "agent", "dest", "group", "retry"},
}
#: Keys of a jobnet that this module reads.
JOBNET_FLOW_KEYS = frozenset({"params", "timeout_s", "delay", "instances"})
JUDGE_KEYS = frozenset({"warning_from", "abnormal_from"})
RETRY_KEYS = frozenset({"max", "delay_s", "backoff", "max_delay_s"})
DELAY_KEYS = frozenset({"after_s", "at", "timezone", "kill"})
CONDITION_KEYS = frozenset({"job", "exit", "status", "var", "equals", "in", "range"})
CASE_KEYS = CONDITION_KEYS | {"to"}
#: End statuses an ``end`` unit may give its run.
END_STATUSES = ("succeeded", "failed")


# -- model ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Judge:
    """Exit code thresholds (JP1's end judgment): below ``warning_from`` normal, from it warning, from
    ``abnormal_from`` abnormal; a negative code is abnormal. Without ``warning_from`` there is no warning."""

    warning_from: int | None = None
    abnormal_from: int = 1

    def outcome(self, exit_code: int) -> str:
        """``normal``, ``warning`` or ``abnormal`` for an exit code."""
        if exit_code < 0 or exit_code >= self.abnormal_from:
            return "abnormal"
        if self.warning_from is not None and exit_code >= self.warning_from:
            return "warning"
        return "normal"

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"abnormal_from": self.abnormal_from}
        if self.warning_from is not None:
            out["warning_from"] = self.warning_from
        return out


#: The judgment of a job that names none: 0 normal, anything else abnormal.
DEFAULT_JUDGE = Judge()


@dataclass(frozen=True, slots=True)
class Retry:
    """Run a failed job again: at most ``max`` more times, after a delay that grows by ``backoff``."""

    max: int
    delay_s: float = 0.0
    backoff: float = 1.0
    max_delay_s: float | None = None

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        delay = self.delay_s * self.backoff ** (retry - 1)
        return min(delay, self.max_delay_s) if self.max_delay_s is not None else delay

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"max": self.max, "delay_s": self.delay_s, "backoff": self.backoff}
        if self.max_delay_s is not None:
            out["max_delay_s"] = self.max_delay_s
        return out


def next_clock(start: float, clock: str, timezone: str) -> float:
    """The first moment at or after ``start`` (epoch seconds) when the clock in ``timezone`` reads ``clock``."""
    zone = ZoneInfo(timezone)
    at = parse_clock(clock)
    assert at is not None  # checked when parsed
    local = datetime.fromtimestamp(start, UTC).astimezone(zone)
    for days in range(3):  # a time that a DST change skips today exists tomorrow
        day = local.date() + timedelta(days=days)
        moment = datetime.combine(day, at, zone).timestamp()
        if moment >= start:
            return moment
    return start


@dataclass(frozen=True, slots=True)
class DelayWatch:
    """End-delay monitoring: a unit (or run) not ended ``after_s`` after its start, or by clock time ``at``,
    is delayed: an event is recorded; with ``kill`` it is also killed."""

    after_s: float | None = None
    at: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    kill: bool = False

    def due(self, start: float) -> float:
        """When a unit or run that started at ``start`` becomes delayed (epoch seconds)."""
        if self.after_s is not None:
            return start + self.after_s
        assert self.at is not None
        return next_clock(start, self.at, self.timezone)

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"after_s": self.after_s} if self.after_s is not None else {"at": self.at}
        if self.timezone != DEFAULT_TIMEZONE:
            out["timezone"] = self.timezone
        if self.kill:
            out["kill"] = True
        return out


@dataclass(frozen=True, slots=True)
class Condition:
    """A test on a job's end (``job`` with ``exit`` or ``status``) or on a variable (``var`` with ``equals``,
    ``in`` or ``range``)."""

    job: str | None = None
    exit: tuple[int, int] | None = None
    status: tuple[str, ...] | None = None
    var: str | None = None
    equals: str | None = None
    one_of: tuple[str, ...] | None = None
    range: tuple[float, float] | None = None

    def holds(self, state: str | None, exit_code: int | None, values: Mapping[str, str]) -> bool:
        """Whether the condition holds, given the named job's end state and exit code, and the variables."""
        if self.job is not None:
            if self.exit is not None:
                return exit_code is not None and self.exit[0] <= exit_code <= self.exit[1]
            return state is not None and self.status is not None and state in self.status
        value = values.get(self.var or "")
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        if self.one_of is not None:
            return value in self.one_of
        assert self.range is not None
        try:
            number = float(value)
        except ValueError:
            return False
        return self.range[0] <= number <= self.range[1]

    def describe(self) -> str:
        """The condition in words (for status and dry runs)."""
        if self.job is not None:
            if self.exit is not None:
                lo, hi = self.exit
                return f"{self.job} exit {lo}" if lo == hi else f"{self.job} exit {lo}..{hi}"
            return f"{self.job} ended {' or '.join(self.status or ())}"
        if self.equals is not None:
            return f"${{{self.var}}} == {self.equals!r}"
        if self.one_of is not None:
            return f"${{{self.var}}} in {list(self.one_of)!r}"
        assert self.range is not None
        return f"${{{self.var}}} in {self.range[0]:g}..{self.range[1]:g}"

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {}
        if self.job is not None:
            out["job"] = self.job
            if self.exit is not None:
                out["exit"] = self.exit[0] if self.exit[0] == self.exit[1] else list(self.exit)
            else:
                out["status"] = list(self.status or ())
            return out
        out["var"] = self.var
        if self.equals is not None:
            out["equals"] = self.equals
        elif self.one_of is not None:
            out["in"] = list(self.one_of)
        else:
            assert self.range is not None
            out["range"] = list(self.range)
        return out


@dataclass(frozen=True, slots=True)
class Case:
    """One case of a branch: where it leads when its condition holds."""

    when: Condition
    to: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Branch:
    """Take the first case that holds, else ``otherwise``; what is not taken ends skipped."""

    cases: tuple[Case, ...]
    otherwise: tuple[str, ...] = ()

    def targets(self) -> set[str]:
        """Every unit a case or the else leads to."""
        return {t for c in self.cases for t in c.to} | set(self.otherwise)

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"cases": [{**c.when.to_dict(), "to": list(c.to)} for c in self.cases]}
        if self.otherwise:
            out["else"] = list(self.otherwise)
        return out


@dataclass(frozen=True, slots=True)
class Nested:
    """Run another jobnet as one unit, with these parameters (``${NAME}`` allowed in the values)."""

    jobnet: str
    params: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        return {"jobnet": self.jobnet, **({"params": dict(self.params)} if self.params else {})}


@dataclass(frozen=True, slots=True)
class Loop:
    """Run a jobnet (the body) ``count`` times, or until ``until`` holds after an iteration (at most ``max``)."""

    jobnet: str
    count: int | None = None
    until: Condition | None = None
    max: int | None = None
    counter: str = DEFAULT_COUNTER
    params: dict[str, str] = field(default_factory=dict)

    @property
    def limit(self) -> int:
        """The most iterations."""
        return self.count if self.count is not None else int(self.max or 0)

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"jobnet": self.jobnet}
        if self.count is not None:
            out["count"] = self.count
        if self.until is not None:
            out["until"] = self.until.to_dict()
        if self.max is not None:
            out["max"] = self.max
        if self.counter != DEFAULT_COUNTER:
            out["counter"] = self.counter
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``for_s`` seconds, or until the clock reads ``until`` in ``timezone`` (the next such moment)."""

    for_s: float | None = None
    until: str | None = None
    timezone: str = DEFAULT_TIMEZONE

    def due(self, start: float) -> float:
        """When a wait that started at ``start`` is over."""
        if self.for_s is not None:
            return start + self.for_s
        assert self.until is not None
        return next_clock(start, self.until, self.timezone)

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"for_s": self.for_s} if self.for_s is not None else {"until": self.until}
        if self.timezone != DEFAULT_TIMEZONE:
            out["timezone"] = self.timezone
        return out


@dataclass(frozen=True, slots=True)
class Info:
    """Set variables from facts: ``get`` maps a variable name to one of ``INFO_ITEMS``."""

    get: dict[str, str]
    calendar: str | None = None
    timezone: str = DEFAULT_TIMEZONE

    def values(
        self, run_id: str, jobnet: str, run_started_at: float, now: float, calset: CalendarSet
    ) -> dict[str, str]:
        """The variables this unit sets, at ``now``, for a run that started at ``run_started_at``.

        Raises:
            KeyError: the calendar is not known (the manager checks calendars when definitions are applied).
        """
        zone = ZoneInfo(self.timezone)
        local = datetime.fromtimestamp(now, UTC).astimezone(zone)
        started = datetime.fromtimestamp(run_started_at, UTC).astimezone(zone)
        today = local.date()
        out: dict[str, str] = {}
        for name, item in self.get.items():
            if item == "operating_day":
                out[name] = "true" if calset.is_operating(str(self.calendar), today) else "false"
            elif item in ("next_operating_day", "previous_operating_day"):
                step = 1 if item == "next_operating_day" else -1
                found = calset.next_operating(
                    str(self.calendar), today + timedelta(days=step), step, _OPERATING_DAY_SEARCH
                )
                out[name] = found.isoformat() if found is not None else ""
            else:
                out[name] = _fact(item, local, started, today, run_id, jobnet)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"get": dict(self.get)}
        if self.calendar is not None:
            out["calendar"] = self.calendar
        if self.timezone != DEFAULT_TIMEZONE:
            out["timezone"] = self.timezone
        return out


def _fact(item: str, local: datetime, started: datetime, today: date, run_id: str, jobnet: str) -> str:
    facts = {
        "date": today.isoformat(),
        "time": local.strftime("%H:%M:%S"),
        "weekday": _WEEKDAYS[today.weekday()],
        "run_id": run_id,
        "jobnet": jobnet,
        "run_started_at": started.isoformat(timespec="seconds"),
        "run_date": started.date().isoformat(),
    }
    return facts[item]


@dataclass(frozen=True, slots=True)
class End:
    """End the run now with ``status`` (the units still running are killed, the rest skipped)."""

    status: str
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        return {"status": self.status, **({"message": self.message} if self.message else {})}


@dataclass(frozen=True, slots=True)
class FileWatch:
    """Wait on an agent until ``path`` exists (and, with ``stable_s``, has not changed for that long)."""

    path: str
    timeout_s: float
    stable_s: float = 0.0
    poll_s: float = DEFAULT_POLL_S

    def args(self) -> dict[str, Any]:
        """The keyword arguments of the call the agent runs (``FILEWATCH_CALL``)."""
        return {"path": self.path, "timeout_s": self.timeout_s, "stable_s": self.stable_s, "poll_s": self.poll_s}

    def to_dict(self) -> dict[str, Any]:
        """The input form."""
        out: dict[str, Any] = {"path": self.path, "timeout_s": self.timeout_s}
        if self.stable_s:
            out["stable_s"] = self.stable_s
        if self.poll_s != DEFAULT_POLL_S:
            out["poll_s"] = self.poll_s
        return out


UnitConfig = Branch | Loop | Nested | Wait | Info | End | FileWatch


@dataclass(frozen=True, slots=True)
class Unit:
    """What a unit is beyond a plain job's command and target: its kind and the flow settings."""

    kind: UnitKind = UnitKind.JOB
    config: UnitConfig | None = None
    judge: Judge | None = None
    retry: Retry | None = None
    delay: DelayWatch | None = None
    recovery: bool = False
    continue_on_failure: bool = False
    #: the variables the unit declares it sets (a job prints them; a nested jobnet or loop takes them out)
    sets: tuple[str, ...] = ()
    #: whether an argv element, env value, cwd, args or a parameter refers to a variable (set when parsed)
    has_refs: bool = False

    @property
    def dispatched(self) -> bool:
        """Whether an agent or worker runs it (a job or a file watch), rather than the manager."""
        return self.kind in (UnitKind.JOB, UnitKind.FILEWATCH)

    def outputs(self) -> set[str]:
        """The variables the unit may set for the units after it."""
        found = set(self.sets)
        if isinstance(self.config, Loop):
            found.add(self.config.counter)
        elif isinstance(self.config, Info):
            found.update(self.config.get)
        elif isinstance(self.config, FileWatch):
            found.update((FILEWATCH_PATH_VAR, FILEWATCH_SIZE_VAR))
        return found

    def to_dict(self) -> dict[str, Any]:
        """The keys this adds to the unit's map (the kind's own and the flow settings)."""
        out: dict[str, Any] = {}
        if self.kind != UnitKind.JOB:
            out["type"] = str(self.kind)
        if self.config is not None:
            out |= self.config.to_dict()
        if self.judge is not None:
            out["judge"] = self.judge.to_dict()
        if self.retry is not None:
            out["retry"] = self.retry.to_dict()
        if self.delay is not None:
            out["delay"] = self.delay.to_dict()
        if self.recovery:
            out["recovery"] = True
        if self.continue_on_failure:
            out["continue_on_failure"] = True
        if self.sets:
            out["sets"] = list(self.sets)
        return out


#: The unit of a plain job that sets none of the flow keys.
PLAIN_JOB = Unit()


@dataclass(frozen=True, slots=True)
class JobnetFlow:
    """A jobnet's parameters (with defaults), run timeout, delay watch and multiple-instances policy."""

    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    delay: DelayWatch | None = None
    instances: Instances = Instances.ALLOW

    def to_dict(self) -> dict[str, Any]:
        """The keys this adds to the jobnet's map."""
        out: dict[str, Any] = {}
        if self.params:
            out["params"] = dict(self.params)
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.delay is not None:
            out["delay"] = self.delay.to_dict()
        if self.instances != Instances.ALLOW:
            out["instances"] = str(self.instances)
        return out


PLAIN_JOBNET = JobnetFlow()
