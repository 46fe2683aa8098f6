"""What a standard agent tells the manager about itself when it registers and with each heartbeat."""

import importlib.metadata
import os
import platform
import socket
from typing import Any


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on every platform
        return 0


def _version() -> str:
    try:
        return importlib.metadata.version("ekiden")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Inventory:
    """The host's fixed facts, gathered once; ``payload`` adds what changes."""

    def __init__(self, name: str, slots: int) -> None:
        self._fixed: dict[str, Any] = {
            "name": name,
            "kind": "agent",
            "host": socket.gethostname(),
            "os": f"{platform.system()} {platform.release()}",
            "cpus": os.cpu_count() or 1,
            "memory_bytes": _memory_bytes(),
            "labels": {},
            "version": _version(),
            "slots": slots,
        }

    def payload(self, running: int) -> dict[str, Any]:
        """The payload of a register or heartbeat envelope."""
        return {**self._fixed, "labels": {}, "running": running}


def worker_presence(
    name: str, dest: str, slots: int, running: int, heartbeat_s: float, leaving: bool = False
) -> dict[str, Any]:
    """The payload of a destination worker's REGISTER heartbeat on ``subjects.dest_heartbeat(dest)``.

    ``heartbeat_s`` lets the relay judge liveness by this worker's own interval; ``leaving`` (sent once
    when the worker stops) lets it stop counting the worker at once.
    """
    return {
        "name": name,
        "kind": "worker",
        "dest": dest,
        "host": socket.gethostname(),
        "slots": slots,
        "running": running,
        "version": _version(),
        "heartbeat_s": heartbeat_s,
        "leaving": leaving,
    }
