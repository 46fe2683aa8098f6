"""``python -m relay --name NAME --nats URL [--downstream URL] --db PATH [--max-backlog N]``."""

import functools
import sys

from relay.errors import StoreError
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
    except StoreError as exc:  # the database cannot be opened: say so without a traceback
        raise SystemExit(f"relay: {exc}") from None


if __name__ == "__main__":
    main()
