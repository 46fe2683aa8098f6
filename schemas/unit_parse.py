"""Reading units from a definition: each kind's keys, checked, with every error named by its path."""

from collections.abc import Iterator, Mapping
from typing import Any

from schemas.fields import FieldError, check_keys, child, string
from schemas.names import is_valid_name
from schemas.schedules import DEFAULT_TIMEZONE, parse_clock, valid_timezone
from schemas.units import (
    CALENDAR_ITEMS,
    CASE_KEYS,
    CONDITION_KEYS,
    DEFAULT_COUNTER,
    DEFAULT_POLL_S,
    DELAY_KEYS,
    END_STATES,
    END_STATUSES,
    INFO_ITEMS,
    JUDGE_KEYS,
    MAX_CASES,
    MAX_ITERATIONS,
    MAX_RETRIES,
    MAX_SECONDS,
    PLAIN_JOB,
    PLAIN_JOBNET,
    RETRY_KEYS,
    UNIT_KEYS,
    Branch,
    Case,
    Condition,
    DelayWatch,
    End,
    FileWatch,
    Info,
    Instances,
    JobnetFlow,
    Judge,
    Loop,
    Nested,
    Retry,
    Unit,
    UnitConfig,
    UnitKind,
    Wait,
)
from schemas.variables import BUILTIN_PREFIX, is_var_name, references


def unit_kind(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> UnitKind | None:
    """The ``type`` of a unit table (``job`` when absent); None, with an error, when it names no kind."""
    kind = raw.get("type", "job")
    if not isinstance(kind, str) or kind not in UnitKind._value2member_map_:
        errors.append(FieldError(f"{path}.type", f"must be one of {', '.join(UnitKind)}"))
        return None
    return UnitKind(kind)


def parse_job_unit(raw: Mapping[str, Any], path: str, has_refs: bool, errors: list[FieldError]) -> Unit:
    """The flow settings of a plain job (its command and target are ``schemas.definitions``')."""
    common = _common(raw, path, errors)
    judge = _judge(raw.get("judge"), f"{path}.judge", errors)
    retry = _retry(raw.get("retry"), f"{path}.retry", errors)
    sets = _var_names(raw.get("sets"), f"{path}.sets", errors)
    if common is None:
        return PLAIN_JOB
    recovery, cof, delay = common
    if not (judge or retry or sets or recovery or cof or delay or has_refs):
        return PLAIN_JOB
    return Unit(UnitKind.JOB, None, judge, retry, delay, recovery, cof, sets, has_refs)


def parse_flow_unit(raw: dict[str, Any], kind: UnitKind, path: str, errors: list[FieldError]) -> Unit | None:
    """A flow unit's kind-specific settings and flow settings (its id and after are the caller's)."""
    before = len(errors)
    raw = check_keys(raw, UNIT_KEYS[kind], path, errors)
    common = _common(raw, path, errors)
    sets = _var_names(raw.get("sets"), f"{path}.sets", errors)
    retry = _retry(raw.get("retry"), f"{path}.retry", errors) if kind == UnitKind.FILEWATCH else None
    config: UnitConfig | None
    if kind == UnitKind.BRANCH:
        config = _branch(raw, path, errors)
    elif kind in (UnitKind.JOBNET, UnitKind.LOOP):
        config = _nested_or_loop(raw, kind, path, errors)
    elif kind == UnitKind.WAIT:
        config = _wait(raw, path, errors)
    elif kind == UnitKind.INFO:
        config = _info(raw, path, errors)
    elif kind == UnitKind.END:
        config = _end(raw, path, errors)
    else:
        config = _filewatch(raw, path, errors)
    if common is None or config is None or len(errors) != before:
        return None
    recovery, cof, delay = common
    has_refs = any(True for _ in unit_references(config))
    return Unit(kind, config, None, retry, delay, recovery, cof, sets, has_refs)


def parse_jobnet_flow(body: Mapping[str, Any], path: str, errors: list[FieldError]) -> JobnetFlow:
    """A jobnet's ``params``, ``timeout_s``, ``delay`` and ``instances``."""
    params = _params(body.get("params"), f"{path}.params", errors, names=True)
    timeout_s = _seconds(body, "timeout_s", path, errors, positive=True)
    delay = _delay(body.get("delay"), f"{path}.delay", errors)
    instances = body.get("instances", str(Instances.ALLOW))
    if not isinstance(instances, str) or instances not in Instances._value2member_map_:
        errors.append(FieldError(f"{path}.instances", f"must be one of {', '.join(Instances)}"))
        instances = str(Instances.ALLOW)
    if not params and timeout_s is None and delay is None and instances == Instances.ALLOW:
        return PLAIN_JOBNET
    return JobnetFlow(params, timeout_s, delay, Instances(instances))


def _common(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> tuple[bool, bool, DelayWatch | None] | None:
    before = len(errors)
    recovery = _bool(raw, "recovery", path, errors)
    cof = _bool(raw, "continue_on_failure", path, errors)
    delay = _delay(raw.get("delay"), f"{path}.delay", errors)
    if recovery and not raw.get("after"):
        errors.append(
            FieldError(f"{path}.recovery", "a recovery unit needs 'after': the units whose failure it handles")
        )
    return (recovery, cof, delay) if len(errors) == before else None


def _bool(raw: Mapping[str, Any], key: str, path: str, errors: list[FieldError]) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        errors.append(FieldError(f"{path}.{key}", "must be true or false"))
        return False
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _seconds(
    raw: Mapping[str, Any], key: str, path: str, errors: list[FieldError], positive: bool = False
) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    low_ok = value > 0 if _number(value) and positive else _number(value) and value >= 0
    if not _number(value) or not low_ok or value > MAX_SECONDS:
        bounds = f"(0, {MAX_SECONDS}]" if positive else f"[0, {MAX_SECONDS}]"
        errors.append(FieldError(f"{path}.{key}", f"must be a number of seconds in {bounds}"))
        return None
    return float(value)


def _int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _judge(raw: Any, path: str, errors: list[FieldError]) -> Judge | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(FieldError(path, "must be a table: { warning_from = N, abnormal_from = M }"))
        return None
    raw = check_keys(raw, JUDGE_KEYS, path, errors)
    # With only warning_from, no exit code (0..255) is abnormal: every code from it on is a warning.
    warning = raw.get("warning_from")
    abnormal = raw.get("abnormal_from", 1 if warning is None else 256)
    ok = True
    if warning is not None and not _int(warning, 1, 255):
        errors.append(FieldError(f"{path}.warning_from", "must be an exit code in 1..255 (0 is always normal)"))
        ok = False
    if not _int(abnormal, 1, 256):
        errors.append(FieldError(f"{path}.abnormal_from", "must be an exit code in 1..256"))
        ok = False
    if ok and warning is not None and warning >= abnormal:
        errors.append(FieldError(f"{path}.warning_from", "must be below abnormal_from"))
        ok = False
    return Judge(warning, abnormal) if ok else None


def _retry(raw: Any, path: str, errors: list[FieldError]) -> Retry | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(FieldError(path, "must be a table: { max = N, delay_s = S, backoff = F, max_delay_s = S }"))
        return None
    raw = check_keys(raw, RETRY_KEYS, path, errors)
    before = len(errors)
    count = raw.get("max")
    if not _int(count, 1, MAX_RETRIES):
        errors.append(FieldError(f"{path}.max", f"must be the number of retries, 1..{MAX_RETRIES}"))
    delay_s = _seconds(raw, "delay_s", path, errors)
    max_delay_s = _seconds(raw, "max_delay_s", path, errors, positive=True)
    backoff = raw.get("backoff", 1.0)
    if not _number(backoff) or not 1.0 <= backoff <= 100.0:
        errors.append(FieldError(f"{path}.backoff", "must be a factor in [1, 100] (1: the same delay each time)"))
    if len(errors) != before:
        return None
    return Retry(int(count), delay_s or 0.0, float(backoff), max_delay_s)


def _delay(raw: Any, path: str, errors: list[FieldError]) -> DelayWatch | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(FieldError(path, 'must be a table: { after_s = N } or { at = "HH:MM" }'))
        return None
    raw = check_keys(raw, DELAY_KEYS, path, errors)
    before = len(errors)
    after_s = _seconds(raw, "after_s", path, errors, positive=True)
    at = _clock(raw, "at", path, errors)
    if ("after_s" in raw) == ("at" in raw):
        errors.append(
            FieldError(path, "needs exactly one of 'after_s' (seconds after the start) or 'at' (a clock time)")
        )
    timezone = _timezone(raw, path, errors)
    kill = _bool(raw, "kill", path, errors)
    if len(errors) != before:
        return None
    return DelayWatch(after_s, at, timezone, kill)


def _clock(raw: Mapping[str, Any], key: str, path: str, errors: list[FieldError]) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or parse_clock(value) is None:
        errors.append(FieldError(f"{path}.{key}", 'must be a clock time, "HH:MM" or "HH:MM:SS"'))
        return None
    return value


def _timezone(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> str:
    zone = raw.get("timezone", DEFAULT_TIMEZONE)
    if not valid_timezone(zone):
        errors.append(FieldError(f"{path}.timezone", f"{zone!r} is not an IANA time zone (like 'Asia/Tokyo')"))
        return DEFAULT_TIMEZONE
    return str(zone)


def _var_names(raw: Any, path: str, errors: list[FieldError]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        errors.append(FieldError(path, "must be a list of variable names"))
        return ()
    for i, name in enumerate(raw):
        _check_var_name(name, f"{path}[{i}]", errors)
    if len(set(raw)) != len(raw):
        errors.append(FieldError(path, "lists a variable more than once"))
    return tuple(raw)


def _check_var_name(name: str, path: str, errors: list[FieldError]) -> bool:
    if not is_var_name(name):
        errors.append(FieldError(path, f"{name!r} is not a variable name (letters, digits and '_', not a digit first)"))
        return False
    if name.startswith(BUILTIN_PREFIX):
        errors.append(FieldError(path, f"names starting with {BUILTIN_PREFIX} are the manager's own"))
        return False
    return True


def _params(raw: Any, path: str, errors: list[FieldError], names: bool) -> dict[str, str]:
    """A table of strings; with ``names``, each key must be a variable name (a jobnet's declared parameters)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        errors.append(FieldError(path, "must be a table of strings"))
        return {}
    for key, value in raw.items():
        if names:
            _check_var_name(str(key), child(path, key), errors)
        elif not is_var_name(key):
            errors.append(FieldError(child(path, key), f"{key!r} is not a parameter name"))
        if "\0" in value:
            errors.append(FieldError(child(path, key), "must not hold NUL"))
    return {str(k): v for k, v in raw.items()}


def _condition(raw: Any, keys: frozenset[str], path: str, errors: list[FieldError]) -> Condition | None:
    if not isinstance(raw, dict):
        errors.append(
            FieldError(path, "must be a table: { job = ID, exit = [LO, HI] | status = [...] } or { var = NAME, ... }")
        )
        return None
    raw = check_keys(raw, keys, path, errors)
    before = len(errors)
    job, var = raw.get("job"), raw.get("var")
    if (job is None) == (var is None):
        errors.append(FieldError(path, "needs exactly one of 'job' (a job's end) or 'var' (a variable's value)"))
        return None
    if job is not None:
        return _job_condition(raw, job, path, errors) if len(errors) == before else None
    if not isinstance(var, str) or not is_var_name(var):
        errors.append(FieldError(f"{path}.var", "must be a variable name"))
        return None
    tests = [k for k in ("equals", "in", "range") if k in raw]
    if len(tests) != 1 or "exit" in raw or "status" in raw:
        errors.append(FieldError(path, "a variable test needs exactly one of 'equals', 'in' or 'range'"))
        return None
    if "equals" in raw:
        equals = string(raw, "equals", path, errors)
        return Condition(var=var, equals=equals) if equals is not None else None
    if "in" in raw:
        values = raw["in"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            errors.append(FieldError(f"{path}.in", "must be a non-empty list of strings"))
            return None
        return Condition(var=var, one_of=tuple(values))
    bounds = raw["range"]
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(_number(b) for b in bounds) or bounds[0] > bounds[1]:
        errors.append(FieldError(f"{path}.range", "must be [LOW, HIGH], two numbers with LOW <= HIGH"))
        return None
    return Condition(var=var, range=(float(bounds[0]), float(bounds[1])))


def _job_condition(raw: Mapping[str, Any], job: Any, path: str, errors: list[FieldError]) -> Condition | None:
    if not is_valid_name(job):
        errors.append(FieldError(f"{path}.job", "must be a unit id"))
        return None
    if ("exit" in raw) == ("status" in raw) or any(k in raw for k in ("equals", "in", "range")):
        errors.append(FieldError(path, "a job test needs exactly one of 'exit' (codes) or 'status' (end states)"))
        return None
    if "exit" in raw:
        codes = raw["exit"]
        if _int(codes, -(2**31), 2**31 - 1):
            return Condition(job=job, exit=(codes, codes))
        if (
            isinstance(codes, list)
            and len(codes) == 2
            and all(_int(c, -(2**31), 2**31 - 1) for c in codes)
            and codes[0] <= codes[1]
        ):
            return Condition(job=job, exit=(codes[0], codes[1]))
        errors.append(FieldError(f"{path}.exit", "must be an exit code, or [LOW, HIGH] with LOW <= HIGH"))
        return None
    states = raw["status"]
    if isinstance(states, str):
        states = [states]
    if not isinstance(states, list) or not states or not all(isinstance(s, str) and s in END_STATES for s in states):
        errors.append(FieldError(f"{path}.status", f"must be one or more of {', '.join(END_STATES)}"))
        return None
    return Condition(job=job, status=tuple(states))


def _unit_ids(raw: Any, path: str, errors: list[FieldError]) -> tuple[str, ...] | None:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(is_valid_name(t) for t in raw):
        errors.append(FieldError(path, "must be a list of unit ids"))
        return None
    if len(set(raw)) != len(raw):
        errors.append(FieldError(path, "lists a unit more than once"))
        return None
    return tuple(raw)


def _branch(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> Branch | None:
    cases = raw.get("cases")
    if not isinstance(cases, list) or not cases or len(cases) > MAX_CASES:
        errors.append(FieldError(f"{path}.cases", f"a branch needs 1..{MAX_CASES} cases: [{{ ..., to = [IDS] }}]"))
        return None
    before = len(errors)
    parsed: list[Case] = []
    for i, case in enumerate(cases):
        where = f"{path}.cases[{i}]"
        when = _condition(case, CASE_KEYS, where, errors)
        to = _unit_ids(case.get("to") if isinstance(case, dict) else None, f"{where}.to", errors)
        if when is not None and to is not None:
            if not to:
                errors.append(FieldError(f"{where}.to", "must name at least one unit"))
            parsed.append(Case(when, to))
    otherwise = _unit_ids(raw.get("else", []), f"{path}.else", errors)
    if len(errors) != before or otherwise is None:
        return None
    return Branch(tuple(parsed), otherwise)


def _nested_or_loop(
    raw: Mapping[str, Any], kind: UnitKind, path: str, errors: list[FieldError]
) -> Nested | Loop | None:
    before = len(errors)
    name = raw.get("jobnet")
    if not is_valid_name(name):
        errors.append(FieldError(f"{path}.jobnet", "must name the jobnet to run"))
    params = _params(raw.get("params"), f"{path}.params", errors, names=False)
    if kind == UnitKind.JOBNET:
        return Nested(str(name), params) if len(errors) == before else None
    count, until, limit = raw.get("count"), raw.get("until"), raw.get("max")
    counter = raw.get("counter", DEFAULT_COUNTER)
    if count is not None and not _int(count, 1, MAX_ITERATIONS):
        errors.append(FieldError(f"{path}.count", f"must be a number of iterations, 1..{MAX_ITERATIONS}"))
    if limit is not None and not _int(limit, 1, MAX_ITERATIONS):
        errors.append(FieldError(f"{path}.max", f"must be the most iterations, 1..{MAX_ITERATIONS}"))
    condition = _condition(until, CONDITION_KEYS, f"{path}.until", errors) if until is not None else None
    if condition is not None and condition.job is not None:
        errors.append(FieldError(f"{path}.until", "a loop ends on a variable's value ('var'), set by its body"))
    if count is None and (until is None or limit is None):
        errors.append(FieldError(path, "a loop needs a limit: 'count' (iterations), or 'until' with 'max'"))
    elif count is not None and (until is not None or limit is not None):
        errors.append(FieldError(path, "a loop has either 'count', or 'until' with 'max', not both"))
    if isinstance(counter, str):
        _check_var_name(counter, f"{path}.counter", errors)
    else:
        errors.append(FieldError(f"{path}.counter", "must be a variable name"))
    if len(errors) != before:
        return None
    return Loop(str(name), count, condition, limit, str(counter), params)


def _wait(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> Wait | None:
    before = len(errors)
    for_s = _seconds(raw, "for_s", path, errors)
    until = _clock(raw, "until", path, errors)
    if ("for_s" in raw) == ("until" in raw):
        errors.append(FieldError(path, "a wait needs exactly one of 'for_s' (seconds) or 'until' (a clock time)"))
    timezone = _timezone(raw, path, errors)
    return Wait(for_s, until, timezone) if len(errors) == before else None


def _info(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> Info | None:
    before = len(errors)
    get = raw.get("get")
    if not isinstance(get, dict) or not get:
        errors.append(FieldError(f"{path}.get", "must map variable names to what to read: " + ", ".join(INFO_ITEMS)))
        return None
    for name, item in get.items():
        if _check_var_name(str(name), child(f"{path}.get", name), errors) and item not in INFO_ITEMS:
            errors.append(FieldError(child(f"{path}.get", name), f"must be one of {', '.join(INFO_ITEMS)}"))
    calendar = raw.get("calendar")
    if calendar is not None and not is_valid_name(calendar):
        errors.append(FieldError(f"{path}.calendar", "must be a calendar name"))
    if calendar is None and any(item in CALENDAR_ITEMS for item in get.values()):
        errors.append(FieldError(f"{path}.calendar", "operating days are read from a calendar: name it"))
    timezone = _timezone(raw, path, errors)
    return Info(dict(get), calendar, timezone) if len(errors) == before else None


def _end(raw: dict[str, Any], path: str, errors: list[FieldError]) -> End | None:
    status = raw.get("status")
    if status not in END_STATUSES:
        errors.append(FieldError(f"{path}.status", f"must be one of {', '.join(END_STATUSES)}"))
        return None
    message = string(raw, "message", path, errors)
    return End(str(status), message or "")


def _filewatch(raw: Mapping[str, Any], path: str, errors: list[FieldError]) -> FileWatch | None:
    before = len(errors)
    file = raw.get("path")
    if not isinstance(file, str) or not file or "\0" in file:
        errors.append(FieldError(f"{path}.path", "must be the path of the file to wait for"))
    timeout_s = _seconds(raw, "timeout_s", path, errors, positive=True)
    if "timeout_s" not in raw:
        errors.append(FieldError(f"{path}.timeout_s", "a file watch needs a timeout in seconds"))
    stable_s = _seconds(raw, "stable_s", path, errors)
    poll_s = _seconds(raw, "poll_s", path, errors, positive=True)
    if len(errors) != before or timeout_s is None:
        return None
    return FileWatch(str(file), timeout_s, stable_s or 0.0, poll_s or DEFAULT_POLL_S)


def unit_references(config: UnitConfig) -> Iterator[tuple[str, str]]:
    """``(key path, name)`` of each variable a flow unit's settings refer to."""
    if isinstance(config, Nested | Loop):
        for key, value in config.params.items():
            yield from ((child("params", key), name) for name in references(value))
    if isinstance(config, FileWatch):
        yield from (("path", name) for name in references(config.path))
    if isinstance(config, Loop) and config.until is not None:
        yield "until.var", str(config.until.var)
    if isinstance(config, Branch):
        for i, case in enumerate(config.cases):
            if case.when.var is not None:
                yield f"cases[{i}].var", case.when.var
