"""What the jobnet language runs on agents: the file watch call and the ``ekiden-var`` helper, for real."""

import asyncio
import subprocess
import sys
from pathlib import Path

from agents.executor import Executor
from schemas.messages import JobSpec, JobStatus
from schemas.units import FILEWATCH_CALL
from schemas.variables import parse_output


def _watch(path: Path, timeout_s: float, stable_s: float = 0.0) -> JobSpec:
    args = {"path": str(path), "timeout_s": timeout_s, "stable_s": stable_s, "poll_s": 0.05}
    return JobSpec(attempt_id="s:r:w:1", job="w", jobnet="n", call=FILEWATCH_CALL, args=args)


async def test_a_file_watch_ends_once_the_file_is_there_and_stable(tmp_path: Path) -> None:
    target = tmp_path / "drop" / "orders.csv"
    executor = Executor(host="h")
    async with asyncio.TaskGroup() as tg:
        watching = tg.create_task(executor.run(_watch(target, timeout_s=20, stable_s=0.3)))
        await asyncio.sleep(0.2)
        assert not watching.done()
        target.parent.mkdir()
        target.write_text("id\n")
        await asyncio.sleep(0.1)
        assert not watching.done(), "the file changed less than stable_s ago"
        with target.open("a") as f:
            f.write("1\n")
    fin = watching.result()
    assert (fin.status, fin.exit_code) == (JobStatus.SUCCEEDED, 0)
    assert parse_output(fin.stdout) == {"FILEWATCH_PATH": str(target), "FILEWATCH_SIZE": "5"}


async def test_a_file_watch_fails_when_its_timeout_passes_first(tmp_path: Path) -> None:
    fin = await Executor(host="h").run(_watch(tmp_path / "never", timeout_s=0.2))
    assert (fin.status, fin.exit_code) == (JobStatus.FAILED, 1)
    assert fin.stderr == f"{tmp_path / 'never'}: not there after 0.2s".encode()


def test_ekiden_var_prints_the_line_the_manager_reads_and_refuses_what_it_cannot_carry() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "agents.varcli", "set", "ROWS", "42 rows; $(x)"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "::ekiden-var ROWS=42 rows; $(x)\n"
    assert parse_output(ok.stdout.encode()) == {"ROWS": "42 rows; $(x)"}
    for name, value in (("1x", "v"), ("EKI DEN", "v"), ("X", "a\nb")):
        bad = subprocess.run(
            [sys.executable, "-m", "agents.varcli", "set", name, value], capture_output=True, text=True
        )
        assert bad.returncode == 2
        assert bad.stdout == ""
        assert bad.stderr.startswith("ekiden-var: ")
