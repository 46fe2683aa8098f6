"""``python -m relay --name NAME --upstream URL [--downstream URL] --db PATH [--metrics-port PORT]``."""

import functools
import sys

from relay.errors import MetricsError, StoreError
from relay.service import serve
from relay.settings import load
from runtime.errors import ConfigError
from runtime.logs import configure
from runtime.service import run_main


def main(argv: list[str] | None = None) -> None:
    """Parse the settings, configure logging, and run the relay until SIGTERM or SIGINT."""
    try:
        settings = load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        raise SystemExit(f"relay: {exc}") from None
    configure(settings.log_level, json=settings.log_json, process="relay")
    try:
        run_main(functools.partial(serve, settings), f"relay {settings.name}")
    except (StoreError, MetricsError) as exc:  # the database or the metrics port cannot be opened
        raise SystemExit(f"relay: {exc}") from None


if __name__ == "__main__":
    main()
