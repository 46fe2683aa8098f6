"""The relay's exceptions: one root, ``RelayError``, under ``runtime.errors.AppError``."""

from pathlib import Path

from runtime.errors import AppError


class RelayError(AppError):
    """Root of the relay's own exceptions."""


class StoreError(RelayError):
    """The relay's SQLite database cannot be opened, migrated or written: an infrastructure fault."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"relay database {path}: {problem}")


class MetricsError(RelayError):
    """The metrics endpoint cannot listen where it was told to: a setting to fix."""

    def __init__(self, host: str, port: int, problem: str) -> None:
        self.host = host
        self.port = port
        self.problem = problem
        super().__init__(f"metrics endpoint {host}:{port}: {problem}")
