"""The manager process: wait for the site's lease, then serve as the active manager until stopped.

A manager that does not hold the lease is a standby: it looks at the lease every ``standby_poll_s``
and takes it once it has expired. A manager that finds its lease gone (a fenced commit failed) stops
at once, leaves the queue groups, and goes back to standby. Every manager keeps its row in ``managers``
fresh for the operator's view: a standby on its poll, the active one with each lease renewal.
"""

import asyncio
import contextlib
import logging
import time
import uuid

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from engine.api import Api
from engine.core import Core, EventsIn, Item, Registered, Tick
from engine.dispatcher import Dispatcher
from engine.errors import LeaseLostError
from engine.flowapi import flow_verbs
from engine.queries import SiteQueries
from engine.runs import JobRun, Run
from engine.schedule_api import schedule_verbs
from engine.schedule_store import ScheduleQueries
from engine.scheduler import Scheduler
from engine.schedules import Clock
from engine.settings import ManagerSettings
from engine.sitefile import SEEN_INTERVAL_S
from engine.store import Lease, Store
from runtime.bus import connection, subscribe
from runtime.service import wait_or_stop
from schemas import subjects
from schemas.codec import decode, encode_one, error_reply
from schemas.definitions import DEFAULT_TENANT
from schemas.errors import WireError
from schemas.messages import EVENT_KINDS, Envelope, Kind, ack_for

logger = logging.getLogger(__name__)

#: Items waiting for the core before intake stops reading (back-pressure onto NATS).
QUEUE_LIMIT = 100_000


class _Stopped(Exception):
    """Raised inside the active TaskGroup to end it on a requested stop."""


async def serve(settings: ManagerSettings, stop: asyncio.Event, clock: Clock | None = None) -> None:
    """Run one manager process until ``stop`` is set; ``clock`` is the scheduling clock (tests inject one)."""
    store = await Store.open(settings.db_path)
    holder = f"{settings.host}:{settings.pid}:{uuid.uuid4().hex[:8]}"
    try:
        await store.claim_server_id(settings.server_id)
        async with connection(settings.bus) as nc:
            while not stop.is_set():
                lease = await _wait_for_lease(store, settings, holder, stop)
                if lease is None:
                    break
                try:
                    await _serve_active(store, nc, settings, lease, stop, clock)
                except* LeaseLostError:
                    logger.error("lease lost at epoch %d: stopped dispatching, back to standby", lease.epoch)
        await store.mark_seen(holder, settings.host, settings.pid, "stopped", time.time())
    finally:
        await store.close()


async def _wait_for_lease(store: Store, settings: ManagerSettings, holder: str, stop: asyncio.Event) -> Lease | None:
    announced = False
    seen_at = 0.0
    while not stop.is_set():
        now = time.time()
        lease = await store.try_acquire(holder, settings.host, settings.pid, now, settings.lease_s)
        if lease is not None:
            logger.info("active for server id %s at epoch %d", settings.server_id, lease.epoch)
            return lease
        if now - seen_at >= SEEN_INTERVAL_S:  # for the operator's view: standbys seen
            await store.mark_seen(holder, settings.host, settings.pid, "standby", now)
            seen_at = now
        if not announced:
            current = await store.lease()
            logger.info(
                "standby for server id %s: %s holds the lease",
                settings.server_id,
                current.holder if current else "nobody",
            )
            announced = True
        if await wait_or_stop(stop, settings.standby_poll_s):
            break
    return None


class _NatsSender:
    """Sends what the core committed over NATS."""

    def __init__(self, nc: Client, settings: ManagerSettings, dispatcher: Dispatcher) -> None:
        self._nc = nc
        self._settings = settings
        self._dispatcher = dispatcher

    async def ack(self, reply: str, eids: list[str]) -> None:
        await self._nc.publish(reply, encode_one(ack_for(eids, self._settings.server_id, time.time())))

    def dispatch(self, dispatches: list[tuple[str, Envelope]]) -> None:
        self._dispatcher.submit(dispatches)

    async def control(self, subject: str, envelope: Envelope) -> None:
        await self._nc.publish(subject, encode_one(envelope))

    async def progress(self, run: Run, jobs: list[JobRun]) -> None:
        payload = {
            "run": run.run_id,
            "jobnet": run.jobnet.name,
            "state": str(run.state),
            "jobs": [
                {
                    "id": j.id,
                    "state": str(j.state),
                    "exit_code": j.exit_code,
                    "attempts": j.attempts,
                    "reason": j.reason,
                }
                for j in jobs
            ],
        }
        env = Envelope(Kind.PROGRESS, self._settings.server_id, payload, run_id=run.run_id, ts=time.time())
        subject = subjects.run_updates(self._settings.server_id, run.run_id, run.tenant or DEFAULT_TENANT)
        await self._nc.publish(subject, encode_one(env))


async def _serve_active(
    store: Store, nc: Client, settings: ManagerSettings, lease: Lease, stop: asyncio.Event, clock: Clock | None
) -> None:
    sid = settings.server_id
    queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=QUEUE_LIMIT)
    dispatcher = Dispatcher(nc, queue, settings.dispatch_request_timeout_s)
    core = Core(store, settings, lease, _NatsSender(nc, settings, dispatcher), queue, clock)
    await store.arm_fence(lease.epoch)
    await core.recover()
    api = Api(core, SiteQueries(store), settings, lease, nc)
    api.add_verbs(schedule_verbs(ScheduleQueries(store)))
    api.add_verbs(flow_verbs(core, store))
    intake = [
        await subscribe(nc, subjects.events(sid), subjects.MANAGER_QUEUE),
        await subscribe(nc, subjects.ALL_AGENT_HEARTBEATS),
    ]
    api_sub = await subscribe(nc, subjects.api_all(sid), subjects.MANAGER_QUEUE)
    subs = [*intake, api_sub]
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(core.run())
            scheduler = Scheduler(
                core.schedules,
                ScheduleQueries(store),
                queue,
                settings.schedule_poll_s,
                settings.schedule_misfire_s,
                lambda: core.maintenance,
            )
            firing = tg.create_task(scheduler.run())
            tg.create_task(dispatcher.run())
            tg.create_task(_take_events(intake[0], core.queue))
            tg.create_task(_take_registrations(intake[1], core.queue))
            tg.create_task(api.serve(api_sub))
            tg.create_task(_tick(core.queue, settings.tick_s))
            await nc.publish(
                subjects.hello(sid),
                encode_one(Envelope(Kind.HELLO, sid, {"epoch": lease.epoch}, lease.epoch, ts=time.time())),
            )
            await stop.wait()
            # Stop intake first (the scheduler is intake too), then let the core commit and send what it took.
            firing.cancel()
            await _unsubscribe(subs)
            try:
                async with asyncio.timeout(settings.shutdown_grace_s):
                    await core.queue.join()
            except TimeoutError:
                logger.warning("stopping with %d items not yet applied", core.queue.qsize())
            raise _Stopped
    except* _Stopped:
        pass
    finally:
        # On a lost lease too: a queue-group member that reads nothing would swallow its share of the
        # events and API requests meant for the new active manager.
        await _unsubscribe(subs)
    await store.release(lease.holder, lease.epoch)
    logger.info("gave up the lease at epoch %d", lease.epoch)


async def _unsubscribe(subs: list[Subscription]) -> None:
    for sub in subs:
        with contextlib.suppress(NatsError):  # already unsubscribed, or the connection is gone
            await sub.unsubscribe()


async def _take_events(sub: Subscription, queue: "asyncio.Queue[Item]") -> None:
    async for msg in sub.messages:
        try:
            envs = decode(msg.data)
        except WireError as exc:
            logger.warning("bad events message on %s: %s", msg.subject, exc)
            if msg.reply:
                await msg.respond(error_reply(exc))
            continue
        events = [e for e in envs if e.kind in EVENT_KINDS]
        if len(events) != len(envs):
            logger.warning("%d non-event envelopes on %s ignored", len(envs) - len(events), msg.subject)
        await queue.put(EventsIn(events, msg.reply))


async def _take_registrations(sub: Subscription, queue: "asyncio.Queue[Item]") -> None:
    """Agents' registrations and heartbeats; one naming another agent than its subject does is dropped.

    An agent's credential may publish only on its own name's subject, so the name is the credential's.
    """
    async for msg in sub.messages:
        try:
            envs = decode(msg.data)
        except WireError as exc:
            logger.warning("bad registration on %s: %s", msg.subject, exc)
            continue
        name = subjects.agent_of_heartbeat(msg.subject)
        for env in envs:
            if env.kind != Kind.REGISTER:
                continue
            if env.payload.get("name") != name:
                logger.warning("registration on %s naming %r dropped", msg.subject, env.payload.get("name"))
                continue
            await queue.put(Registered(env))


async def _tick(queue: "asyncio.Queue[Item]", tick_s: float) -> None:
    while True:
        await asyncio.sleep(tick_s)
        await queue.put(Tick())
