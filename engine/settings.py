"""The manager's settings: built once from the command line and environment, then passed down."""

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from engine.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S
from engine.sitefile import site_db
from runtime.bus import BusSettings
from schemas.names import check_name

#: Default server ID of a site.
DEFAULT_SERVER_ID = "main"


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    """Everything the manager reads from outside."""

    site_dir: Path
    server_id: str = DEFAULT_SERVER_ID
    bus: BusSettings = field(default_factory=BusSettings)
    #: Seconds the lease lasts without renewal; a standby takes over this long after the active one dies.
    lease_s: float = 6.0
    #: Seconds between lease renewals (and watchdog sweeps).
    tick_s: float = 1.0
    #: Seconds a standby waits between looks at the lease.
    standby_poll_s: float = 0.5
    #: Seconds after which a dispatch that no relay or agent accepted is sent again (same attempt ID).
    dispatch_timeout_s: float = 5.0
    #: Seconds after which a dispatch a relay holds but has not queued in JetStream is offered again (the
    #: relay may have died holding it; a live one answers at once, another relay of the name takes it).
    held_resend_s: float = 30.0
    #: Seconds without a heartbeat after which an attempt on a standard agent is lost (agents beat every 10 s).
    agent_lost_after_s: float = 45.0
    #: Days finished runs and audit entries are kept (0: until ``ekiden purge``); checked hourly.
    retention_days: float = 0.0
    #: Seconds to wait for a relay's or agent's reply to a dispatch batch.
    dispatch_request_timeout_s: float = 5.0
    #: Bytes of stdout and of stderr kept per attempt.
    output_limit_bytes: int = 64 * 1024
    #: Seconds a clean stop may take to flush what is committed before it cancels the rest.
    shutdown_grace_s: float = 5.0
    #: Control API requests per second each caller (tenant, or the admin) may make, sustained.
    api_rate_per_s: float = DEFAULT_RATE_PER_S
    #: Control API requests each caller may make at once after a quiet spell.
    api_burst: int = DEFAULT_BURST
    #: Seconds ahead the scheduler loads due fire times in one poll (and the longest it sleeps between polls).
    schedule_poll_s: float = 1.0
    #: Seconds after its time that a fire counts as missed, so its schedule's catch-up policy applies.
    schedule_misfire_s: float = 60.0
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        check_name(self.server_id, "server id")

    @property
    def db_path(self) -> Path:
        """The site database file."""
        return site_db(self.site_dir)
