"""The NATS connection of an agent process, which a stop request may cut short even before it connects."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client

from agents.outcome import Interrupted, race
from runtime.bus import BusSettings, connect

logger = logging.getLogger(__name__)

#: Seconds the final drain of the connection may take.
DRAIN_TIMEOUT_S = 5.0


@asynccontextmanager
async def bus_until_stopped(settings: BusSettings, stop: asyncio.Event) -> AsyncIterator[Client | None]:
    """Yield a connected client, or None if ``stop`` came first; drain the client when the block ends.

    ``runtime.bus.connection`` would retry an unreachable NATS for ever, and a SIGTERM would then wait for
    the orchestrator's SIGKILL; an agent holding no work has nothing to lose by exiting at once.
    """
    logger.info("connecting to NATS at %s", settings.url)
    try:
        nc = await race(connect(settings), stop, None)
    except Interrupted:
        logger.info("stopped before NATS at %s was reached", settings.url)
        yield None
        return
    try:
        yield nc
    finally:
        if not nc.is_closed:
            try:
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await nc.drain()
            except Exception as exc:  # a drain that fails still has to close
                logger.warning("nats drain failed (%s); closing", exc)
                await nc.close()
