"""Logging set-up for every process: plain text in development, one JSON object per line in production."""

import logging
import logging.config
import sys
from typing import Any

import orjson

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line, with the ``extra=`` fields beside the message."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "INFO", json: bool = False, process: str = "") -> None:
    """Apply the logging configuration of a process; call once, from ``__main__``.

    Args:
        level: the root level name.
        json: one JSON object per line instead of plain text.
        process: a short name put in front of every plain-text line (``manager``, ``relay``...).
    """
    prefix = f"{process} " if process else ""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "plain": {"format": f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"},
                "json": {"()": JsonFormatter},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "stream": sys.stderr,
                    "formatter": "json" if json else "plain",
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            "loggers": {"nats": {"level": "WARNING"}, "aiosqlite": {"level": "WARNING"}},
        }
    )
