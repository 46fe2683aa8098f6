"""Every example in examples/ runs to success on the real stack (relay, workers, standard agent)."""

from pathlib import Path

import pytest

from ekiden.client import ApiClient
from ekiden.deffiles import load_definitions
from ekiden.up import Stack, StackPlan
from tests.engine.helpers import wait_for_run

REPO = Path(__file__).resolve().parents[2]
#: The jobnet each example file is run by (the others in a file are its nested jobnets).
MAIN = {
    "hello": "hello",
    "branch": "branch",
    "delay": "delay",
    "end": "end",
    "filewatch": "filewatch",
    "instances": "instances",
    "judgment": "judgment",
    "loop": "loop",
    "nested": "nested",
    "retry": "retry",
    "variables": "variables",
    "wait-info": "wait-info",
}


def test_every_example_file_has_a_main_jobnet() -> None:
    assert sorted(p.stem for p in (REPO / "examples").glob("*.toml")) == sorted(MAIN)


async def test_every_example_runs_to_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # workers import the examples' call targets from the repository
    defs = load_definitions([str(REPO / "examples")])
    stack = Stack(tmp_path / "site")
    try:
        await stack.start(StackPlan.for_definitions(defs))
        client = await ApiClient.connect(stack.endpoint, timeout_s=20)
        try:
            await client.call("apply", definitions=defs.to_dict())
            ends = {}
            for example, jobnet in sorted(MAIN.items()):
                run = (await client.call("run", jobnet=jobnet))["run"]
                ends[example] = (await wait_for_run(client, run, timeout_s=60))["state"]
        finally:
            await client.close()
    finally:
        await stack.stop()
    assert ends == dict.fromkeys(MAIN, "succeeded")
