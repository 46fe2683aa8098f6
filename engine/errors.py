"""Exceptions of the manager."""

from runtime.errors import AppError


class EngineError(AppError):
    """Root of the manager's exceptions."""


class LeaseLostError(EngineError):
    """This manager no longer holds the site's lease at its epoch: it must stop acting at once."""

    def __init__(self, holder: str, epoch: int) -> None:
        self.holder = holder
        self.epoch = epoch
        super().__init__(f"lease lost: {holder} no longer holds epoch {epoch}")


class StoreError(EngineError):
    """The site database is unusable (wrong schema version, not a site)."""
