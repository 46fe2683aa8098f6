"""Settings from the command line and EKIDEN_* variables; the process exits 0 on SIGTERM even with no NATS."""

import asyncio
from pathlib import Path

import pytest

from agents.settings import load
from tests.agents.helpers import AgentProcess


def test_environment_gives_defaults_and_the_command_line_wins() -> None:
    env = {"EKIDEN_AGENT_NAME": "host-1", "EKIDEN_CONCURRENCY": "3", "EKIDEN_GRACE_S": "7.5", "EKIDEN_LOG_JSON": "1"}
    s = load([], env)
    assert (s.name, s.dest, s.concurrency, s.grace_s, s.log_json, s.is_worker) == ("host-1", None, 3, 7.5, True, False)
    s = load(["--concurrency", "9", "--dest", "pool", "--idle-exit", "30"], env)
    assert (s.concurrency, s.dest, s.idle_exit_s, s.is_worker) == (9, "pool", 30.0, True)


def test_a_worker_without_a_name_gets_one() -> None:
    s = load(["--dest", "pool", "--nats", "nats://n:4222"], {})
    assert s.name and s.bus.url == "nats://n:4222"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {}),
        (["--name", "bad.name"], {}),
        (["--name", "a", "--concurrency", "0"], {}),
        (["--name", "a"], {"EKIDEN_GRACE_S": "soon"}),
        (["--dest", "d", "--heartbeat-s", "0"], {}),
        (["--dest", "d", "--idle-exit", "nan"], {}),
    ],
)
def test_bad_settings_exit_2(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        load(argv, env)
    assert stopped.value.code == 2


async def test_sigterm_while_nats_is_unreachable_exits_0(tmp_path: Path) -> None:
    agent = AgentProcess(["--name", "lonely", "--nats", "nats://127.0.0.1:1"], tmp_path / "agent.log")
    try:
        for _ in range(400):  # the agent logs before it tries, with its signal handlers in place
            if "connecting to NATS" in agent.log():
                break
            await asyncio.sleep(0.05)
        agent.terminate()
        assert await agent.wait_exit() == 0, agent.log()
    finally:
        await agent.stop()
