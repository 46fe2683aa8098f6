"""The janitor: a small process that kills an agent's running jobs if the agent dies without doing it.

An agent (standard agent or destination worker) runs each job as the leader of its own process group and
kills the group whenever it stops the job. If the agent itself is killed (SIGKILL, the OOM killer), nobody
would: its jobs would go on, and the restart table would run them again elsewhere, twice at once. So the
agent starts a janitor holding the read end of a pipe, and writes ``+PGID`` to it when a job starts and
``-PGID`` once the job's group is gone. When the pipe closes, because the agent exited however it did, the
janitor sends SIGKILL to every group still listed and exits. It runs in a session of its own, so signals
meant for the agent's process group do not reach it.
"""

import logging
import os
import signal
import subprocess
import sys

logger = logging.getLogger(__name__)


class Janitor:
    """The agent's side: start the janitor, tell it which process groups to kill should the agent die."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "agents.janitor"], stdin=subprocess.PIPE, start_new_session=True
        )
        self._fd = self._proc.stdin.fileno() if self._proc.stdin is not None else -1

    def watch(self, pgid: int) -> None:
        """A job's process group started."""
        self._tell(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """A job's process group is gone."""
        self._tell(b"-%d\n" % pgid)

    def close(self) -> None:
        """Let the janitor go (it kills what is still listed) and reap it."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.wait()
            self._proc = None

    def _tell(self, line: bytes) -> None:
        if self._proc is None:
            return
        try:
            os.write(self._fd, line)  # a few bytes into a pipe the janitor keeps reading: it does not block
        except OSError as exc:  # the janitor is gone: jobs are still stopped by this agent, as before
            logger.warning("the janitor is gone (%s): jobs would outlive this agent if it were killed", exc)
            self._proc = None


def main() -> None:
    """Read ``+PGID`` / ``-PGID`` lines until the pipe closes, then kill every group still listed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line.startswith(b"+"):
            groups.add(pgid)
        elif line.startswith(b"-"):
            groups.discard(pgid)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass  # already gone


if __name__ == "__main__":
    main()
