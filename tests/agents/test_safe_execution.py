"""Safe execution: what a job's process gets of the agent's environment, and whom it may run as."""

import json
import os
import pwd
import sys
from pathlib import Path

import pytest

from agents.errors import RunAsError
from agents.executor import Executor, identity_env
from agents.identity import resolve_user
from agents.settings import inherited_env, load
from schemas.messages import JobSpec, JobStatus

PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"


def _spec(**fields: object) -> JobSpec:
    return JobSpec(attempt_id="s:r:j:1", job="j", jobnet="n", **fields)  # type: ignore[arg-type]


def test_a_job_gets_only_the_allowed_variables_and_never_the_agents_own() -> None:
    environ = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "EKIDEN_NATS_CREDS": "/etc/ekiden/agent.creds",
        "EKIDEN_ALLOW_USERS": "batch",
        "CORP_PROXY": "http://proxy",
    }
    assert inherited_env(environ, ("PATH", "LC_*")) == {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    s = load(["--name", "a", "--env-allow", "CORP_*", "--env-allow", "*"], environ)
    # Even '*' does not hand a job the agent's own configuration.
    assert s.job_env == {k: v for k, v in environ.items() if not k.startswith("EKIDEN_")}
    assert s.allow_users == frozenset({"batch"})
    assert "AWS_SECRET_ACCESS_KEY" not in load(["--name", "a"], environ).job_env


async def test_the_executor_passes_the_allowed_environment_and_the_jobs_own(tmp_path: Path) -> None:
    executor = Executor(job_env={"PATH": os.environ["PATH"], "KEPT": "1"})
    fin = await executor.run(_spec(argv=(sys.executable, "-c", PRINT_ENV), env={"OWN": "2", "KEPT": "3"}))
    assert fin.status == JobStatus.SUCCEEDED, fin
    env = json.loads(fin.stdout)
    assert env["KEPT"] == "3" and env["OWN"] == "2"
    # The only EKIDEN_ variables a job sees tell it what it is; none of the agent's own reach it.
    spec = _spec(argv=("true",))
    assert {k for k in env if k.startswith("EKIDEN_")} == set(identity_env(spec))
    assert env["EKIDEN_ATTEMPT_ID"] == spec.attempt_id
    assert "HOME" not in env  # not allowed here, so not passed


async def test_run_as_a_user_is_refused_unless_allowed_and_never_runs_the_command(tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    spec = _spec(argv=("touch", str(mark)), user="nobody")
    fin = await Executor().run(spec)
    assert fin.status == JobStatus.ERROR
    assert "cannot run as user 'nobody'" in fin.reason
    assert not mark.exists()
    fin = await Executor(allow_users={"nobody"}).run(_spec(call="tests.agents.calltargets:nap", user="nobody"))
    assert fin.status == JobStatus.ERROR and "call job" in fin.reason


def test_switching_users_needs_root_an_allow_list_and_a_real_user() -> None:
    with pytest.raises(RunAsError, match="not root"):
        resolve_user("nobody", {"nobody"}, euid=1000)
    with pytest.raises(RunAsError, match="--allow-user"):
        resolve_user("nobody", {"batch"}, euid=0)
    with pytest.raises(RunAsError, match="no such user"):
        resolve_user("ekiden-no-such-user", {"ekiden-no-such-user"}, euid=0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_an_allowed_user_runs_the_job_as_that_user() -> None:
    nobody = pwd.getpwnam("nobody")
    executor = Executor(job_env={"PATH": os.environ["PATH"]}, allow_users={"nobody"})
    fin = await executor.run(_spec(argv=("sh", "-c", 'id -u; id -g; echo "$USER $HOME"; pwd'), user="nobody"))
    assert fin.status == JobStatus.SUCCEEDED, fin
    expected = [str(nobody.pw_uid), str(nobody.pw_gid), f"nobody {nobody.pw_dir}", _workdir(nobody.pw_dir)]
    assert fin.stdout.decode().splitlines() == expected


def _workdir(home: str) -> str:
    """Where a job of that user starts: its home, or / when it has none."""
    return home if os.path.isdir(home) else "/"
