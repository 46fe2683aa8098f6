"""The destination worker: pulls jobs from its destination's JetStream stream when it has a free slot.

A job's JetStream message is acked only once the relay has acked the job's finished event, so a worker
that dies at any point leaves the job in the stream, to be redelivered after the consumer's AckWait.

A redelivered message (``num_delivered > 1``) is never run: the executor it was delivered to before was lost
(killed, or it handed the job back when it stopped), and whether the job may run again is the manager's
decision under the restart rules. The worker reports the attempt FINISHED with status LOST and acks the
message; the manager then starts a new attempt, marks the job lost, or holds it.

While it runs, the worker announces itself on ``subjects.dest_heartbeat(dest)`` every heartbeat interval
(a REGISTER envelope), so relays can count the live workers of each destination.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from agents.attempts import Attempt, Attempts, RecentIds, parse_dispatch
from agents.executor import Executor
from agents.inventory import worker_presence
from agents.lifecycle import bus_until_stopped
from agents.reporting import Reporter, consume, hello_handler, stop_consuming, wait_outbox
from agents.settings import AgentSettings
from runtime.bus import subscribe
from runtime.destinations import ensure_destination
from runtime.outbox import EventOutbox
from runtime.service import wait_or_stop
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import WireError
from schemas.messages import Envelope, Finished, JobSpec, JobStatus, Kind, event_id

logger = logging.getLogger(__name__)

#: Seconds to wait before trying JetStream again after an error.
RETRY_S = 1.0
#: Seconds one JetStream set-up call or synchronous ack may take.
JS_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Delivery:
    """The worker's hold on one attempt's JetStream message."""

    msg: Msg
    relay: str
    #: Set when the relay acked the finished event, or when the worker gives up waiting for that.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    relay_acked: bool = False


def _decode(msg: Msg) -> tuple[Envelope, JobSpec]:
    envs = decode(msg.data)
    if len(envs) != 1:
        raise ValueError(f"expected one dispatch envelope, got {len(envs)}")
    spec = parse_dispatch(envs[0])
    if spec.relay is None:
        raise ValueError("the job names no relay to report to")
    return envs[0], spec


def _deliveries(msg: Msg) -> int:
    try:
        return msg.metadata.num_delivered
    except (NatsError, ValueError, IndexError):  # not a JetStream message: treat as a first delivery
        return 1


class DestinationWorker:
    """Pulls and runs the jobs of one destination, reporting to the relay each job names."""

    def __init__(self, settings: AgentSettings, executor: Executor | None = None) -> None:
        if settings.dest is None:
            raise ValueError("a destination worker needs a destination")
        self._settings = settings
        self._dest = settings.dest
        self._executor = executor or Executor.from_settings(settings)
        self._attempts = Attempts(settings.concurrency)
        #: Attempts this worker finished and the relay acked: a redelivery only needs the JetStream ack.
        self._done = RecentIds(settings.dedupe_memory)
        self._deliveries: dict[str, _Delivery] = {}
        self._by_eid: dict[str, _Delivery] = {}
        self._giving_up = False

    async def serve(self, stop: asyncio.Event) -> None:
        """Pull and run until ``stop`` is set (or idle too long), then drain and return."""
        s = self._settings
        async with bus_until_stopped(s.bus, stop) as nc:
            if nc is None:
                return
            js = nc.jetstream()
            if not await self._ensure(js, stop):
                return
            pulls = await js.pull_subscribe_bind(
                durable=subjects.DEST_CONSUMER, stream=subjects.dest_stream(self._dest)
            )
            outbox = EventOutbox(nc, route=self._route, on_acked=self._on_acked)
            reporter = Reporter(nc, outbox, self._executor, s.name, s.heartbeat_s)
            async with asyncio.TaskGroup() as tg:
                sending = tg.create_task(outbox.run())
                hello = await subscribe(nc, subjects.hello_all())
                hearing = tg.create_task(consume(hello, hello_handler(outbox)))
                control = await subscribe(nc, subjects.controls_of(f"dest:{self._dest}"))
                controlling = tg.create_task(reporter.serve_control(control))
                announcing = tg.create_task(self._announce_every_beat(nc))
                logger.info("worker %s of %s ready: %d slot(s)", s.name, self._dest, s.concurrency)
                async with asyncio.TaskGroup() as jobs:
                    await self._pull(pulls, stop, reporter, jobs)
                    try:
                        await pulls.unsubscribe()
                    except NatsError as exc:
                        logger.debug("pull unsubscribe: %s", exc)
                    stopped = await self._attempts.drain(s.grace_s, f"worker {s.name} is stopping")
                    # Finished events are in the outbox before their slot is freed: wait for the relay's acks,
                    # then let what is still unacked go back to the stream.
                    await wait_outbox(outbox, s.outbox_wait_s)
                    self._give_up()
                sending.cancel()
                announcing.cancel()
                await self._announce(nc, leaving=True)
                await stop_consuming(hello, hearing)
                await stop_consuming(control, controlling)
            logger.info("worker %s stopped (%d attempt(s) handed back)", s.name, stopped)

    async def _ensure(self, js: JetStreamContext, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            try:
                async with asyncio.timeout(JS_TIMEOUT_S * 3):
                    await ensure_destination(js, self._dest)
                return True
            except (NatsError, TimeoutError) as exc:
                logger.warning("cannot set up destination %s: %s; retrying", self._dest, exc)
                await wait_or_stop(stop, RETRY_S)
        return False

    async def _pull(
        self, pulls: JetStreamContext.PullSubscription, stop: asyncio.Event, reporter: Reporter, jobs: asyncio.TaskGroup
    ) -> None:
        s = self._settings
        while not stop.is_set():
            if self._idle_too_long():
                logger.info("worker %s idle for %g s: exiting", s.name, s.idle_exit_s)
                stop.set()
                return
            if self._attempts.free <= 0:
                await self._attempts.wait_free(s.fetch_timeout_s)
                continue
            try:
                msgs = await pulls.fetch(self._attempts.free, timeout=s.fetch_timeout_s)
            except TimeoutError:  # nothing to do (nats' TimeoutError is a TimeoutError too)
                continue
            except NatsError as exc:
                logger.warning("pulling from %s failed: %s", self._dest, exc)
                await wait_or_stop(stop, RETRY_S)
                continue
            for msg in msgs:
                # Run even if stop came meanwhile: the drain gives it its grace, while a nak would count
                # as a delivery, and the next worker would report the job lost without running it. For the
                # same reason run more than was asked for: nats-py's fetch also returns the messages of an
                # earlier pull that timed out just as they arrived, so a batch can exceed the free slots.
                self._attempts.take(over=True)
                jobs.create_task(self._handle(msg, reporter))

    def _idle_too_long(self) -> bool:
        idle_exit_s = self._settings.idle_exit_s
        return (
            idle_exit_s is not None
            and self._attempts.busy == 0
            and time.monotonic() - self._attempts.idle_since >= idle_exit_s
        )

    async def _handle(self, msg: Msg, reporter: Reporter) -> None:
        """Run one pulled job; the caller took a slot for it, which this frees."""
        slot = True
        try:
            try:
                dispatch, spec = _decode(msg)
            except (WireError, ValueError) as exc:
                logger.warning("dropping a bad job from %s: %s", self._dest, exc)
                await _settle(msg.term(), "term")
                return
            attempt_id = spec.attempt_id
            if attempt_id in self._done:
                await _ack(msg)
                return
            held = self._deliveries.get(attempt_id)
            if held is not None:
                # Redelivered while this worker still has it: answer through the newest delivery.
                held.msg = msg
                return
            delivery = self._deliveries[attempt_id] = _Delivery(msg, spec.relay or "")
            eid = event_id(attempt_id, Kind.FINISHED, token=spec.token)
            try:
                attempt = Attempt(dispatch, spec)
                finished = await self._execute(attempt, delivery, reporter)
                if finished is None:
                    await _settle(delivery.msg.nak(), "nak")
                    return
                self._by_eid[eid] = delivery
                await reporter.finish(attempt, finished)
                logger.debug("attempt %s %s (exit %s)", attempt_id, finished.status, finished.exit_code)
                # Freed only now that the finished event is in the outbox, so a drain that sees every slot
                # free also finds every finished event there to wait for.
                slot = False
                self._attempts.give()
                await self._settle_after_relay(attempt_id, delivery)
            finally:
                del self._deliveries[attempt_id]
                self._by_eid.pop(eid, None)
        finally:
            if slot:
                self._attempts.give()

    async def _execute(self, attempt: Attempt, delivery: _Delivery, reporter: Reporter) -> Finished | None:
        """Run the attempt (or find it lost); None when the worker stopped it and hands it back."""
        spec = attempt.spec
        deliveries = _deliveries(delivery.msg)
        if deliveries > 1:
            # Whether it may run again is the manager's call (restart rules), never this worker's.
            reason = f"delivered {deliveries} times, the executor before was lost"
            logger.info("attempt %s: %s; reporting it lost", spec.attempt_id, reason)
            return Finished(spec.attempt_id, JobStatus.LOST, None, reason=reason, host=reporter.host)
        self._attempts.held[spec.attempt_id] = attempt
        try:
            finished = await reporter.run(attempt, on_heartbeat=lambda: delivery.msg.in_progress())
        except Exception as exc:  # the per-job boundary: a bug here becomes the attempt's result
            logger.exception("attempt %s failed in the worker", spec.attempt_id)
            return Finished(spec.attempt_id, JobStatus.ERROR, None, reason=f"worker error: {exc}", host=reporter.host)
        finally:
            self._attempts.held.pop(spec.attempt_id, None)
        if attempt.stop_reason and finished.status == JobStatus.KILLED:
            logger.info("attempt %s stopped (%s): handing it back", spec.attempt_id, attempt.stop_reason)
            return None
        return finished

    async def _settle_after_relay(self, attempt_id: str, delivery: _Delivery) -> None:
        """Keep the message in progress until the relay acked the finished event, then ack it."""
        while not delivery.settled.is_set() and not self._giving_up:
            try:
                async with asyncio.timeout(self._settings.heartbeat_s):
                    await delivery.settled.wait()
            except TimeoutError:
                await _settle(delivery.msg.in_progress(), "in-progress")
        if delivery.relay_acked:
            await _ack(delivery.msg)
            self._done.add(attempt_id)
            return
        logger.warning("attempt %s: relay %s never acked its result; handing it back", attempt_id, delivery.relay)
        await _settle(delivery.msg.nak(), "nak")

    async def _announce_every_beat(self, nc: Client) -> None:
        while True:
            await self._announce(nc)
            await asyncio.sleep(self._settings.heartbeat_s)

    async def _announce(self, nc: Client, leaving: bool = False) -> None:
        """Publish this worker's presence on its destination's heartbeat subject."""
        s = self._settings
        payload = worker_presence(s.name, self._dest, s.concurrency, self._attempts.busy, s.heartbeat_s, leaving)
        env = Envelope(kind=Kind.REGISTER, sid="", payload=payload, ts=time.time())
        try:
            await nc.publish(subjects.dest_heartbeat(self._dest), encode_one(env))
        except NatsError as exc:  # the next heartbeat announces again
            logger.warning("cannot announce worker %s on %s: %s", s.name, self._dest, exc)

    def _route(self, env: Envelope) -> str:
        return subjects.relay_events(self._deliveries[env.payload["attempt_id"]].relay)

    def _on_acked(self, eids: list[str]) -> None:
        for eid in eids:
            delivery = self._by_eid.get(eid)
            if delivery is not None:
                delivery.relay_acked = True
                delivery.settled.set()

    def _give_up(self) -> None:
        self._giving_up = True
        for delivery in self._by_eid.values():
            delivery.settled.set()


async def _ack(msg: Msg) -> None:
    """Ack and wait for JetStream to confirm; a lost ack means a redelivery, which this worker recognises."""
    try:
        await msg.ack_sync(timeout=JS_TIMEOUT_S)
    except (NatsError, TimeoutError) as exc:
        logger.warning("ack of %s not confirmed: %s", msg.subject, exc)


async def _settle(ack: Awaitable[None], what: str) -> None:
    """Send a term, nak or in-progress; if it is lost, JetStream redelivers after AckWait all the same."""
    try:
        async with asyncio.timeout(JS_TIMEOUT_S):
            await ack
    except (NatsError, TimeoutError) as exc:
        logger.warning("%s not sent: %s", what, exc)
