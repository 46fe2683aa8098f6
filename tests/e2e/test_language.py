"""The jobnet language through the real processes: variables set by a worker's job cross the relay to the
next job, into a nested jobnet on a standard agent, and back out."""

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan
from tests.engine.helpers import wait_for_run

#: A value that would do harm if anything spliced it into shell text.
ROWS = "42 rows; touch /tmp/ekiden-pwned-$(id -u)"
_WRITE = "import os, sys; open(sys.argv[1], 'w').write(sys.argv[2] + '|' + os.environ.get(sys.argv[3], '-'))"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, ApiClient]]:
    """The embedded stack: relay 'main', two workers of destination 'cloud', standard agent 'local'."""
    stack = Stack(tmp_path / "site", secure=False)
    try:
        await stack.start(StackPlan(relays=("main",), destinations=("cloud",), agents=("local",)))
        client = await ApiClient.connect(stack.endpoint, timeout_s=20)
        try:
            yield stack, client
        finally:
            await client.close()
    finally:
        await stack.stop()


def _defs(out: Path) -> dict[str, Any]:
    py = sys.executable
    return {
        "destination": {"cloud": {"relay": "main"}},
        "jobnet": {
            "inner": {
                "params": {"IN": ""},
                "job": [
                    {
                        "id": "double",
                        "agent": "local",
                        "cmd": [py, "-c", "import sys; print('::ekiden-var OUT=' + sys.argv[1] * 2)", "${IN}"],
                        "sets": ["OUT"],
                    }
                ],
            },
            "handoff": {
                "params": {"DAY": "today"},
                "job": [
                    {
                        "id": "produce",
                        "dest": "cloud",
                        "cmd": [py, "-m", "agents.varcli", "set", "ROWS", ROWS],
                        "sets": ["ROWS"],
                    },
                    {
                        "id": "consume",
                        "dest": "cloud",
                        "after": ["produce"],
                        "cmd": [py, "-c", _WRITE, str(out / "consume"), "${ROWS}", "EKIDEN_VAR_ROWS"],
                    },
                    {
                        "id": "sub",
                        "type": "jobnet",
                        "jobnet": "inner",
                        "after": ["consume"],
                        "params": {"IN": "${DAY}:"},
                        "sets": ["OUT"],
                    },
                    {
                        "id": "final",
                        "dest": "cloud",
                        "after": ["sub"],
                        "cmd": [py, "-c", _WRITE, str(out / "final"), "${OUT}", "EKIDEN_VAR_OUT"],
                    },
                ],
            },
        },
    }


async def test_variables_cross_the_relay_and_a_nested_jobnet(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    _, client = stack
    await client.call("apply", definitions=_defs(tmp_path))
    run = (await client.call("run", jobnet="handoff", params={"DAY": "mon"}))["run"]
    doc = await wait_for_run(client, run, timeout_s=90)
    assert doc["state"] == "succeeded", doc
    assert (tmp_path / "consume").read_text() == f"{ROWS}|{ROWS}"
    assert (tmp_path / "final").read_text() == "mon:mon:|mon:mon:"
    assert doc["variables"] == {"DAY": "mon", "ROWS": ROWS, "OUT": "mon:mon:"}
    jobs = {j["id"]: j for j in doc["jobs"]}
    assert jobs["produce"]["target"] == "dest:cloud"
    assert jobs["produce"]["variables"] == {"ROWS": ROWS}
    [child] = doc["children"]
    assert child["job"] == "sub"
    inner = await client.call("status", run=child["run"])
    assert inner["state"] == "succeeded"
    assert inner["parent"] == {"run": run, "job": "sub"}
    assert inner["jobs"][0]["target"] == "agent:local"
    assert inner["variables"] == {"IN": "mon:", "OUT": "mon:mon:"}
