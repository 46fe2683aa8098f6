"""The jobnet language's definitions: what the validator refuses (each error by its path), what round-trips,
and the pure rules (judgment, backoff, conditions, clock times, variable lines and references)."""

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ekiden.deffiles import load_definitions
from schemas.definitions import DefinitionError, merge, parse_definitions
from schemas.definitions_schema import DEFINITIONS_SCHEMA
from schemas.units import Condition, Judge, Retry, next_clock
from schemas.variables import MissingVariableError, parse_output, references, substitute, var_line
from tests.schemas.test_jsonschema import UNIT_DOCS, _validator

REPO = Path(__file__).resolve().parents[2]


def _errors(doc: Any) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        parse_definitions(doc)
    return [str(e) for e in info.value.errors]


def _job(job_id: str, **more: Any) -> dict[str, Any]:
    return {"id": job_id, "cmd": ["true"], "agent": "h", **more}


def test_every_error_the_issue_names_is_refused_with_its_path() -> None:
    doc = {
        "jobnet": {
            "a": {"job": [{"id": "in-b", "type": "jobnet", "jobnet": "b"}]},
            "b": {"job": [{"id": "in-a", "type": "loop", "jobnet": "a", "count": 2}]},
            "selfish": {"job": [{"id": "me", "type": "jobnet", "jobnet": "selfish"}]},
            "refs": {"job": [_job("check", cmd=["check", "${UNKNOWN}"])]},
            "pick": {
                "job": [
                    _job("check"),
                    {
                        "id": "pick",
                        "type": "branch",
                        "after": ["check"],
                        "cases": [{"job": "check", "exit": 0, "to": ["nowhere"]}],
                    },
                ]
            },
            "spin": {"job": [{"id": "spin", "type": "loop", "jobnet": "a"}]},
        }
    }
    errors = _errors(doc)
    assert "jobnet.selfish.job[0].jobnet: a jobnet cannot include itself (selfish)" in errors
    assert "jobnet.pick.job[1].cases[0].to: unknown unit 'nowhere'" in errors
    assert "jobnet.spin.job[0]: a loop needs a limit: 'count' (iterations), or 'until' with 'max'" in errors
    assert any(e.startswith("jobnet.refs.job[0].cmd[1]: unknown variable ${UNKNOWN}") for e in errors)
    assert len(errors) == 4
    # The cycle through nested jobnets is a rule across jobnets: checked once each jobnet is sound.
    cycle = _errors({"jobnet": {k: v for k, v in doc["jobnet"].items() if k in ("a", "b")}})
    assert cycle == ["jobnet.a.job[0].jobnet: nested jobnets form a cycle: a -> b -> a"]


def test_a_variable_is_never_substituted_into_code_an_interpreter_runs() -> None:
    def net(*cmd: str) -> dict[str, Any]:
        return {"jobnet": {"n": {"params": {"D": "x"}, "job": [_job("a", cmd=list(cmd))]}}}

    assert _errors(net("sh", "-c", "echo ${D}")) == [
        "jobnet.n.job[0].cmd[2]: ${D} inside the code of sh -c would make a value code: pass it as an argument"
        ' ("$1", sys.argv[1]) or read $EKIDEN_VAR_D'
    ]
    assert _errors(net("/usr/bin/python3.11", "-c", "print('${D}')"))[0].startswith(
        "jobnet.n.job[0].cmd[2]: ${D} inside"
    )
    assert _errors(net("bash", "-ec", "x${D}"))[0].startswith("jobnet.n.job[0].cmd[2]")
    for fine in (net("sh", "-c", 'echo "$1"', "sh", "${D}"), net("grep", "-e", "${D}", "f")):
        parse_definitions(fine)


def test_rules_across_jobnets_hold_across_files_too() -> None:
    parent = parse_definitions(
        {"jobnet": {"p": {"job": [{"id": "u", "type": "jobnet", "jobnet": "c"}]}}}, complete=False
    )
    child = parse_definitions(
        {"jobnet": {"c": {"job": [{"id": "u", "type": "jobnet", "jobnet": "p"}]}}}, complete=False
    )
    with pytest.raises(DefinitionError) as info:
        merge([parent, child])
    assert [str(e) for e in info.value.errors] == ["jobnet.c.job[0].jobnet: nested jobnets form a cycle: c -> p -> c"]


@pytest.mark.parametrize("doc", UNIT_DOCS, ids=lambda d: ",".join(sorted(d["jobnet"])))
def test_units_round_trip_through_their_canonical_form(doc: dict[str, Any]) -> None:
    defs = parse_definitions(doc)
    again = parse_definitions(defs.to_dict())
    assert again == defs
    assert again.to_dict() == defs.to_dict()


def test_judgment_thresholds() -> None:
    jp1 = Judge(warning_from=1, abnormal_from=10)
    assert [jp1.outcome(c) for c in (0, 1, 9, 10, 255, -1)] == [
        "normal",
        "warning",
        "warning",
        "abnormal",
        "abnormal",
        "abnormal",
    ]
    assert [Judge(abnormal_from=4).outcome(c) for c in (0, 3, 4)] == ["normal", "normal", "abnormal"]
    assert [Judge().outcome(c) for c in (0, 1)] == ["normal", "abnormal"]


def test_retry_delays_grow_and_are_capped() -> None:
    retry = Retry(max=5, delay_s=5, backoff=2.0, max_delay_s=30)
    assert [retry.delay_before(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]
    assert [Retry(max=2, delay_s=3).delay_before(n) for n in (1, 2)] == [3, 3]


def test_conditions() -> None:
    exit_range = Condition(job="a", exit=(1, 3))
    assert [exit_range.holds("failed", c, {}) for c in (0, 1, 3, 4, None)] == [False, True, True, False, False]
    status = Condition(job="a", status=("warning", "failed"))
    assert [status.holds(s, 0, {}) for s in ("warning", "succeeded", None)] == [True, False, False]
    number = Condition(var="N", range=(2, 5))
    assert [number.holds(None, None, {"N": v}) for v in ("2", "5.0", "6", "x")] == [True, True, False, False]
    assert not number.holds(None, None, {})
    assert Condition(var="M", one_of=("a", "b")).holds(None, None, {"M": "b"})


def test_next_clock_time_in_a_zone_and_across_a_dst_gap() -> None:
    start = datetime(2024, 5, 1, 10, 0, tzinfo=UTC).timestamp()
    assert next_clock(start, "09:30", "Asia/Tokyo") == datetime(2024, 5, 2, 0, 30, tzinfo=UTC).timestamp()
    assert next_clock(start, "19:30", "Asia/Tokyo") == datetime(2024, 5, 1, 10, 30, tzinfo=UTC).timestamp()
    # 02:30 does not exist in Paris on 2024-03-31: the moment is taken the next day.
    before_gap = datetime(2024, 3, 31, 0, 0, tzinfo=UTC).timestamp()
    moment = datetime.fromtimestamp(next_clock(before_gap, "02:30", "Europe/Paris"), UTC)
    assert moment >= datetime(2024, 3, 31, 0, 0, tzinfo=UTC)


def test_variable_lines_and_references() -> None:
    out = b"x\n::ekiden-var A=1\n::ekiden-var A=2\n::ekiden-var 9=x\n::ekiden-var B=a=b c\n::ekiden-var C\n"
    assert parse_output(out) == {"A": "2", "B": "a=b c"}
    assert parse_output(var_line("K", "v w").encode()) == {"K": "v w"}
    with pytest.raises(ValueError, match="newline"):
        var_line("K", "a\nb")
    assert list(references("${A}-$${B}-${bad name}-${C}")) == ["A", "bad name", "C"]
    assert substitute("--day=${D} $${D} ${D}", {"D": "$(x); y"}) == "--day=$(x); y ${D} $(x); y"
    with pytest.raises(MissingVariableError) as missing:
        substitute("${GONE}", {})
    assert str(missing.value) == "variable ${GONE} has no value in this run"


def test_the_language_guide_examples_are_valid() -> None:
    text = (REPO / "docs" / "language.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    # Blocks that define whole jobnets; the others are fragments of a jobnet 'n' (units shown alone).
    whole = [b for b in blocks if re.search(r"^\[jobnet\.[^]]+\]$", b, re.M)]
    assert len(whole) == 2
    for block in whole:
        data = tomllib.loads(block)
        parse_definitions(data)
        assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(data)) == []


def test_every_example_is_valid_alone_and_with_the_others() -> None:
    files = sorted((REPO / "examples").glob("*.toml"))
    names: list[str] = []
    for file in files:
        names += sorted(load_definitions([str(file)]).jobnets)
    assert len(names) == len(set(names))
    assert sorted(load_definitions([str(REPO / "examples")]).jobnets) == sorted(names)
    kinds = {str(j.unit.kind) for net in load_definitions([str(REPO / "examples")]).jobnets.values() for j in net.jobs}
    assert kinds == {"job", "branch", "loop", "jobnet", "wait", "info", "end", "filewatch"}
