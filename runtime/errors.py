"""The root of every Ekiden exception raised inside a process."""


class AppError(Exception):
    """Root of Ekiden's own exceptions; each package subclasses it."""


class ConfigError(AppError):
    """A setting is missing or wrong; the process cannot start."""


class BusError(AppError):
    """NATS could not be reached or refused an operation."""
