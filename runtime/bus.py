"""Connecting to NATS with settings that suit a scheduler: fast failure detection, reconnect forever."""

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.credentials import read_credentials
from runtime.errors import BusError, ConfigError

logger = logging.getLogger(__name__)

#: Seconds between client pings; a dead link is seen after ``PING_INTERVAL_S * MAX_OUTSTANDING_PINGS``.
PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 3
#: Seconds between reconnect tries.
RECONNECT_WAIT_S = 0.5
#: Messages and bytes a subscription may buffer before NATS calls its consumer slow.
SUB_PENDING_MSGS = 500_000
SUB_PENDING_BYTES = 512 * 1024 * 1024
#: Bytes the client buffers while reconnecting.
RECONNECT_BUFFER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BusSettings:
    """How to reach NATS."""

    url: str = "nats://127.0.0.1:4222"
    #: an Ekiden credential or a NATS user-JWT creds file (see runtime.credentials)
    creds_file: str | None = None
    name: str = "ekiden"
    #: Give up on the first connection after this many seconds (0: keep trying forever).
    connect_deadline_s: float = 0.0
    #: Reply-inbox prefix (None: the credential's, else NATS' ``_INBOX``).
    inbox_prefix: str | None = None
    #: CA bundle to verify the server's TLS certificate with (None: the credential's, else the system's).
    tls_ca_file: str | None = None


def _auth_options(settings: BusSettings) -> dict[str, Any]:
    """nats-py options for the credential, inbox prefix and TLS of ``settings``.

    Raises:
        ConfigError: the credentials file is unreadable or malformed.
    """
    opts: dict[str, Any] = {}
    inbox, ca = settings.inbox_prefix, settings.tls_ca_file
    if settings.creds_file is not None:
        creds = read_credentials(settings.creds_file)
        if creds.is_jwt:
            opts["user_credentials"] = creds.path
        else:
            opts["nkeys_seed_str"] = creds.seed
        inbox = inbox or creds.inbox_prefix
        ca = ca or creds.tls_ca_file
    if inbox:
        opts["inbox_prefix"] = inbox
    if ca:
        try:
            opts["tls"] = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the NATS TLS CA file {ca}: {exc}") from exc
    return opts


async def _on_error(exc: Exception) -> None:
    logger.warning("nats: %s: %s", type(exc).__name__, exc)


async def _on_disconnected() -> None:
    logger.info("nats: disconnected")


async def _on_reconnected() -> None:
    logger.warning("nats: reconnected")


async def connect(settings: BusSettings) -> Client:
    """Connect, retrying the first connection until ``connect_deadline_s`` (forever if 0).

    Raises:
        BusError: the deadline passed with no connection.
        ConfigError: the credentials file is unreadable or malformed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.connect_deadline_s if settings.connect_deadline_s else None
    delay_s = 0.1
    auth = _auth_options(settings)  # a bad credentials file is a configuration error, not worth retrying
    seen: dict[str, None] = {}  # what went wrong, in order, each once (a refusal, then the reset it causes)

    async def on_error(exc: Exception) -> None:
        seen[str(exc)] = None
        await _on_error(exc)

    while True:
        try:
            # nats-py itself retries a first connection for ever (refused, or not authorized) when told to
            # reconnect for ever: the deadline has to cut it short from outside.
            async with asyncio.timeout_at(deadline):
                return await _connect_once(settings, auth, on_error)
        except TimeoutError as exc:
            if deadline is not None and loop.time() >= deadline:
                why = " / ".join(list(seen)[:3]) or "timed out"
                raise BusError(f"cannot reach NATS at {settings.url}: {why}") from exc
            logger.warning("cannot reach NATS at %s (%s); retrying", settings.url, exc)
        except Exception as exc:  # nats.connect raises OSError and its own errors
            if deadline is not None and loop.time() + delay_s > deadline:
                raise BusError(f"cannot reach NATS at {settings.url}: {exc}") from exc
            logger.warning("cannot reach NATS at %s (%s); retrying", settings.url, exc)
        await asyncio.sleep(delay_s)
        delay_s = min(delay_s * 2, 2.0)


async def _connect_once(
    settings: BusSettings, auth: dict[str, Any], on_error: Callable[[Exception], Awaitable[None]]
) -> Client:
    nc = Client()
    try:
        await nc.connect(
            servers=[settings.url],
            name=settings.name,
            **auth,
            error_cb=on_error,
            disconnected_cb=_on_disconnected,
            reconnected_cb=_on_reconnected,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # annotated int; it is any seconds
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            connect_timeout=2,
            pending_size=RECONNECT_BUFFER_BYTES,
        )
    except BaseException:
        # Cut short by the deadline: close the half-open connection rather than leave its socket behind.
        try:
            await nc.close()
        except Exception as exc:  # closing what never opened may fail in many ways; nothing more to do
            logger.debug("closing an unfinished connection: %s", exc)
        raise
    return nc


async def subscribe(nc: Client, subject: str, queue: str = "") -> Subscription:
    """Subscribe with pending limits sized for bursts; consume it with ``async for msg in sub.messages``."""
    return await nc.subscribe(
        subject, queue=queue, pending_msgs_limit=SUB_PENDING_MSGS, pending_bytes_limit=SUB_PENDING_BYTES
    )


@asynccontextmanager
async def connection(settings: BusSettings) -> AsyncIterator[Client]:
    """A connection that is drained when the block ends (stop intake before closing what work reports through)."""
    nc = await connect(settings)
    try:
        yield nc
    finally:
        if not nc.is_closed:
            try:
                async with asyncio.timeout(5):
                    await nc.drain()
            except Exception as exc:  # a drain that fails still has to close
                logger.warning("nats drain failed (%s); closing", exc)
                await nc.close()


async def reply(msg: Msg, body: bytes) -> None:
    """Answer a request if it has a reply subject; a lost reply is the requester's to retry."""
    if msg.reply:
        await msg.respond(body)
