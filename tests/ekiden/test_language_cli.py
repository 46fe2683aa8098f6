"""``ekiden export``, ``import``, ``diff``, ``ls versions``, ``run --dry-run`` and the flow in ``status``, against
real managers."""

from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from ekiden.cli import COMMANDS, build_parser
from tests.engine.helpers import running_manager, scripted_agent, wait_for_run


def _net(agent: str, cmd: list[str]) -> dict[str, Any]:
    return {
        "jobnet": {
            "v": {
                "params": {"DAY": "today"},
                "job": [
                    {"id": "a", "cmd": cmd, "agent": agent, "sets": ["N"], "judge": {"warning_from": 1}},
                    {"id": "wait", "type": "wait", "for_s": 0, "after": ["a"]},
                ],
            }
        }
    }


async def _cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return await COMMANDS[args.command](args)


async def test_versions_diff_export_import_and_dry_run_from_the_command_line(
    tmp_path: Path, sid: str, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ["--nats", nats_url, "--server-id", sid]
    exported = tmp_path / "defs.json"
    async with running_manager(tmp_path / "one", sid, nats_url) as api:
        await api.call("apply", definitions=_net("h", ["one", "${DAY}"]))
        await api.call("apply", definitions=_net("h", ["two", "${DAY}"]))
        assert await _cli("ls", "versions", "v", *conn) == 0
        assert await _cli("diff", "v", "1", "2", *conn) == 0
        assert await _cli("run", "v", "--dry-run", "-p", "DAY=monday", *conn) == 0
        assert await _cli("export", "--out", str(exported), *conn) == 0
        out = capsys.readouterr().out
        assert await api.call("runs") == []
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "APPLIED", "UNITS", "DIGEST"]
    assert [line.split()[0] for line in lines[1:3]] == ["1", "2"]
    assert [line.replace(" ", "") for line in lines if line.startswith(("-  ", "+  "))] == ['-"one",', '+"two",']
    assert "--- v v1" in out and "+++ v v2" in out
    assert "dry run of v v2 with DAY=monday: nothing runs" in out
    assert "run two monday" in out
    assert "wait 0s" in out
    doc = orjson.loads(exported.read_bytes())
    assert doc["format"] == "ekiden-definitions"
    assert doc["definitions"]["jobnet"]["v"]["job"][0]["cmd"] == ["two", "${DAY}"]

    second = f"{sid}b"
    async with running_manager(tmp_path / "two", second, nats_url):
        conn2 = ["--nats", nats_url, "--server-id", second]
        assert await _cli("import", str(exported), *conn2) == 0
        again = tmp_path / "again.json"
        assert await _cli("export", "--out", str(again), *conn2) == 0
    assert again.read_bytes() == exported.read_bytes()
    assert "imported" in capsys.readouterr().out


async def test_status_shows_variables_units_and_events(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_net(name, ["x"]))
        run = (await api.call("run", jobnet="v"))["run"]
        await agent.wait_for(1)
        await agent.run_job("a", exit_code=2, stdout=b"::ekiden-var N=7\n")
        await wait_for_run(api, run)
        assert await _cli("status", run, "--nats", nats_url, "--server-id", sid) == 0
    out = capsys.readouterr().out
    assert "variables: DAY=today N=7" in out
    assert "wait (wait)" in out
    assert "a set N=7" in out
    assert "warning" in out
