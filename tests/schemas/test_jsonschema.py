"""The JSON Schema files agree with the validator: what parse_definitions accepts validates, and what it refuses
for its shape fails, in the same documents."""

import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource

from schemas import definitions
from schemas.definitions import (
    ARGS_MAX_NUMBER,
    ARGS_MIN_NUMBER,
    CALL_PATTERN,
    MAX_TIMEOUT_S,
    DefinitionError,
    RestartAttribute,
    parse_definitions,
    parse_toml,
)
from schemas.definitions_schema import (
    DEFINITIONS_SCHEMA,
    EXPORT_FORMAT,
    EXPORT_SCHEMA,
    EXPORT_VERSION,
    export_document,
    parse_export,
    schema_path,
)
from schemas.names import NAME_PATTERN
from schemas.units import (
    CASE_KEYS,
    CONDITION_KEYS,
    DELAY_KEYS,
    END_STATES,
    INFO_ITEMS,
    JUDGE_KEYS,
    RETRY_KEYS,
    UNIT_KEYS,
    UnitKind,
)
from schemas.variables import VAR_NAME_PATTERN
from tests.schemas.test_definitions import RICH_TOML

#: The operators' guide to the format, whose examples must stay valid.
DOCS = Path(__file__).resolve().parents[2] / "docs" / "definitions.md"


def _load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(schema_path(name).read_text(encoding="utf-8"))
    return doc


@cache
def _validator(name: str) -> Any:
    """A validator for one schema, with both schemas registered so the export's $ref resolves offline."""
    schemas = [_load(DEFINITIONS_SCHEMA), _load(EXPORT_SCHEMA)]
    registry: Registry[Any] = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas)
    return Draft202012Validator(_load(name), registry=registry)


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"id": "a", "cmd": ["true"], "agent": "h"}
    job.update(fields)
    return {k: v for k, v in job.items() if v is not ...}


def _net(*jobs: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"jobnet": {"n": {"job": list(jobs), **fields}}}


def _unit(kind: str, unit_id: str = "u", **fields: Any) -> dict[str, Any]:
    return {"id": unit_id, "type": kind, **fields}


_BODY = {"body": {"params": {"I": "0", "P": "x"}, "job": [_job(id="s", sets=["DONE", "OUT"])]}}
_CASES = [{"job": "a", "exit": [0, 3], "to": ["b"]}, {"var": "V", "in": ["x"], "to": "c"}]

#: Every kind of unit and every flow key, valid.
UNIT_DOCS: list[Any] = [
    _net(
        _job(
            judge={"warning_from": 1, "abnormal_from": 10},
            retry={"max": 3, "delay_s": 1, "backoff": 2, "max_delay_s": 9},
        ),
        _job(id="b", after="a", recovery=True, continue_on_failure=True, delay={"after_s": 5, "kill": True}),
        _job(id="c", type="job", sets=["OUT"], delay={"at": "23:30", "timezone": "Asia/Tokyo"}),
        params={"DAY": "today", "_x": ""},
        timeout_s=60,
        delay={"at": "06:00:30"},
        instances="queue",
    ),
    _net(
        _job(sets=["V"]),
        _unit("branch", "br", after=["a"], cases=_CASES, **{"else": ["d"]}),
        _job(id="b", after="br"),
        _job(id="c", after="br", cmd=["echo", "${V}", "$${x}"]),
        _job(id="d", after="br"),
        _unit("branch", "b2", after="a", cases=[{"job": "a", "status": ["warning", "failed"], "to": "e"}]),
        _job(id="e", after="b2"),
    ),
    {
        "jobnet": {
            **_BODY,
            "n": {
                "params": {"X": "1"},
                "job": [
                    _unit("loop", jobnet="body", count=3, counter="I", params={"P": "${X}"}),
                    _unit("loop", "v", jobnet="body", until={"var": "DONE", "range": [1, 2]}, max=9, sets=["DONE"]),
                    _unit("jobnet", "w", jobnet="body", params={"P": "${EKIDEN_RUN_ID}"}, sets=["OUT"], after=["u"]),
                    _job(id="z", after=["w"], cmd=["echo", "${OUT}"]),
                ],
            },
        }
    },
    _net(
        _unit("wait", "w1", for_s=0),
        _unit("wait", "w2", until="06:00", timezone="Europe/Paris"),
        _unit("info", "i", get={"T": "date", "B": "operating_day"}, calendar="c", after=["w1"]),
        _unit("end", "e", status="failed", message="stop", after=["i"], recovery=True),
    )
    | {"calendar": {"c": {"include": [{"weekdays": "mon"}]}}},
    _net(
        _unit("filewatch", "f", agent="h", path="/in/x.csv", timeout_s=60, stable_s=5, poll_s=0.5, retry={"max": 1}),
        _unit("filewatch", "g", dest="cloud", path="/in/y", timeout_s=1, delay={"after_s": 9}),
    ),
]
#: Shapes of units that both the schema and the validator refuse.
UNIT_REFUSED: list[Any] = [
    _net(_job(type="other")),
    _net(_job(judge={"warning_from": 0})),
    _net(_job(judge={"abnormal_from": 0})),
    _net(_job(judge=3)),
    _net(_job(retry={"delay_s": 1})),
    _net(_job(retry={"max": 0})),
    _net(_job(retry={"max": 1, "backoff": 0.5})),
    _net(_job(retry={"max": 1, "when": "x"})),
    _net(_job(delay={"after_s": 1, "at": "01:00"})),
    _net(_job(delay={})),
    _net(_job(delay={"at": "25:00"})),
    _net(_job(delay={"after_s": 0})),
    _net(_job(recovery=True)),
    _net(_job(recovery="yes", after=[])),
    _net(_job(continue_on_failure=1)),
    _net(_job(sets=["1x"])),
    _net(_job(sets=["EKIDEN_X"])),
    _net(_job(sets=["A", "A"])),
    _net(_job(), params={"A B": "x"}),
    _net(_job(), params={"EKIDEN_RUN_ID": "x"}),
    _net(_job(), params={"A": 1}),
    _net(_job(), timeout_s=0),
    _net(_job(), instances="never"),
    _net(_unit("branch")),
    _net(_unit("branch", cases=[])),
    _net(_unit("branch", cases=[{"to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "var": "V", "equals": "x", "to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "exit": 0, "status": "failed", "to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "equals": "x", "to": ["a"]}])),
    _net(_unit("branch", cases=[{"var": "V", "to": ["a"]}])),
    _net(_unit("branch", cases=[{"var": "V", "equals": "x", "in": ["y"], "to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "status": "done", "to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "exit": [1], "to": ["a"]}])),
    _net(_unit("branch", cases=[{"var": "V", "range": [1, "2"], "to": ["a"]}])),
    _net(_unit("branch", cases=[{"job": "a", "exit": 0, "to": []}])),
    _net(_unit("branch", cases=[{"job": "a", "exit": 0}])),
    _net(_unit("branch", cases=[{"job": "a", "exit": 0, "to": "a"}], agent="h")),
    _net(_unit("loop", jobnet="n")),
    _net(_unit("loop", jobnet="m", max=3)),
    _net(_unit("loop", jobnet="m", until={"var": "V", "equals": "x"})),
    _net(_unit("loop", jobnet="m", count=2, max=3)),
    _net(_unit("loop", jobnet="m", count=0)),
    _net(_unit("loop", jobnet="m", until={"job": "a", "exit": 0}, max=2)),
    _net(_unit("loop", jobnet="m", count=1, counter="EKIDEN_I")),
    _net(_unit("loop", count=1)),
    _net(_unit("jobnet")),
    _net(_unit("jobnet", jobnet="m", params={"1": "x"})),
    _net(_unit("jobnet", jobnet="m", cmd=["x"])),
    _net(_unit("wait")),
    _net(_unit("wait", for_s=1, until="01:00")),
    _net(_unit("wait", for_s=-1)),
    _net(_unit("info")),
    _net(_unit("info", get={})),
    _net(_unit("info", get={"X": "weather"})),
    _net(_unit("end")),
    _net(_unit("end", status="stopped")),
    _net(_unit("end", status="failed", delay={"after_s": 1})),
    _net(_unit("filewatch", agent="h", path="/x")),
    _net(_unit("filewatch", path="/x", timeout_s=1)),
    _net(_unit("filewatch", agent="h", dest="d", path="/x", timeout_s=1)),
    _net(_unit("filewatch", agent="h", path="", timeout_s=1)),
    _net(_unit("filewatch", agent="h", path="/x", timeout_s=1, broadcast=True)),
]
#: Refused by the rules across units or jobnets, which the schema cannot state.
UNIT_CROSS: list[Any] = [
    _net(_job(cmd=["sh", "-c", "echo ${D}"]), params={"D": "x"}),
    _net(_job(cmd=["echo", "${NOPE}"])),
    _net(_job(cmd=["echo", "${OUT}"]), _job(id="b", sets=["OUT"])),
    _net(_job(env={"E": "${bad name}"})),
    _net(_job(cmd=..., call="m:f", args={"x": ["${NOPE}"]})),
    _net(_job(), _unit("branch", "br", after="a", cases=[{"job": "a", "exit": 0, "to": ["ghost"]}])),
    _net(_job(), _unit("branch", "br", after="a", cases=[{"job": "a", "exit": 0, "to": ["a"]}])),
    _net(
        _job(),
        _unit("branch", "br", after="a", cases=[{"job": "zz", "exit": 0, "to": ["b"]}]),
        _job(id="b", after="br"),
    ),
    _net(
        _job(),
        _unit("branch", "br", after="a", cases=[{"job": "a", "exit": 0, "to": ["b"]}]),
        _job(id="b", after="br"),
        _job(id="c", after="br"),
    ),
    _net(
        _job(),
        _unit("branch", "br", after="a", cases=[{"var": "V", "equals": "x", "to": ["b"]}]),
        _job(id="b", after="br"),
    ),
    _net(_unit("end", "e", status="failed"), _job(after="e")),
    _net(_unit("jobnet", jobnet="n")),
    _net(_unit("jobnet", jobnet="ghost")),
    {"jobnet": {"n": {"job": [_unit("jobnet", jobnet="m")]}, "m": {"job": [_unit("loop", jobnet="n", count=2)]}}},
    {"jobnet": {**_BODY, "n": {"job": [_unit("jobnet", jobnet="body", params={"Q": "x"})]}}},
    {"jobnet": {**_BODY, "n": {"job": [_unit("jobnet", jobnet="body", sets=["NEVER"])]}}},
    _net(_unit("info", get={"B": "operating_day"})),
    _net(_unit("info", get={"B": "operating_day"}, calendar="ghost")),
    _net(_job(judge={"warning_from": 5, "abnormal_from": 5})),
    _net(_unit("branch", cases=[{"var": "V", "range": [2, 1], "to": ["a"]}])),
    _net(_job(delay={"after_s": 1, "timezone": "Mars/Olympus"})),
]


ACCEPTED: list[Any] = [
    {},
    {"jobnet": {}, "destination": {}},
    _net(_job()),
    _net(_job(shell=False)),
    _net(_job(cmd="echo hi | wc -c", shell=True)),
    _net(_job(cmd=..., call="pkg.mod:run")),
    _net(_job(cmd=..., call="m:f", shell=False, args={})),
    _net(_job(args={})),
    _net(_job(cmd=..., call="m:f", args={"n": None, "l": [1, 0.5, "s", True, {"k": []}], "big": 2**64 - 1})),
    _net(_job(agent=..., dest="cloud-lb", restart=False)),
    _net(_job(), _job(id="b", after="a"), _job(id="c", after=["a", "b"])),
    _net(_job(env={"PATH": "/bin", "EMPTY": ""}, cwd="/tmp", timeout_s=MAX_TIMEOUT_S, description="d")),
    _net(_job(timeout_s=0.001), description="", tenant="t-1"),
    {"destination": {"d": {}, "e": {"relay": "gw", "restart": "PURGE", "tenant": "t", "description": ""}}},
    {"jobnet": {"X" * 64: {"job": [_job(id="0" * 64)]}}},
    _net(_job(agent=..., group="etl"), _job(id="b", agent=..., group="etl", broadcast=True)),
    {"agent": {"h": {"restart": "STOP", "tenant": "t"}}, "group": {"etl": {"agents": ["h", "i"]}}},
    _net(_job(user="batch"), _job(id="b", cmd="id -u", shell=True, user="svc.etl-1")),
    *UNIT_DOCS,
]

REFUSED: list[Any] = [
    *UNIT_REFUSED,
    [],
    _net(_job(broadcast=True)),
    _net(_job(group="etl")),
    {"group": {"etl": {"agents": []}}},
    {"group": {"etl": {"agents": ["a", "a"]}}},
    {"agent": {"h": {"restart": "NEVER"}}},
    {"jobnets": {}},
    {"jobnet": []},
    _net(_job(), owner="ops"),
    _net(_job(command="x")),
    {"destination": {"d": {"size": 1}}},
    _net(_job(cmd=...)),
    _net(_job(call="m:f")),
    _net(_job(cmd="echo hi")),
    _net(_job(cmd="echo hi", shell="yes")),
    _net(_job(cmd=["echo"], shell=True)),
    _net(_job(cmd=..., call="m:f", shell=True)),
    _net(_job(cmd=" ", shell=True)),
    _net(_job(cmd=[])),
    _net(_job(cmd=[""])),
    _net(_job(cmd=["ls", 1])),
    _net(_job(cmd=..., call="nocolon")),
    _net(_job(cmd=..., call="m:f\n")),
    _net(_job(cmd=..., call="m:a.b")),
    _net(_job(args={"x": 1})),
    _net(_job(cmd=..., call="m:f", args=[])),
    _net(_job(cmd=..., call="m:f", args={"x": 2**64})),
    _net(_job(cmd=..., call="m:f", args={"x": [ARGS_MIN_NUMBER - 1]})),
    _net(_job(timeout_s=0)),
    _net(_job(timeout_s=-1)),
    _net(_job(timeout_s="10")),
    _net(_job(timeout_s=True)),
    _net(_job(timeout_s=MAX_TIMEOUT_S + 0.5)),
    _net(_job(env={"A": 1})),
    _net(_job(env={"A=B": "1"})),
    _net(_job(env={"": "1"})),
    _net(_job(env={"A": "a\0b"})),
    _net(_job(agent=...)),
    _net(_job(dest="d")),
    _net(_job(agent=None, dest="d")),
    _net(_job(id="bad name")),
    _net(_job(id=...)),
    _net(_job(agent="a.b")),
    _net(_job(agent=..., dest="d/e")),
    _net(_job(after=["a", "a"])),
    _net(_job(after=[1])),
    _net(_job(restart="no")),
    _net(_job(cwd=1)),
    _net(_job(), tenant="-t"),
    _net(_job(), description=None),
    {"jobnet": {"bad name": {"job": [_job()]}}},
    {"jobnet": {"nightly\n": {"job": [_job()]}}},
    {"jobnet": {"x" * 65: {"job": [_job()]}}},
    {"jobnet": {"n": {}}},
    {"jobnet": {"n": {"job": []}}},
    {"jobnet": {"n": "x"}},
    {"destination": {"x y": {}}},
    {"destination": {"d": {"relay": "r r"}}},
    {"destination": {"d": {"restart": "restart"}}},
    {"destination": {"d": {"tenant": 1}}},
    _net(_job(user="")),
    _net(_job(user="-rf")),
    _net(_job(user="a b")),
    _net(_job(user=0)),
    _net(_job(user="x" * 33)),
    _net(_job(cmd=..., call="m:f", user="batch")),
]

#: Refused by the validator's rules across jobs, which JSON Schema cannot state; the schema lets them pass.
CROSS_JOB: list[Any] = [
    _net(_job(), _job()),
    _net(_job(after="ghost")),
    _net(_job(after="a")),
    _net(_job(id="a", after="b"), _job(id="b", after="a")),
    *UNIT_CROSS,
]


def _doc_id(doc: Any) -> str:
    return json.dumps(doc, default=str)[:90]


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in (DEFINITIONS_SCHEMA, EXPORT_SCHEMA):
        schema = _load(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_schema_states_the_validators_constants() -> None:
    schema = _load(DEFINITIONS_SCHEMA)
    defs = schema["$defs"]
    assert defs["name"]["pattern"] == NAME_PATTERN
    assert defs["callTarget"]["pattern"] == CALL_PATTERN
    assert (defs["data"]["minimum"], defs["data"]["maximum"]) == (ARGS_MIN_NUMBER, ARGS_MAX_NUMBER)
    assert defs["job"]["properties"]["timeout_s"]["maximum"] == MAX_TIMEOUT_S
    assert defs["destination"]["properties"]["restart"]["enum"] == [str(r) for r in RestartAttribute]
    # The key sets are private to the validator; reading them here keeps schema and code from drifting apart.
    assert set(schema["properties"]) == definitions._TOP_KEYS
    assert set(defs["jobnet"]["properties"]) == definitions._JOBNET_KEYS
    assert set(defs["job"]["properties"]) == definitions._JOB_KEYS
    assert set(defs["destination"]["properties"]) == definitions._DEST_KEYS
    for kind, keys in UNIT_KEYS.items():
        assert set(defs[f"{kind}Unit"]["properties"]) == keys, kind
    assert defs["unit"]["properties"]["type"]["enum"] == [str(k) for k in UnitKind]
    assert set(defs["judge"]["properties"]) == JUDGE_KEYS
    assert set(defs["retry"]["properties"]) == RETRY_KEYS
    assert set(defs["delay"]["properties"]) == DELAY_KEYS
    assert set(defs["condition"]["properties"]) == CONDITION_KEYS
    assert set(defs["case"]["properties"]) == CASE_KEYS
    assert defs["endState"]["enum"] == list(END_STATES)
    assert defs["infoUnit"]["properties"]["get"]["additionalProperties"]["enum"] == list(INFO_ITEMS)
    assert defs["varName"]["pattern"] == VAR_NAME_PATTERN
    export = _load(EXPORT_SCHEMA)["properties"]
    assert (export["format"]["const"], export["version"]["const"]) == (EXPORT_FORMAT, EXPORT_VERSION)


@pytest.mark.parametrize("doc", ACCEPTED, ids=_doc_id)
def test_accepted_documents_validate(doc: Any) -> None:
    parse_definitions(doc)
    errors = [e.message for e in _validator(DEFINITIONS_SCHEMA).iter_errors(doc)]
    assert errors == []


def test_exported_rich_definition_validates() -> None:
    exported = parse_toml(RICH_TOML).to_dict()
    assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(exported)) == []
    assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(json.loads(json.dumps(exported)))) == []


@pytest.mark.parametrize("doc", REFUSED, ids=_doc_id)
def test_refused_documents_fail_the_schema(doc: Any) -> None:
    with pytest.raises(DefinitionError):
        parse_definitions(doc)
    assert not _validator(DEFINITIONS_SCHEMA).is_valid(doc)


@pytest.mark.parametrize("doc", CROSS_JOB, ids=_doc_id)
def test_cross_job_rules_are_left_to_the_validator(doc: Any) -> None:
    with pytest.raises(DefinitionError):
        parse_definitions(doc)
    assert _validator(DEFINITIONS_SCHEMA).is_valid(doc)


def test_export_document_validates_and_reads_back() -> None:
    defs = parse_toml(RICH_TOML)
    doc = json.loads(json.dumps(export_document(defs)))
    assert (doc["format"], doc["version"]) == ("ekiden-definitions", 1)
    assert list(_validator(EXPORT_SCHEMA).iter_errors(doc)) == []
    assert parse_export(doc) == defs


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"format": "other"}, "format"),
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"extra": 1}, "extra"),
        ({"definitions": ...}, "definitions"),
    ],
)
def test_bad_export_envelope(change: dict[str, Any], path: str) -> None:
    doc = {**export_document(parse_toml(RICH_TOML)), **change}
    doc = {k: v for k, v in doc.items() if v is not ...}
    assert not _validator(EXPORT_SCHEMA).is_valid(doc)
    with pytest.raises(DefinitionError) as info:
        parse_export(doc)
    assert [e.path for e in info.value.errors] == [path]


def test_export_with_bad_definitions() -> None:
    doc = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "definitions": _net(_job(agent=...))}
    assert not _validator(EXPORT_SCHEMA).is_valid(doc)
    with pytest.raises(DefinitionError) as info:
        parse_export(doc)
    assert [e.path for e in info.value.errors] == ["jobnet.n.job[0]"]
    with pytest.raises(DefinitionError) as info:
        parse_export([doc])
    assert info.value.errors[0].path == "$"


def test_schema_path_finds_the_packaged_files() -> None:
    assert schema_path("definitions") == schema_path(DEFINITIONS_SCHEMA)
    assert schema_path("export").name == EXPORT_SCHEMA
    for name in ("definitions", "export"):
        path = schema_path(name)
        assert path.parent.name == "jsonschema"
        assert path.parent.parent.name == "schemas"
    with pytest.raises(ValueError, match="no schema named"):
        schema_path("../pyproject.toml")


def test_examples_in_the_docs_are_valid() -> None:
    text = DOCS.read_text(encoding="utf-8")
    # The layout sketch ("...") is not an example; every other TOML block is.
    examples = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "..." not in b]
    assert len(examples) == 2
    for block in examples:
        assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(tomllib.loads(block))) == []
        exported = parse_toml(block).to_dict()
        assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(exported)) == []
    [export] = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    assert list(_validator(EXPORT_SCHEMA).iter_errors(export)) == []
    assert sorted(parse_export(export).jobnets) == ["sales-daily"]
