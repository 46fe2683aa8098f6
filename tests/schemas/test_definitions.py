"""Definition validation: one test per rule, each asserting the error's exact path and what its message says."""

import datetime
import json
import math
from typing import Any

import pytest

from schemas.definitions import (
    DEFAULT_RELAY,
    DEFAULT_TENANT,
    MAX_TIMEOUT_S,
    DefinitionError,
    Definitions,
    Destination,
    FieldError,
    Job,
    Jobnet,
    RestartAttribute,
    find_cycle,
    merge,
    parse_definitions,
    parse_toml,
)

J0 = "jobnet.n.job[0]"

#: A definition that uses every key, every command form and both targets.
RICH_TOML = """
[destination.sales-lb]
relay = "gw-1"
restart = "STOP"
tenant = "sales"
description = "auto-scaled sales workers"

[destination.ga-lb]

[jobnet.nightly]
description = "the nightly load"
tenant = "sales"

[[jobnet.nightly.job]]
id = "extract"
description = "pull yesterday's orders"
cmd = ["python3", "extract.py", "--day", "yesterday"]
env = { DB = "orders", MODE = "full" }
cwd = "/srv/etl"
timeout_s = 600
agent = "db-host"

[[jobnet.nightly.job]]
id = "transform"
cmd = "sort -u orders.csv > orders.sorted"
shell = true
after = "extract"
dest = "sales-lb"
restart = false

[[jobnet.nightly.job]]
id = "load"
call = "etl.load:run"
args = { table = "orders", batch = 500, ratio = 0.25, dry_run = false, keys = ["id", "day"], opts = { x = [1, 2] } }
after = ["extract", "transform"]
dest = "ga-lb"
timeout_s = 12.5

[jobnet.hourly]
[[jobnet.hourly.job]]
id = "ping"
cmd = ["true"]
agent = "web-1"
"""


def _job(job_id: str = "a", **fields: Any) -> dict[str, Any]:
    """A valid job table; ``fields`` override or add keys (a value of ``...`` removes the key)."""
    job: dict[str, Any] = {"id": job_id, "cmd": ["true"], "agent": "host-1"}
    job.update(fields)
    return {k: v for k, v in job.items() if v is not ...}


def _net(*jobs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"jobnet": {"n": {"job": list(jobs), **fields}}}


def _errors(data: Any) -> list[FieldError]:
    with pytest.raises(DefinitionError) as info:
        parse_definitions(data)
    # The exception's text names every error, one per line, so a log line shows them all.
    assert str(info.value).splitlines() == [str(e) for e in info.value.errors]
    return info.value.errors


def _only(data: Any) -> FieldError:
    errors = _errors(data)
    assert len(errors) == 1, errors
    return errors[0]


# --- what is accepted ---------------------------------------------------------------------------------------


def test_minimal_job_takes_the_defaults() -> None:
    defs = parse_toml('[[jobnet.n.job]]\nid = "a"\ncmd = ["true"]\nagent = "h"\n')
    net = defs.jobnets["n"]
    assert net == Jobnet(name="n", jobs=(Job(id="a", argv=("true",), agent="h"),))
    assert net.tenant == DEFAULT_TENANT
    job = net.job("a")
    assert (job.restart, job.timeout_s, job.after, job.env, job.args) == (True, None, (), {}, {})
    with pytest.raises(KeyError):
        net.job("b")


def test_rich_definition_builds_the_model() -> None:
    defs = parse_toml(RICH_TOML)
    assert defs.destinations["ga-lb"] == Destination(name="ga-lb", relay=DEFAULT_RELAY)
    assert defs.destinations["sales-lb"].restart is RestartAttribute.STOP
    net = defs.jobnets["nightly"]
    assert net.tenant == "sales"
    assert net.job("extract").argv == ("python3", "extract.py", "--day", "yesterday")
    assert net.job("extract").timeout_s == 600.0
    assert net.job("transform").shell == "sort -u orders.csv > orders.sorted"
    assert net.job("transform").after == ("extract",)
    assert net.job("transform").restart is False
    assert net.job("load").call == "etl.load:run"
    assert net.job("load").args["opts"] == {"x": [1, 2]}


def test_to_dict_round_trips_exactly() -> None:
    defs = parse_toml(RICH_TOML)
    exported = defs.to_dict()
    again = parse_definitions(exported)
    assert again == defs
    assert again.to_dict() == exported
    # ...and through JSON text, which is what export and import carry.
    assert parse_definitions(json.loads(json.dumps(exported))) == defs


def test_to_dict_is_canonical() -> None:
    defs = parse_toml(RICH_TOML)
    assert defs.to_dict()["jobnet"]["nightly"]["job"][1] == {
        "id": "transform",
        "cmd": "sort -u orders.csv > orders.sorted",
        "shell": True,
        "after": ["extract"],
        "dest": "sales-lb",
        "restart": False,
    }
    assert defs.to_dict()["destination"]["ga-lb"] == {"relay": DEFAULT_RELAY, "restart": "RESTART"}
    assert list(defs.to_dict()["jobnet"]) == ["hourly", "nightly"]
    assert Definitions().to_dict() == {}


# --- unknown keys -------------------------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    err = _only({"jobnets": {}})
    assert err.path == "jobnets"
    assert "unknown key" in err.message
    assert "'jobnet' or 'destination'" in err.message


def test_unknown_jobnet_key() -> None:
    err = _only(_net(_job(), owner="ops"))
    assert (err.path, err.message) == ("jobnet.n.owner", "unknown key")


def test_unknown_job_key() -> None:
    err = _only(_net(_job(command="true")))
    assert (err.path, err.message) == (f"{J0}.command", "unknown key")


def test_odd_keys_are_quoted_in_paths() -> None:
    odd: dict[str, Any] = {"x.y": 1, "new\nline": 2}
    errors = _errors({"a b": 1, "jobnet": {"n": {"job": [_job("a", **odd)]}}})
    assert [e.path for e in errors] == ['["a b"]', f'{J0}["new\\nline"]', f'{J0}["x.y"]']


def test_unknown_destination_key() -> None:
    err = _only({"destination": {"d": {"size": 3}}})
    assert (err.path, err.message) == ("destination.d.size", "unknown key")


def test_null_value_is_refused_not_read_as_absent() -> None:
    err = _only(_net(_job(agent=None, dest="d")))
    assert err.path == f"{J0}.agent"
    assert "must not be null" in err.message


# --- identity and dependencies ------------------------------------------------------------------------------


def test_duplicate_job_id() -> None:
    err = _only(_net(_job("a"), _job("b"), _job("a")))
    assert err.path == "jobnet.n.job[2].id"
    assert err.message == "duplicate job id 'a' (first at job[0])"


def test_dependency_on_unknown_job() -> None:
    err = _only(_net(_job("a"), _job("b", after=["a", "zz"])))
    assert err.path == "jobnet.n.job[1].after"
    assert err.message == "unknown job 'zz'"


def test_self_dependency() -> None:
    err = _only(_net(_job("a"), _job("b", after="b")))
    assert err.path == "jobnet.n.job[1].after"
    assert "cannot come after itself" in err.message


def test_dependency_listed_twice() -> None:
    err = _only(_net(_job("a"), _job("b", after=["a", "a"])))
    assert (err.path, err.message) == ("jobnet.n.job[1].after", "lists a job more than once")


def test_after_must_be_job_ids() -> None:
    err = _only(_net(_job("a", after=[1])))
    assert (err.path, err.message) == (f"{J0}.after", "must be a list of job ids")


def test_cycle_of_two_is_named_in_run_order() -> None:
    err = _only(_net(_job("a", after="b"), _job("b", after="a")))
    assert err.path == "jobnet.n"
    assert err.message == "dependency cycle: a -> b -> a"


def test_cycle_of_three_is_named_in_run_order() -> None:
    # a runs after c, b after a, c after b: the run order around the loop is a, b, c.
    err = _only(_net(_job("x"), _job("a", after=["x", "c"]), _job("b", after="a"), _job("c", after="b")))
    assert err.path == "jobnet.n"
    assert err.message == "dependency cycle: a -> b -> c -> a"


# --- the command --------------------------------------------------------------------------------------------


def test_missing_command() -> None:
    err = _only(_net(_job(cmd=...)))
    assert err.path == J0
    assert err.message.startswith("missing command")


def test_both_cmd_and_call() -> None:
    err = _only(_net(_job(call="pkg.mod:run")))
    assert err.path == J0
    assert err.message == "set either 'cmd' or 'call', not both"


def test_string_cmd_needs_shell_true() -> None:
    err = _only(_net(_job(cmd="echo hi")))
    assert err.path == f"{J0}.cmd"
    assert "shell = true" in err.message


def test_shell_true_with_a_list() -> None:
    err = _only(_net(_job(cmd=["echo", "hi"], shell=True)))
    assert err.path == f"{J0}.shell"
    assert "needs 'cmd' to be one string" in err.message


def test_shell_must_be_a_boolean() -> None:
    errors = _errors(_net(_job(cmd="echo hi", shell="yes")))
    assert errors[0] == FieldError(f"{J0}.shell", "must be true or false")


def test_shell_with_call() -> None:
    err = _only(_net(_job(cmd=..., call="m:f", shell=True)))
    assert err.path == f"{J0}.shell"
    assert "only a 'cmd' string runs in a shell" in err.message


@pytest.mark.parametrize("cmd", [[], [""], ["ls", 3], 7])
def test_argv_must_be_a_non_empty_list_of_strings(cmd: Any) -> None:
    err = _only(_net(_job(cmd=cmd)))
    assert err.path == f"{J0}.cmd"
    assert err.message == "must be a non-empty list of strings (argv)"


def test_blank_shell_command() -> None:
    err = _only(_net(_job(cmd=" \t", shell=True)))
    assert (err.path, err.message) == (f"{J0}.cmd", "must not be empty")


@pytest.mark.parametrize(
    "call", ["nocolon", "a:b:c", ":f", "m:", "my mod:run", "pkg.mod:obj.attr", "1m:f", "m:f\n", 42]
)
def test_bad_call_target(call: Any) -> None:
    err = _only(_net(_job(cmd=..., call=call)))
    assert err.path == f"{J0}.call"
    assert "'package.module:function'" in err.message


@pytest.mark.parametrize("call", ["m:f", "pkg.sub_2.mod:_run", "_m:F9"])
def test_good_call_target(call: str) -> None:
    assert parse_definitions(_net(_job(cmd=..., call=call))).jobnets["n"].jobs[0].call == call


def test_args_on_a_non_call_job() -> None:
    err = _only(_net(_job(args={"x": 1})))
    assert err.path == f"{J0}.args"
    assert err.message == "only a 'call' job takes args"


def test_args_with_a_bad_call_target_names_only_the_target() -> None:
    err = _only(_net(_job(cmd=..., call="nocolon", args={"x": 1})))
    assert err.path == f"{J0}.call"


def test_args_must_be_a_table() -> None:
    err = _only(_net(_job(cmd=..., call="m:f", args=[1])))
    assert (err.path, err.message) == (f"{J0}.args", "must be a table")


def test_args_refuse_toml_dates() -> None:
    text = '[[jobnet.n.job]]\nid = "a"\ncall = "m:f"\nagent = "h"\nargs = { opts = { day = 2024-05-01 } }\n'
    with pytest.raises(DefinitionError) as info:
        parse_toml(text)
    [err] = info.value.errors
    assert err.path == f"{J0}.args.opts.day"
    assert "must be JSON data" in err.message
    assert isinstance(parse_toml(text.replace("2024-05-01", '"2024-05-01"')), Definitions)
    _only(_net(_job(cmd=..., call="m:f", args={"t": datetime.time(1, 2)})))


@pytest.mark.parametrize(("value", "where"), [(2**64, ""), ([1, math.inf], "[1]"), ({"k": math.nan}, ".k")])
def test_args_numbers_must_fit_the_wire(value: Any, where: str) -> None:
    err = _only(_net(_job(cmd=..., call="m:f", args={"v": value})))
    assert err.path == f"{J0}.args.v{where}"
    assert "number must be finite" in err.message


def test_args_errors_come_in_document_order_with_quoted_keys() -> None:
    args = {"a": [1, datetime.date(2024, 1, 1), 2**70], "b c": {"d": math.inf}, 1: "x"}
    errors = _errors(_net(_job(cmd=..., call="m:f", args=args)))
    assert [e.path for e in errors] == [f"{J0}.args"]
    del args[1]
    errors = _errors(_net(_job(cmd=..., call="m:f", args=args)))
    assert [e.path for e in errors] == [f"{J0}.args.a[1]", f"{J0}.args.a[2]", f'{J0}.args["b c"].d']


def test_args_accept_json_data() -> None:
    args = {"s": "x", "i": -(2**63), "u": 2**64 - 1, "f": 0.5, "b": True, "n": None, "l": [[1], {"a": []}]}
    job = parse_definitions(_net(_job(cmd=..., call="m:f", args=args))).jobnets["n"].jobs[0]
    assert job.args == args


# --- fields -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [0, -1, -0.5, "10", True, MAX_TIMEOUT_S + 1, math.inf, math.nan])
def test_bad_timeout(timeout_s: Any) -> None:
    err = _only(_net(_job(timeout_s=timeout_s)))
    assert err.path == f"{J0}.timeout_s"
    assert err.message == f"must be a number of seconds in (0, {MAX_TIMEOUT_S}]"


@pytest.mark.parametrize("timeout_s", [0.001, 1, MAX_TIMEOUT_S])
def test_good_timeout(timeout_s: float) -> None:
    assert parse_definitions(_net(_job(timeout_s=timeout_s))).jobnets["n"].jobs[0].timeout_s == timeout_s


@pytest.mark.parametrize("env", ["A=1", ["A=1"], {"A": 1}, {"A": ["x"]}])
def test_env_must_be_a_table_of_strings(env: Any) -> None:
    err = _only(_net(_job(env=env)))
    assert (err.path, err.message) == (f"{J0}.env", "must be a table of strings")


@pytest.mark.parametrize(("env", "bad"), [({"A=B": "1"}, "A=B"), ({"": "1"}, ""), ({"OK": "1", "V": "a\0b"}, "V")])
def test_env_names_and_values_must_suit_exec(env: dict[str, str], bad: str) -> None:
    err = _only(_net(_job(env=env)))
    assert err.path == f"{J0}.env"
    assert f"invalid variables [{bad!r}]" in err.message


def test_strings_must_be_strings() -> None:
    errors = _errors(_net(_job(cwd=1, description=2), description=3))
    assert [(e.path, e.message) for e in errors] == [
        (f"{J0}.cwd", "must be a string"),
        (f"{J0}.description", "must be a string"),
        ("jobnet.n.description", "must be a string"),
    ]


def test_restart_must_be_a_boolean() -> None:
    err = _only(_net(_job(restart="no")))
    assert (err.path, err.message) == (f"{J0}.restart", "must be true or false")


@pytest.mark.parametrize("restart", ["restart", "NEVER", ["RESTART"], 1])
def test_destination_restart_attribute(restart: Any) -> None:
    err = _only({"destination": {"d": {"restart": restart}}})
    assert (err.path, err.message) == ("destination.d.restart", "must be one of RESTART, PURGE, STOP")


@pytest.mark.parametrize("targets", [{"agent": ...}, {"agent": "h", "dest": "d"}])
def test_job_needs_exactly_one_target(targets: dict[str, Any]) -> None:
    err = _only(_net(_job(**targets)))
    assert err.path == J0
    assert err.message.startswith("needs exactly one target")


# --- names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "says"),
    [
        ({"jobnet": {"bad name": {"job": [_job()]}}}, 'jobnet["bad name"]', "invalid name"),
        ({"jobnet": {"nightly\n": {"job": [_job()]}}}, 'jobnet["nightly\\n"]', "invalid name"),
        ({"jobnet": {"_x": {"job": [_job()]}}}, "jobnet._x", "invalid name"),
        ({"jobnet": {"x" * 65: {"job": [_job()]}}}, "jobnet." + "x" * 65, "invalid name"),
        (_net(_job("-a")), f"{J0}.id", "missing or invalid"),
        (_net(_job(id=...)), f"{J0}.id", "missing or invalid"),
        (_net(_job(agent="db.host")), f"{J0}.agent", "valid agent name"),
        (_net(_job(agent=..., dest="cloud/lb")), f"{J0}.dest", "valid destination name"),
        ({"destination": {"x.y": {}}}, 'destination["x.y"]', "invalid name"),
        ({"destination": {"d": {"relay": "gw 1"}}}, "destination.d.relay", "valid relay name"),
        ({"destination": {"d": {"tenant": "t*"}}}, "destination.d.tenant", "valid tenant name"),
        (_net(_job(), tenant="_t"), "jobnet.n.tenant", "valid tenant name"),
    ],
)
def test_invalid_name(data: dict[str, Any], path: str, says: str) -> None:
    err = _only(data)
    assert err.path == path
    assert says in err.message


# --- structure ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"description": "empty"}, {"job": []}, {"job": {"id": "a"}}])
def test_jobnet_with_no_jobs(body: dict[str, Any]) -> None:
    err = _only({"jobnet": {"n": body}})
    assert err.path == "jobnet.n.job"
    assert "at least one job" in err.message


@pytest.mark.parametrize(
    ("data", "path", "says"),
    [
        ([], "$", "definitions must be a map"),
        ({"jobnet": []}, "jobnet", "table of jobnets"),
        ({"destination": "d"}, "destination", "table of destinations"),
        ({"jobnet": {"n": "x"}}, "jobnet.n", "must be a table"),
        ({"destination": {"d": 1}}, "destination.d", "must be a table"),
        (_net("a"), J0, "must be a table"),  # type: ignore[arg-type]
    ],
)
def test_wrong_table_types(data: Any, path: str, says: str) -> None:
    err = _only(data)
    assert err.path == path
    assert says in err.message


def test_every_error_is_reported_at_once() -> None:
    text = """
    colour = "blue"

    [destination.d]
    restart = "SOMETIMES"

    [jobnet.good]
    [[jobnet.good.job]]
    id = "a"
    cmd = ["true"]
    agent = "h"

    [jobnet.bad]
    [[jobnet.bad.job]]
    id = "a"
    cmd = "rm -rf /tmp/x"
    agent = "h"
    timeout_s = 0

    [[jobnet.bad.job]]
    id = "a"
    call = "m:f"
    after = ["a", "ghost"]

    [jobnet.empty]
    """
    with pytest.raises(DefinitionError) as info:
        parse_toml(text)
    assert [e.path for e in info.value.errors] == [
        "colour",
        "destination.d.restart",
        "jobnet.bad.job[0].cmd",
        "jobnet.bad.job[0].timeout_s",
        "jobnet.bad.job[1]",
        "jobnet.bad.job[1].id",
        "jobnet.bad.job[1].after",
        "jobnet.empty.job",
    ]
    assert "needs exactly one target" in info.value.errors[4].message
    assert "duplicate job id 'a'" in info.value.errors[5].message
    assert info.value.errors[6].message == "unknown job 'ghost'"


def test_not_toml() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_toml('[jobnet.n\nid = "a"\n', source="nightly.toml")
    [err] = info.value.errors
    assert err.path == "nightly.toml"
    assert err.message.startswith("not valid TOML: ")
    with pytest.raises(DefinitionError) as info:
        parse_toml("= 1")
    assert info.value.errors[0].path == "<toml>"


# --- merge --------------------------------------------------------------------------------------------------


def test_merge_combines_files() -> None:
    one = parse_toml('[destination.d]\n[[jobnet.a.job]]\nid = "x"\ncmd = ["true"]\ndest = "d"\n')
    two = parse_toml('[[jobnet.b.job]]\nid = "x"\ncmd = ["true"]\nagent = "h"\n')
    merged = merge([one, two])
    assert sorted(merged.jobnets) == ["a", "b"]
    assert list(merged.destinations) == ["d"]
    assert merge([]) == Definitions()


def test_merge_refuses_a_jobnet_defined_twice() -> None:
    one = parse_toml('[[jobnet.a.job]]\nid = "x"\ncmd = ["true"]\nagent = "h"\n[destination.d]\n')
    two = parse_toml('[[jobnet.a.job]]\nid = "y"\ncmd = ["false"]\nagent = "h"\n[destination.d]\nrelay = "r"\n')
    with pytest.raises(DefinitionError) as info:
        merge([one, two])
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("jobnet.a", "defined more than once"),
        ("destination.d", "defined more than once"),
    ]


# --- find_cycle ---------------------------------------------------------------------------------------------


def test_find_cycle_none() -> None:
    assert find_cycle({}) == []
    assert find_cycle({"a": (), "b": ("a",), "c": ("b", "a")}) == []


def test_find_cycle_diamond_is_not_a_cycle() -> None:
    assert find_cycle({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}) == []
    assert find_cycle({"d": ("b", "c"), "c": ("a",), "b": ("a",), "a": ()}) == []


def test_find_cycle_long_chain_without_recursion() -> None:
    n = 20_000  # deeper than Python's recursion limit
    chain: dict[str, tuple[str, ...]] = {f"j{i}": (f"j{i - 1}",) if i else () for i in range(n)}
    assert find_cycle(chain) == []
    chain["j0"] = (f"j{n - 1}",)
    cycle = find_cycle(chain)
    assert len(cycle) == n + 1
    assert cycle[0] == cycle[-1]
    start = int(cycle[0][1:])
    assert cycle[:-1] == [f"j{(start + k) % n}" for k in range(n)]


def test_find_cycle_names_a_loop_in_run_order() -> None:
    assert find_cycle({"a": ("c",), "b": ("a",), "c": ("b",)}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ("a",)}) == ["a", "a"]


def test_find_cycle_ignores_unknown_nodes() -> None:
    assert find_cycle({"a": ("ghost",)}) == []


def test_group_targets_and_broadcast() -> None:
    defs = parse_definitions(
        {
            "agent": {"db1": {"restart": "STOP", "tenant": "sales"}},
            "group": {"etl": {"agents": ["db1", "db2"], "tenant": "sales"}},
            "jobnet": {
                "n": {
                    "tenant": "sales",
                    "job": [
                        {"id": "any", "cmd": ["true"], "group": "etl"},
                        {"id": "all", "cmd": ["true"], "group": "etl", "broadcast": True, "after": ["any"]},
                    ],
                }
            },
        }
    )
    assert defs.groups["etl"].agents == ("db1", "db2")
    assert str(defs.agents["db1"].restart) == "STOP"
    jobs = defs.jobnets["n"].jobs
    assert (jobs[0].group, jobs[0].broadcast, jobs[1].broadcast) == ("etl", False, True)
    assert parse_definitions(defs.to_dict()) == defs


@pytest.mark.parametrize(
    ("job", "path", "words"),
    [
        ({"agent": "a", "group": "g"}, "jobnet.n.job[0]", "exactly one target"),
        ({"agent": "a", "broadcast": True}, "jobnet.n.job[0].broadcast", "only a 'group' job"),
        ({"group": "g", "broadcast": "yes"}, "jobnet.n.job[0].broadcast", "true or false"),
        ({"group": "not a name"}, "jobnet.n.job[0].group", "valid group name"),
    ],
)
def test_bad_group_targets(job: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_definitions({"jobnet": {"n": {"job": [{"id": "x", "cmd": ["true"], **job}]}}})
    assert [(e.path, words in e.message) for e in err.value.errors] == [(path, True)]


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"group": {"g": {"agents": []}}}, "group.g.agents"),
        ({"group": {"g": {"agents": ["a", "a"]}}}, "group.g.agents"),
        ({"group": {"g": {"members": ["a"]}}}, "group.g.members"),
        ({"agent": {"a": {"restart": "NEVER"}}}, "agent.a.restart"),
        ({"agent": {"a b": {}}}, 'agent["a b"]'),
    ],
)
def test_bad_agent_and_group_definitions(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(DefinitionError) as err:
        parse_definitions(doc)
    assert path in [e.path for e in err.value.errors]


def test_merge_refuses_a_group_defined_twice() -> None:
    part = parse_definitions({"group": {"g": {"agents": ["a"]}}})
    with pytest.raises(DefinitionError) as err:
        merge([part, part])
    assert [e.path for e in err.value.errors] == ["group.g"]
