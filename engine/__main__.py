"""``python -m engine``: run a manager for one site and server ID."""

import argparse
import asyncio
import os
from pathlib import Path

from engine.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S
from engine.service import serve
from engine.settings import DEFAULT_SERVER_ID, ManagerSettings
from runtime.bus import BusSettings
from runtime.logs import configure
from runtime.service import run_main


def parse_settings(argv: list[str] | None = None) -> tuple[ManagerSettings, str]:
    """Build the manager's settings from the command line and ``EKIDEN_*`` environment variables."""
    p = argparse.ArgumentParser(prog="ekiden manager", description="Run an Ekiden manager (active or standby).")
    p.add_argument("--site", default=os.environ.get("EKIDEN_SITE", "ekiden-site"), help="site directory")
    p.add_argument("--server-id", default=os.environ.get("EKIDEN_SERVER_ID", DEFAULT_SERVER_ID))
    p.add_argument("--nats", default=os.environ.get("EKIDEN_NATS", "nats://127.0.0.1:4222"), help="NATS URL")
    p.add_argument("--creds", default=os.environ.get("EKIDEN_NATS_CREDS"), help="NATS credentials file")
    p.add_argument("--lease-s", type=float, default=6.0, help="lease length; a standby takes over after it")
    p.add_argument("--dispatch-timeout-s", type=float, default=5.0)
    p.add_argument("--held-resend-s", type=float, default=30.0, help="re-offer jobs a relay holds but did not queue")
    p.add_argument("--agent-lost-after-s", type=float, default=45.0, help="lost after this long without heartbeat")
    p.add_argument(
        "--retention-days",
        type=float,
        default=float(os.environ.get("EKIDEN_RETENTION_DAYS", "0")),
        help="forget finished runs and audit entries older than this (0: keep until 'ekiden purge')",
    )
    p.add_argument("--api-rate-per-s", type=float, default=DEFAULT_RATE_PER_S, help="API requests/s per tenant")
    p.add_argument("--api-burst", type=int, default=DEFAULT_BURST, help="API requests at once per tenant")
    p.add_argument("--log-level", default=os.environ.get("EKIDEN_LOG_LEVEL", "INFO"))
    p.add_argument("--log-json", action="store_true", default=os.environ.get("EKIDEN_LOG_JSON") == "1")
    a = p.parse_args(argv)
    settings = ManagerSettings(
        site_dir=Path(a.site).resolve(),
        server_id=a.server_id,
        bus=BusSettings(url=a.nats, creds_file=a.creds, name=f"ekiden-manager-{a.server_id}"),
        lease_s=a.lease_s,
        tick_s=min(1.0, a.lease_s / 4),
        dispatch_timeout_s=a.dispatch_timeout_s,
        held_resend_s=a.held_resend_s,
        agent_lost_after_s=a.agent_lost_after_s,
        retention_days=a.retention_days,
        api_rate_per_s=a.api_rate_per_s,
        api_burst=a.api_burst,
    )
    configure(a.log_level, a.log_json, "manager")
    return settings, a.server_id


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    settings, sid = parse_settings(argv)

    async def _serve(stop: asyncio.Event) -> None:
        await serve(settings, stop)

    run_main(_serve, f"manager {sid}")


if __name__ == "__main__":
    main()
