"""The JSON Schema agrees with the validator on calendars and schedules; the scheduling guide's examples hold."""

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from schemas import calendars, schedules
from schemas.definitions import DefinitionError, parse_definitions, parse_toml
from schemas.definitions_schema import DEFINITIONS_SCHEMA, schema_path
from tests.schemas.test_jsonschema import _validator

#: The guide to calendars and schedules, whose examples must stay valid.
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "scheduling.md"
_NET = {"n": {"job": [{"id": "a", "cmd": ["true"], "agent": "h"}]}}


def _doc(schedule: dict[str, Any] | None = None, **cals: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"jobnet": _NET, "calendar": cals}
    if schedule is not None:
        doc["schedule"] = {"s": {"jobnet": "n", **schedule}}
    return doc


ACCEPTED: list[Any] = [
    _doc(c={}),
    _doc(c={"dates": ["2028-02-29"], "description": ""}),
    _doc(c={"include": [{}], "exclude": [{"dates": []}]}),
    _doc(c={"include": [{"weekdays": "mon", "nth": -1, "days": [1, -1], "months": 12}]}),
    _doc(c={"include": [{"business_days": [1, -1], "of": "d", "from": "2027-01-01", "to": "2027-12-31"}]}, d={}),
    _doc(c={"exclude": [{"calendar": "d"}]}, d={"include": [{"weekdays": ["sat", "sun"]}]}),
    _doc({"at": "09:00"}),
    _doc({"at": ["00:00", "23:59:59"], "timezone": "Asia/Tokyo", "params": {"k": "v"}, "description": ""}),
    _doc({"cron": "*/5 * * * * *", "catch_up": "all", "enabled": False}),
    _doc({"at": ["09:00"], "calendar": "c", "on": {"days": [25]}, "shift": "before", "max_shift_days": 31}, c={}),
    _doc({"at": ["09:00"], "calendar": "c", "shift": "skip", "catch_up": "skip"}, c={}),
    _doc({"at": ["09:00"], "shift": "skip"}),
]

REFUSED: list[Any] = [
    _doc(c={"date": []}),
    _doc(c={"dates": "2027-01-01"}),
    _doc(c={"dates": ["2027-1-1"]}),
    _doc(c={"include": {}}),
    _doc(c={"include": [{"weekdays": ["Mon"]}]}),
    _doc(c={"include": [{"weekdays": []}]}),
    _doc(c={"include": [{"nth": 1}]}),
    _doc(c={"include": [{"weekdays": "mon", "nth": 0}]}),
    _doc(c={"include": [{"weekdays": "mon", "nth": 6}]}),
    _doc(c={"include": [{"days": [0]}]}),
    _doc(c={"include": [{"days": []}]}),
    _doc(c={"include": [{"days": [True]}]}),
    _doc(c={"include": [{"months": [13]}]}),
    _doc(c={"include": [{"of": "c"}]}),
    _doc(c={"include": [{"calendar": "a b"}]}),
    _doc(c={"include": [{"from": 20270101}]}),
    _doc(c={"description": None}),
    {"calendar": {"bad name": {}}},
    {"calendar": []},
    _doc({}),
    _doc({"at": "09:00", "cron": "* * * * *"}),
    _doc({"at": []}),
    _doc({"at": ["9:00"]}),
    _doc({"at": ["09:00:60"]}),
    _doc({"at": ["09:00", "09:00"]}),
    _doc({"cron": 5}),
    _doc({"at": "09:00", "shift": "before"}),
    _doc({"at": "09:00", "shift": "never"}),
    _doc({"at": "09:00", "catch_up": "none"}),
    _doc({"at": "09:00", "max_shift_days": 32}),
    _doc({"at": "09:00", "max_shift_days": 1.5}),
    _doc({"at": "09:00", "enabled": 1}),
    _doc({"at": "09:00", "params": {"k": 1}}),
    _doc({"at": "09:00", "timezone": ""}),
    _doc({"at": "09:00", "jobnet": "a.b"}),
    _doc({"at": "09:00", "on": {"day": 1}}),
    {"schedule": {"s": {"at": "09:00"}}},
]

#: Refused only by the validator: real dates, zone names, cron syntax, rule ranges, references, cycles, files.
VALIDATOR_ONLY: list[Any] = [
    _doc(c={"dates": ["2027-02-29"]}),
    _doc(c={"include": [{"from": "2027-02-01", "to": "2027-01-01"}]}),
    _doc(c={"include": [{"calendar": "ghost"}]}),
    _doc(c={"include": [{"calendar": "d"}]}, d={"include": [{"calendar": "c"}]}),
    _doc(c={"dates_file": "holidays.txt"}),
    _doc({"at": "09:00", "timezone": "Mars/Olympus"}),
    _doc({"cron": "61 * * * *"}),
    _doc({"at": "09:00", "calendar": "ghost"}),
    _doc({"at": "09:00", "jobnet": "ghost"}),
]


def _id(doc: Any) -> str:
    return json.dumps(doc, default=str)[:100]


def test_schema_names_the_validators_keys_and_choices() -> None:
    defs = json.loads(schema_path(DEFINITIONS_SCHEMA).read_text(encoding="utf-8"))["$defs"]
    assert set(defs["calendar"]["properties"]) == calendars.CALENDAR_KEYS
    assert set(defs["rule"]["properties"]) == calendars.RULE_KEYS
    assert set(defs["schedule"]["properties"]) == schedules.SCHEDULE_KEYS
    assert defs["weekday"]["enum"] == list(calendars.WEEKDAY_NAMES)
    assert defs["schedule"]["properties"]["shift"]["enum"] == [str(s) for s in schedules.Shift]
    assert defs["schedule"]["properties"]["catch_up"]["enum"] == [str(c) for c in schedules.CatchUp]
    assert defs["schedule"]["properties"]["max_shift_days"]["maximum"] == schedules.MAX_SHIFT_DAYS


@pytest.mark.parametrize("doc", ACCEPTED, ids=_id)
def test_accepted_documents_validate(doc: Any) -> None:
    defs = parse_definitions(doc)
    assert [e.message for e in _validator(DEFINITIONS_SCHEMA).iter_errors(doc)] == []
    exported = json.loads(json.dumps(defs.to_dict()))
    assert [e.message for e in _validator(DEFINITIONS_SCHEMA).iter_errors(exported)] == []
    assert parse_definitions(exported) == defs


@pytest.mark.parametrize("doc", REFUSED, ids=_id)
def test_refused_documents_fail_the_schema(doc: Any) -> None:
    with pytest.raises(DefinitionError):
        parse_definitions(doc)
    assert not _validator(DEFINITIONS_SCHEMA).is_valid(doc)


@pytest.mark.parametrize("doc", VALIDATOR_ONLY, ids=_id)
def test_rules_the_schema_cannot_state_are_left_to_the_validator(doc: Any) -> None:
    with pytest.raises(DefinitionError):
        parse_definitions(doc)
    assert _validator(DEFINITIONS_SCHEMA).is_valid(doc)


def test_examples_in_the_scheduling_guide_are_valid() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    examples = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "..." not in b]
    assert examples
    for block in examples:
        assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(tomllib.loads(block))) == []
        defs = parse_toml(block)
        assert list(_validator(DEFINITIONS_SCHEMA).iter_errors(defs.to_dict())) == []
