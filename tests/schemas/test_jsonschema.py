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
]

REFUSED: list[Any] = [
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
