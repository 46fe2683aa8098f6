"""Entry point: ``python -m agents --name NAME`` (standard agent) or ``--dest DEST`` (destination worker)."""

import sys

from agents.settings import load
from agents.standard import StandardAgent
from agents.worker import DestinationWorker
from runtime.logs import configure
from runtime.service import Serve, run_main


def main(argv: list[str] | None = None) -> None:
    """Parse settings, configure logging, and run the agent until SIGTERM or SIGINT."""
    settings = load(sys.argv[1:] if argv is None else argv)
    configure(settings.log_level, settings.log_json, "worker" if settings.is_worker else "agent")
    serve: Serve
    if settings.is_worker:
        serve = DestinationWorker(settings).serve
        name = f"worker {settings.name} ({settings.dest})"
    else:
        serve = StandardAgent(settings).serve
        name = f"agent {settings.name}"
    run_main(serve, name)


if __name__ == "__main__":
    main()
