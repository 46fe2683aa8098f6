"""The relay's settings, built once from argv and ``EKIDEN_*`` environment variables (argv wins)."""

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from runtime.bus import BusSettings
from runtime.errors import ConfigError
from runtime.outbox import RESEND_AFTER_S
from schemas.names import is_valid_name

#: Dispatches held (accepted, not yet in JetStream) per destination before new ones are refused.
DEFAULT_MAX_BACKLOG = 10_000
#: Seconds a forwarded dispatch is remembered, so a redelivered dispatch is not forwarded again.
DEFAULT_RETENTION_S = 3600.0
#: Seconds, after SIGTERM, to go on forwarding what is held.
DEFAULT_SHUTDOWN_GRACE_S = 10.0
#: Seconds, after SIGTERM and forwarding, to wait for the manager to ack the events in the outbox.
DEFAULT_OUTBOX_GRACE_S = 5.0
#: Seconds a dispatch ack waits, after the commit, for JetStream's PubAcks so it can name the jobs ``queued``.
DEFAULT_QUEUED_WAIT_S = 0.5
#: Seconds a worker's event batch waits for the manager's ack before the relay acks it on its own (store and
#: forward). Below the workers' request timeout (``runtime.outbox.REQUEST_TIMEOUT_S``, 5 s).
DEFAULT_EVENT_ACK_WAIT_S = 2.0
#: Seconds between a destination worker's presence heartbeats, when the heartbeat does not say.
DEFAULT_WORKER_HEARTBEAT_S = 10.0
#: Address the metrics endpoint binds to unless told otherwise.
DEFAULT_METRICS_HOST = "127.0.0.1"

#: Values of a boolean environment variable that mean yes.
_TRUE = frozenset({"1", "true", "yes", "on"})

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything the relay process is told at start-up."""

    #: Relay name: the queue group on ``subjects.relay_run(name)`` and ``subjects.relay_events(name)``.
    name: str
    #: The managers' NATS (dispatch intake, hello, stats, events to the manager).
    nats_url: str
    #: The relay's SQLite file.
    db_path: Path
    #: The destinations' NATS (JetStream, workers' events and heartbeats); None: the same connection.
    downstream_url: str | None = None
    max_backlog: int = DEFAULT_MAX_BACKLOG
    retention_s: float = DEFAULT_RETENTION_S
    #: Seconds before an event the manager has not acked is sent again.
    resend_after_s: float = RESEND_AFTER_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    outbox_grace_s: float = DEFAULT_OUTBOX_GRACE_S
    queued_wait_s: float = DEFAULT_QUEUED_WAIT_S
    event_ack_wait_s: float = DEFAULT_EVENT_ACK_WAIT_S
    worker_heartbeat_s: float = DEFAULT_WORKER_HEARTBEAT_S
    #: Port of the Prometheus metrics endpoint (None: no endpoint).
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    log_level: str = "INFO"
    log_json: bool = False
    #: NATS credentials files of the two sides (a relay may bridge two NATS systems with separate accounts).
    upstream_creds_file: str | None = None
    downstream_creds_file: str | None = None

    def upstream_bus(self) -> BusSettings:
        """How to reach the managers' NATS."""
        return BusSettings(url=self.nats_url, creds_file=self.upstream_creds_file, name=f"relay-{self.name}")

    def downstream_bus(self) -> BusSettings | None:
        """How to reach the destinations' NATS, or None when it is the upstream connection."""
        if self.downstream_url is None:
            return None
        return BusSettings(
            url=self.downstream_url, creds_file=self.downstream_creds_file, name=f"relay-{self.name}-downstream"
        )


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m relay``; every option may also come from its environment variable."""
    p = argparse.ArgumentParser(
        prog="python -m relay",
        description="Ekiden relay: takes flexible jobs from managers, forwards them to destinations, "
        "carries events back.",
    )
    p.add_argument("--name", help="relay name (EKIDEN_RELAY_NAME)")
    p.add_argument("--upstream", "--nats", dest="upstream", metavar="URL", help="managers' NATS URL (EKIDEN_NATS_URL)")
    p.add_argument(
        "--downstream", metavar="URL", help="destinations' NATS URL, if separate (EKIDEN_RELAY_DOWNSTREAM_URL)"
    )
    p.add_argument(
        "--upstream-creds", metavar="FILE", help="NATS credentials for upstream (EKIDEN_RELAY_UPSTREAM_CREDS)"
    )
    p.add_argument(
        "--downstream-creds", metavar="FILE", help="NATS credentials for downstream (EKIDEN_RELAY_DOWNSTREAM_CREDS)"
    )
    p.add_argument("--db", metavar="PATH", help="SQLite file on a local disk (EKIDEN_RELAY_DB)")
    p.add_argument(
        "--max-backlog", metavar="N", help="held jobs per destination before refusing (EKIDEN_RELAY_MAX_BACKLOG)"
    )
    p.add_argument("--retention-s", metavar="S", help="remember forwarded jobs this long (EKIDEN_RELAY_RETENTION_S)")
    p.add_argument("--resend-after-s", metavar="S", help="resend unacked events after (EKIDEN_RELAY_RESEND_AFTER_S)")
    p.add_argument(
        "--shutdown-grace-s", metavar="S", help="forward held jobs on stop for (EKIDEN_RELAY_SHUTDOWN_GRACE_S)"
    )
    p.add_argument(
        "--outbox-grace-s", metavar="S", help="wait for event acks on stop for (EKIDEN_RELAY_OUTBOX_GRACE_S)"
    )
    p.add_argument(
        "--queued-wait-s", metavar="S", help="wait for PubAcks before answering (EKIDEN_RELAY_QUEUED_WAIT_S)"
    )
    p.add_argument(
        "--event-ack-wait-s",
        metavar="S",
        help="wait for the manager's ack before acking workers' events (EKIDEN_RELAY_EVENT_ACK_WAIT_S)",
    )
    p.add_argument(
        "--worker-heartbeat-s",
        metavar="S",
        help="workers' heartbeat interval, if they do not say (EKIDEN_RELAY_WORKER_HEARTBEAT_S)",
    )
    p.add_argument("--metrics-port", metavar="PORT", help="serve GET /metrics on this port (EKIDEN_RELAY_METRICS_PORT)")
    p.add_argument("--metrics-host", metavar="HOST", help="bind the metrics endpoint here (EKIDEN_RELAY_METRICS_HOST)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING... (EKIDEN_LOG_LEVEL)")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines (EKIDEN_LOG_JSON=1)")
    return p


def load(argv: Sequence[str], env: Mapping[str, str] | None = None) -> RelaySettings:
    """Build the settings from ``argv`` (without the program name) and ``env`` (default: the process's).

    Raises:
        ConfigError: a required setting is missing or a value is invalid.
        SystemExit: argparse refused the command line (status 2).
    """
    ns = parser().parse_args(argv)
    env = os.environ if env is None else env

    def pick(arg: object, *variables: str) -> str | None:
        if arg is not None:
            return str(arg)
        return next((env[v] for v in variables if env.get(v)), None)

    def num(arg: object, var: str, default: _T, conv: Callable[[str], _T]) -> _T:
        raw = pick(arg, var)
        if raw is None:
            return default
        try:
            return conv(raw)
        except ValueError:
            raise ConfigError(f"{var.removeprefix('EKIDEN_').lower()}: not a number: {raw!r}") from None

    name = pick(ns.name, "EKIDEN_RELAY_NAME")
    nats_url = pick(ns.upstream, "EKIDEN_RELAY_UPSTREAM_URL", "EKIDEN_NATS_URL")
    db = pick(ns.db, "EKIDEN_RELAY_DB")
    if name is None or nats_url is None or db is None:
        raise ConfigError(
            "--name, --upstream (or --nats) and --db are required "
            "(or EKIDEN_RELAY_NAME, EKIDEN_NATS_URL, EKIDEN_RELAY_DB)"
        )
    if not is_valid_name(name):
        raise ConfigError(f"invalid relay name {name!r}: use letters, digits, '_' and '-' (at most 64)")
    log_json = ns.log_json if ns.log_json is not None else env.get("EKIDEN_LOG_JSON", "").lower() in _TRUE
    metrics_port = pick(ns.metrics_port, "EKIDEN_RELAY_METRICS_PORT")
    settings = RelaySettings(
        name=name,
        nats_url=nats_url,
        db_path=Path(db),
        downstream_url=pick(ns.downstream, "EKIDEN_RELAY_DOWNSTREAM_URL"),
        max_backlog=num(ns.max_backlog, "EKIDEN_RELAY_MAX_BACKLOG", DEFAULT_MAX_BACKLOG, int),
        retention_s=num(ns.retention_s, "EKIDEN_RELAY_RETENTION_S", DEFAULT_RETENTION_S, float),
        resend_after_s=num(ns.resend_after_s, "EKIDEN_RELAY_RESEND_AFTER_S", RESEND_AFTER_S, float),
        shutdown_grace_s=num(ns.shutdown_grace_s, "EKIDEN_RELAY_SHUTDOWN_GRACE_S", DEFAULT_SHUTDOWN_GRACE_S, float),
        outbox_grace_s=num(ns.outbox_grace_s, "EKIDEN_RELAY_OUTBOX_GRACE_S", DEFAULT_OUTBOX_GRACE_S, float),
        queued_wait_s=num(ns.queued_wait_s, "EKIDEN_RELAY_QUEUED_WAIT_S", DEFAULT_QUEUED_WAIT_S, float),
        event_ack_wait_s=num(ns.event_ack_wait_s, "EKIDEN_RELAY_EVENT_ACK_WAIT_S", DEFAULT_EVENT_ACK_WAIT_S, float),
        worker_heartbeat_s=num(
            ns.worker_heartbeat_s, "EKIDEN_RELAY_WORKER_HEARTBEAT_S", DEFAULT_WORKER_HEARTBEAT_S, float
        ),
        metrics_port=num(metrics_port, "EKIDEN_RELAY_METRICS_PORT", None, int),
        metrics_host=pick(ns.metrics_host, "EKIDEN_RELAY_METRICS_HOST") or DEFAULT_METRICS_HOST,
        log_level=pick(ns.log_level, "EKIDEN_LOG_LEVEL") or "INFO",
        log_json=bool(log_json),
        upstream_creds_file=pick(ns.upstream_creds, "EKIDEN_RELAY_UPSTREAM_CREDS"),
        downstream_creds_file=pick(ns.downstream_creds, "EKIDEN_RELAY_DOWNSTREAM_CREDS"),
    )
    _check(settings)
    return settings


def _check(s: RelaySettings) -> None:
    if s.max_backlog < 1:
        raise ConfigError(f"max_backlog must be at least 1, not {s.max_backlog}")
    positive = (
        ("retention_s", s.retention_s),
        ("resend_after_s", s.resend_after_s),
        ("worker_heartbeat_s", s.worker_heartbeat_s),
    )
    for name, value in positive:
        if not value > 0:  # also refuses NaN
            raise ConfigError(f"{name} must be a positive number of seconds, not {value}")
    not_negative = (
        ("shutdown_grace_s", s.shutdown_grace_s),
        ("outbox_grace_s", s.outbox_grace_s),
        ("queued_wait_s", s.queued_wait_s),
        ("event_ack_wait_s", s.event_ack_wait_s),
    )
    for name, value in not_negative:
        if not value >= 0:
            raise ConfigError(f"{name} must be zero or more seconds, not {value}")
    if s.metrics_port is not None and not 0 < s.metrics_port < 65536:
        raise ConfigError(f"metrics_port must be a TCP port (1-65535), not {s.metrics_port}")
    for side, path in (("upstream", s.upstream_creds_file), ("downstream", s.downstream_creds_file)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{side} credentials file {path} does not exist")
