"""One supervisor per process: signals set a stop event, the service drains and returns, exit 0."""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

#: A service: runs until ``stop`` is set, then stops intake, drains within its grace and returns.
Serve = Callable[[asyncio.Event], Awaitable[None]]


async def run_service(serve: Serve, name: str) -> None:
    """Run ``serve`` with SIGTERM and SIGINT wired to its stop event."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)

    def _request_stop(signame: str) -> None:
        if not stop.is_set():
            logger.info("%s: %s received, stopping", name, signame)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, _request_stop, sig.name)
    try:
        await serve(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    logger.info("%s: stopped", name)


def run_main(serve: Serve, name: str) -> None:
    """Entry point of a service process: uvloop, the supervisor, and exit status 0 on a clean stop."""
    import uvloop

    uvloop.run(run_service(serve, name))


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True at once if ``stop`` is set meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True
