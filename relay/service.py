"""The relay process: wires intake, forwarder, event outbox and the two NATS sides, and stops them in order.

Upstream (``--upstream``, the managers' NATS): dispatch intake on ``subjects.relay_run(name)``, managers'
hellos, stats requests on ``subjects.relay_stats(name)``, and the outbox that sends events to
``subjects.events(sid)``. Downstream (``--downstream``, the destinations' NATS, or the same connection):
JetStream for the forwarder, the workers' events on ``subjects.relay_events(name)`` and their heartbeats on
``subjects.all_dest_heartbeats()``. The downstream side connects in its own task, so the relay takes and
holds dispatches even while the destinations' NATS is unreachable. With ``--metrics-port`` the same stats
are served as Prometheus metrics.

On stop: stop intake (drain the subscriptions, answering what was already received), forward what is
held within ``shutdown_grace_s``, give the outbox ``outbox_grace_s`` to be acked, stop the rest, close the
database, drain NATS. Whatever is left stays in SQLite and goes on when the relay restarts.
"""

import asyncio
import contextlib
import logging

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from relay.events import EventIntake, ManagerAcks, route, serve_hello
from relay.forwarding import MAX_INFLIGHT_PUBLISHES, Forwarder
from relay.intake import DispatchIntake
from relay.metrics import Snapshot, open_metrics
from relay.presence import Presence
from relay.settings import RelaySettings
from relay.stats import Stats
from relay.store import RelayStore
from runtime.bus import connection, subscribe
from runtime.epochs import EpochFence
from runtime.outbox import EventOutbox
from schemas import subjects

logger = logging.getLogger(__name__)

#: Seconds to drain an intake subscription (answer what it already received) on stop.
INTAKE_DRAIN_TIMEOUT_S = 5.0
#: Seconds the forwarder gets to finish its current window on stop.
FORWARDER_STOP_TIMEOUT_S = 6.0
#: Most seconds between prunes of forwarded dispatches.
PRUNE_INTERVAL_MAX_S = 60.0


async def serve(settings: RelaySettings, stop: asyncio.Event) -> None:
    """Run the relay until ``stop`` is set, then shut down in order (see the module docstring).

    Raises:
        StoreError: the database cannot be opened or written (the process ends non-zero).
    """
    store = await RelayStore.open(settings.db_path)
    try:
        async with connection(settings.upstream_bus()) as upstream:
            await Relay(settings, store, upstream).run(stop)
            await store.close()  # before the upstream drain: nothing writes any more
    finally:
        await store.close()


class Relay:
    """One relay process's components, sharing one store and one upstream connection."""

    def __init__(self, settings: RelaySettings, store: RelayStore, upstream: Client) -> None:
        self._settings = settings
        self._name = settings.name
        self._store = store
        self._upstream = upstream
        self._forwarder = Forwarder(store)
        self._acks = ManagerAcks()
        self._outbox = EventOutbox(
            upstream, route, persistence=store, on_acked=self._acks.acked, resend_after_s=settings.resend_after_s
        )
        self._fence = EpochFence()
        self._dispatches = DispatchIntake(
            settings.name, store, self._forwarder, settings.max_backlog, self._fence, settings.queued_wait_s
        )
        self._events = EventIntake(self._outbox, self._acks, settings.event_ack_wait_s)
        self._presence = Presence(settings.worker_heartbeat_s)
        self._js: JetStreamContext | None = None
        self._stats = Stats(settings.name, self._forwarder, self._presence, lambda: self._js)
        self._intake_stopped = asyncio.Event()
        self._downstream_stop = asyncio.Event()
        self._downstream_connected = False

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; return once stopped in order.

        Raises:
            MetricsError: the metrics endpoint cannot be bound (before anything else starts).
        """
        s = self._settings
        metrics = None if s.metrics_port is None else await open_metrics(s.metrics_host, s.metrics_port, self._snapshot)
        try:
            await self._serve(stop, metrics)
        finally:
            if metrics is not None:
                metrics.close()

    async def _serve(self, stop: asyncio.Event, metrics: asyncio.Server | None) -> None:
        held = await self._store.held()
        self._forwarder.hold(held)
        events = await self._store.events()
        self._outbox.restore(events)
        logger.info("relay %s: %d dispatches held, %d events unacked at start", self._name, len(held), len(events))
        async with asyncio.TaskGroup() as tg:
            background = [tg.create_task(self._outbox.run()), tg.create_task(self._prune())]
            if metrics is not None:
                background.append(tg.create_task(metrics.serve_forever()))
            hello_sub = await subscribe(self._upstream, subjects.hello_all())
            background.append(tg.create_task(serve_hello(hello_sub, self._outbox, self._fence)))
            stats_sub = await subscribe(self._upstream, subjects.relay_stats(self._name), subjects.RELAY_QUEUE)
            background.append(tg.create_task(self._stats.serve(stats_sub)))
            run_sub = await subscribe(self._upstream, subjects.relay_run(self._name), subjects.RELAY_QUEUE)
            intake = tg.create_task(self._dispatches.serve(run_sub))
            downstream = tg.create_task(self._downstream())
            logger.info("relay %s: taking dispatches on %s", self._name, run_sub.subject)

            await stop.wait()
            await _stop_intake(run_sub, intake)
            self._intake_stopped.set()  # the downstream task stops taking workers' events
            await self._finish()
            self._forwarder.stop()
            self._downstream_stop.set()
            if not self._downstream_connected:
                downstream.cancel()  # still trying to connect: nothing there to finish
            for task in background:
                task.cancel()

    async def _downstream(self) -> None:
        """Connect to the destinations' NATS, then forward and take workers' events until told to stop."""
        bus = self._settings.downstream_bus()
        conn: contextlib.AbstractAsyncContextManager[Client] = (
            contextlib.nullcontext(self._upstream) if bus is None else connection(bus)
        )
        async with conn as nc:
            self._downstream_connected = True
            js = self._js = nc.jetstream(publish_async_max_pending=MAX_INFLIGHT_PUBLISHES)
            async with asyncio.TaskGroup() as tg:
                forwarder = tg.create_task(self._forwarder.run(js))
                beats_sub = await subscribe(nc, subjects.all_dest_heartbeats())
                beats = tg.create_task(self._presence.serve(beats_sub))
                carrying: list[asyncio.Task[None]] = []
                if nc is not self._upstream:
                    # Workers' live output goes up and managers' control requests (kill, replay of the
                    # output so far) go down, as they are (best effort, one relay of the name is enough).
                    out_sub = await subscribe(nc, subjects.all_output(), subjects.RELAY_QUEUE)
                    ctl_sub = await subscribe(
                        self._upstream, subjects.dest_controls(), subjects.relay_queue(self._name)
                    )
                    carrying = [tg.create_task(_carry(out_sub, self._upstream)), tg.create_task(_carry(ctl_sub, nc))]
                if not self._intake_stopped.is_set():
                    evt_sub = await subscribe(nc, subjects.relay_events(self._name), subjects.RELAY_QUEUE)
                    intake = tg.create_task(self._events.serve(evt_sub))
                    logger.info("relay %s: downstream ready, taking events on %s", self._name, evt_sub.subject)
                    await self._intake_stopped.wait()
                    await _stop_intake(evt_sub, intake)
                await self._downstream_stop.wait()
                try:
                    # stop() lets it finish its window; one stuck on an unresponsive JetStream is cancelled.
                    async with asyncio.timeout(FORWARDER_STOP_TIMEOUT_S):
                        await forwarder
                except TimeoutError:
                    logger.warning("relay %s: forwarder cancelled on stop", self._name)
                beats.cancel()
                for task in carrying:
                    task.cancel()
            self._js = None

    async def _snapshot(self) -> Snapshot:
        """What a metrics scrape shows."""
        destinations = await self._stats.collect()
        return Snapshot(self._name, destinations, len(self._outbox), self._js is not None)

    async def _finish(self) -> None:
        """Forward what is held and let the manager ack the events, each within its grace."""
        held = len(self._forwarder)
        if held and self._downstream_connected:  # with no connection yet, nothing could go out
            logger.info("relay %s: forwarding %d held dispatches before stopping", self._name, held)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_grace_s):
                    await self._forwarder.wait_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.outbox_grace_s):
                await self._outbox.wait_empty()
        if len(self._forwarder) or len(self._outbox):
            logger.warning(
                "relay %s: stopping with %d dispatches held and %d events unacked; they go on after a restart",
                self._name,
                len(self._forwarder),
                len(self._outbox),
            )

    async def _prune(self) -> None:
        """Forget forwarded dispatches older than the retention, so the dedupe memory stays bounded."""
        interval_s = min(self._settings.retention_s / 4, PRUNE_INTERVAL_MAX_S)
        while True:
            pruned = await self._store.prune_forwarded(self._settings.retention_s)
            if pruned:
                logger.debug("relay %s: pruned %d forwarded dispatches", self._name, pruned)
            await asyncio.sleep(interval_s)


async def _stop_intake(sub: Subscription, task: asyncio.Task[None]) -> None:
    """Stop taking new requests on ``sub``, answer those already received, and wait for its consumer."""
    try:
        async with asyncio.timeout(INTAKE_DRAIN_TIMEOUT_S):
            await sub.drain()
            await task
    except Exception as exc:  # NATS down or the drain too slow: what was not answered is retried by its sender
        logger.warning("intake %s did not drain (%s: %s)", sub.subject, type(exc).__name__, exc)
        task.cancel()


async def _carry(sub: Subscription, to: Client) -> None:
    """Publish every message of ``sub`` on the other NATS system as it is (live output, control requests)."""
    carried = {subjects.CARRIED_HEADER: "1"}
    async for msg in sub.messages:
        if msg.headers and subjects.CARRIED_HEADER in msg.headers:
            continue  # carried here by a relay: going back would loop
        try:
            await to.publish(msg.subject, msg.data, headers=carried)
        except NatsError as exc:  # best effort: a lost kill is sent again on the attempt's next heartbeat
            logger.debug("%s not carried: %s", msg.subject, exc)
