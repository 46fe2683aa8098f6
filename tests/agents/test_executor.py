"""The executor against real subprocesses: commands, shell lines, calls, output limits, timeouts and kills."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from agents.executor import Executor
from agents.output import cut_marker
from schemas.messages import JobSpec, JobStatus
from tests.agents.helpers import wait_dead


def _spec(**fields: object) -> JobSpec:
    return JobSpec(attempt_id="s:r:j:1", job="j", jobnet="n", **fields)  # type: ignore[arg-type]


@pytest.fixture
def executor() -> Executor:
    return Executor(kill_grace_s=0.5, pipe_close_s=0.5, host="testhost")


async def test_argv_job_succeeds_with_its_output(executor: Executor) -> None:
    started: list[int] = []

    async def on_started(pid: int) -> None:
        started.append(pid)

    fin = await executor.run(_spec(argv=("echo", "hello", "world")), on_started=on_started)
    assert fin.status == JobStatus.SUCCEEDED
    assert fin.exit_code == 0
    assert fin.stdout == b"hello world\n"
    assert fin.host == "testhost"
    assert fin.attempt_id == "s:r:j:1"
    assert len(started) == 1 and started[0] > 0


async def test_nonzero_exit_fails_with_its_code_and_stderr(executor: Executor) -> None:
    fin = await executor.run(
        _spec(argv=(sys.executable, "-c", "import sys; print('bad', file=sys.stderr); sys.exit(3)"))
    )
    assert fin.status == JobStatus.FAILED
    assert fin.exit_code == 3
    assert fin.stderr == b"bad\n"


async def test_shell_job_sees_its_env_and_cwd(executor: Executor, tmp_path: Path) -> None:
    fin = await executor.run(
        _spec(shell='echo "$EKIDEN_T_VAR"; pwd; exit 4', env={"EKIDEN_T_VAR": "v1"}, cwd=str(tmp_path))
    )
    assert fin.exit_code == 4
    assert fin.stdout.decode().splitlines() == ["v1", str(tmp_path)]
    assert "PATH" in os.environ  # the job got the agent's environment too, or `pwd` would not be found


async def test_missing_command_is_an_error_not_an_exception(executor: Executor) -> None:
    fin = await executor.run(_spec(argv=("/no/such/ekiden-command",)))
    assert fin.status == JobStatus.ERROR
    assert fin.exit_code is None
    assert "/no/such/ekiden-command" in fin.reason


async def test_bad_cwd_is_an_error(executor: Executor, tmp_path: Path) -> None:
    fin = await executor.run(_spec(argv=("true",), cwd=str(tmp_path / "missing")))
    assert fin.status == JobStatus.ERROR
    assert "missing" in fin.reason


@pytest.mark.parametrize(
    ("target", "args", "status", "code"),
    [
        ("tests.agents.calltargets:add", {"a": 0, "b": 0}, JobStatus.SUCCEEDED, 0),
        ("tests.agents.calltargets:add", {"a": 2, "b": 3}, JobStatus.FAILED, 5),
        ("tests.agents.calltargets:nap", {"seconds": 0.01}, JobStatus.SUCCEEDED, 0),
        ("tests.agents.calltargets:leave", {"code": 7}, JobStatus.FAILED, 7),
    ],
)
async def test_call_exit_codes(
    executor: Executor, target: str, args: dict[str, object], status: JobStatus, code: int
) -> None:
    fin = await executor.run(_spec(call=target, args=args))
    assert (fin.status, fin.exit_code) == (status, code)


async def test_call_exception_is_exit_1_with_traceback(executor: Executor) -> None:
    fin = await executor.run(_spec(call="tests.agents.calltargets:boom", args={"message": "kaput"}))
    assert (fin.status, fin.exit_code) == (JobStatus.FAILED, 1)
    assert b"RuntimeError: kaput" in fin.stderr and b"Traceback" in fin.stderr
    fin = await executor.run(_spec(call="tests.agents.calltargets:aboom"))
    assert (fin.status, fin.exit_code) == (JobStatus.FAILED, 1)
    assert b"ValueError: async failure" in fin.stderr


async def test_call_string_result_is_output(executor: Executor) -> None:
    fin = await executor.run(_spec(call="tests.agents.calltargets:greet", args={"name": "ekiden"}))
    assert (fin.status, fin.stdout) == (JobStatus.SUCCEEDED, b"hello ekiden")


@pytest.mark.parametrize(
    "target",
    [
        "tests.agents.no_such_module:f",
        "tests.agents.calltargets:missing",
        "tests.agents.calltargets:NOT_CALLABLE",
        "no-colon-here",
    ],
)
async def test_bad_call_target_is_an_error(executor: Executor, target: str) -> None:
    fin = await executor.run(_spec(call=target))
    assert fin.status == JobStatus.ERROR
    assert target in fin.reason


async def test_call_timeout_and_kill(executor: Executor) -> None:
    fin = await executor.run(_spec(call="tests.agents.calltargets:nap", args={"seconds": 60}, timeout_s=0.2))
    assert fin.status == JobStatus.TIMED_OUT
    kill = asyncio.Event()
    kill.set()
    fin = await executor.run(_spec(call="tests.agents.calltargets:nap", args={"seconds": 60}), kill=kill)
    assert fin.status == JobStatus.KILLED


async def test_huge_output_is_bounded(executor: Executor) -> None:
    size = 5 * 1024 * 1024
    code = f"import sys; w = sys.stdout.buffer.write; w(b'H' * 100); w(b'.' * {size - 200}); w(b'T' * 100)"
    fin = await executor.run(_spec(argv=(sys.executable, "-c", code), output_limit_bytes=200))
    assert fin.status == JobStatus.SUCCEEDED
    assert fin.truncated_bytes == size - 200
    assert fin.stdout == b"H" * 100 + cut_marker(size - 200) + b"T" * 100


async def test_timeout_kills_the_whole_group(executor: Executor, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild"
    # The shell ignores SIGTERM (and so does the sleep it starts), so only the SIGKILL after the grace ends them.
    line = f"trap '' TERM; sleep 60 & echo $! > {pid_file}; wait"
    fin = await executor.run(_spec(shell=line, timeout_s=0.5))
    assert fin.status == JobStatus.TIMED_OUT
    assert "timed out" in fin.reason
    grandchild = int(pid_file.read_text())
    assert await wait_dead(grandchild), "the grandchild sleep outlived the job"


async def test_background_child_does_not_outlive_a_finished_job(executor: Executor, tmp_path: Path) -> None:
    pid_file = tmp_path / "bg"
    fin = await executor.run(_spec(shell=f"sleep 60 & echo $! > {pid_file}; echo done"))
    assert (fin.status, fin.stdout) == (JobStatus.SUCCEEDED, b"done\n")
    assert await wait_dead(int(pid_file.read_text()))


async def test_kill_stops_a_running_job(executor: Executor) -> None:
    kill = asyncio.Event()
    running = asyncio.Event()
    pids: list[int] = []

    async def on_started(pid: int) -> None:
        pids.append(pid)
        running.set()

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(executor.run(_spec(argv=("sleep", "60")), kill=kill, on_started=on_started))
        await running.wait()
        kill.set()
    fin = task.result()
    assert fin.status == JobStatus.KILLED
    assert fin.exit_code is not None and fin.exit_code < 0
    assert await wait_dead(pids[0])
