"""Prometheus text metrics on a tiny HTTP endpoint: ``GET /metrics`` and nothing else (no dependency).

The figures are the relay's stats (``relay.stats``), one gauge per figure, labelled with the destination
and the relay, plus two gauges of the relay itself. A figure JetStream could not give is left out (the
series goes absent rather than showing a wrong number); the oldest pending age is 0 when nothing is pending.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.errors import MetricsError
from relay.stats import DestinationStats

logger = logging.getLogger(__name__)

#: Seconds a client gets to send its request line and headers.
REQUEST_TIMEOUT_S = 5.0
#: Largest request head read, in bytes.
MAX_REQUEST_BYTES = 8192
#: The content type of the Prometheus text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: (stats field, metric name, help text) of the per-destination gauges.
DESTINATION_GAUGES = (
    ("pending", "ekiden_destination_pending", "Jobs in the destination's stream not yet delivered to a worker."),
    ("running", "ekiden_destination_running", "Jobs delivered to workers and not yet acked."),
    ("held", "ekiden_destination_held", "Jobs this relay holds that are not yet in the destination's stream."),
    ("workers", "ekiden_destination_workers", "Live workers heard on the destination's heartbeat subject."),
    (
        "oldest_pending_age_s",
        "ekiden_destination_oldest_pending_age_seconds",
        "Age of the oldest job not yet delivered (0 when none is pending).",
    ),
)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one scrape shows."""

    relay: str
    destinations: list[DestinationStats]
    #: events taken from workers that the manager has not acked yet
    events_unacked: int
    downstream_connected: bool


def render(snap: Snapshot) -> str:
    """The Prometheus text exposition of one snapshot."""
    lines: list[str] = []
    relay = _label(snap.relay)
    for field_name, metric, help_text in DESTINATION_GAUGES:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for d in snap.destinations:
            value = getattr(d, field_name)
            if value is None and field_name == "oldest_pending_age_s" and d.pending == 0:
                value = 0.0
            if value is not None:
                lines.append(f'{metric}{{destination="{_label(d.name)}",relay="{relay}"}} {_number(value)}')
    lines += [
        "# HELP ekiden_relay_events_unacked Events taken from workers that no manager has acked yet.",
        "# TYPE ekiden_relay_events_unacked gauge",
        f'ekiden_relay_events_unacked{{relay="{relay}"}} {snap.events_unacked}',
        "# HELP ekiden_relay_downstream_connected 1 while the relay is connected to the destinations' NATS.",
        "# TYPE ekiden_relay_downstream_connected gauge",
        f'ekiden_relay_downstream_connected{{relay="{relay}"}} {int(snap.downstream_connected)}',
    ]
    return "\n".join(lines) + "\n"


async def open_metrics(host: str, port: int, snapshot: Callable[[], Awaitable[Snapshot]]) -> asyncio.Server:
    """Bind the endpoint; serve it with ``await server.serve_forever()`` in a task, close it with ``close()``.

    Raises:
        MetricsError: the address cannot be bound.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _exchange(reader, writer, snapshot)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that hangs up or sends junk gets nothing more
        except Exception:  # the per-request boundary: a scrape must never take the relay down
            logger.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
    except OSError as exc:
        raise MetricsError(host, port, str(exc)) from exc
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return server


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, snapshot: Callable[[], Awaitable[Snapshot]]
) -> None:
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    if method not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", "only GET\n"
    elif target.split("?", 1)[0] != "/metrics":
        status, body = "404 Not Found", "see /metrics\n"
    else:
        status, body = "200 OK", render(await snapshot())
    data = body.encode()
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(data)}\r\n"
        f"Connection: close\r\n\r\n".encode()
    )
    if method != "HEAD":
        writer.write(data)
    await writer.drain()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"
