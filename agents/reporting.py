"""Reporting attempts through an outbox (started, heartbeat, finished) and obeying control requests (a kill, a
replay of the output so far).

Shared by the standard agent and the destination worker; only where the events go differs.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from agents.attempts import Attempt
from agents.executor import Executor
from agents.live import LIVE_FLUSH_S, LiveOutput, Piece
from runtime.bus import reply
from runtime.epochs import EpochFence
from runtime.outbox import EventOutbox, eid_of
from schemas import subjects
from schemas.codec import decode, encode, encode_one, error_reply
from schemas.definitions import DEFAULT_TENANT
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, Kind, event_for, output_for

logger = logging.getLogger(__name__)

#: Seconds a heartbeat hook (JetStream in-progress) may take.
HOOK_TIMEOUT_S = 5.0
#: Seconds a job runs before its STARTED event is sent. A job that ends sooner reports only FINISHED
#: (whose duration tells when it started): half the events for short jobs, on every hop.
STARTED_DELAY_S = 0.02

Handler = Callable[[Msg], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


async def consume(sub: Subscription, handle: Handler) -> None:
    """Feed each message of ``sub`` to ``handle`` until the subscription ends; a failing message is only logged."""
    async for msg in sub.messages:
        try:
            await handle(msg)
        except Exception:  # the per-message boundary: bad input or a bug must not end the intake
            logger.exception("handling a message on %s failed", msg.subject)
            try:
                await reply(msg, error_reply(WireError(ErrorCode.INTERNAL, "internal error", retryable=True)))
            except NatsError:
                pass


async def stop_consuming(sub: Subscription, consumer: "asyncio.Task[None]") -> None:
    """Unsubscribe, which ends ``consume`` on ``sub`` after the message in hand; cancel it if that fails."""
    try:
        await sub.unsubscribe()
    except NatsError as exc:  # closed or draining: the iterator was not told, so stop it here
        logger.debug("unsubscribe %s: %s", sub.subject, exc)
        consumer.cancel()


def hello_handler(outbox: EventOutbox, on_hello: Hook | None = None, fence: EpochFence | None = None) -> Handler:
    """A handler for ``subjects.hello_all()``: a manager became active, so send every unacked event again.

    With a ``fence``, the hello's epoch is remembered, so dispatches from the manager it replaced are refused.
    """

    async def handle(msg: Msg) -> None:
        try:
            envs = decode(msg.data)
        except WireError as exc:
            logger.warning("bad hello on %s: %s", msg.subject, exc)
            await reply(msg, error_reply(exc, ts=time.time()))
            return
        if fence is not None:
            for env in envs:
                fence.see_hello(env)
        if any(env.kind == Kind.HELLO for env in envs):
            logger.info("hello on %s: resending %d unacked event(s)", msg.subject, len(outbox))
            outbox.resend_all()
            if on_hello is not None:
                await on_hello()

    return handle


async def wait_outbox(outbox: EventOutbox, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for every event to be acked; tell whether they were."""
    try:
        async with asyncio.timeout(timeout_s):
            await outbox.wait_empty()
    except TimeoutError:
        logger.warning("%d event(s) still not acked after %g s", len(outbox), timeout_s)
        return False
    return True


class Reporter:
    """Runs attempts with the executor, reports them, publishes their live output and obeys control requests."""

    def __init__(self, nc: Client, outbox: EventOutbox, executor: Executor, worker: str, heartbeat_s: float) -> None:
        """Wire a reporter.

        Args:
            nc: the NATS connection (control subjects).
            outbox: where events go.
            executor: what runs the jobs.
            worker: this process's name, put in started events.
            heartbeat_s: seconds between heartbeats of a running attempt.
        """
        self._nc = nc
        self._outbox = outbox
        self._executor = executor
        self._worker = worker
        self._heartbeat_s = heartbeat_s
        #: the attempts this process runs, with their live output
        self._running: dict[str, tuple[Attempt, LiveOutput]] = {}

    @property
    def host(self) -> str:
        """The host name results carry."""
        return self._executor.host

    async def run(self, attempt: Attempt, on_heartbeat: Hook | None = None) -> Finished:
        """Run an attempt, sending STARTED and HEARTBEAT events; sending FINISHED is the caller's decision.

        Args:
            attempt: what to run; its ``kill`` is set by a kill request on its control subject.
            on_heartbeat: awaited with each heartbeat (a worker extends its JetStream ack deadline).
        """
        launched = asyncio.Event()
        pid_box: list[int] = []

        async def on_started(pid: int) -> None:
            pid_box.append(pid)
            launched.set()

        live = LiveOutput()
        self._running[attempt.attempt_id] = (attempt, live)
        try:
            async with asyncio.TaskGroup() as tg:
                beats = tg.create_task(self._announce_and_beat(attempt, launched, pid_box, on_heartbeat))
                streaming = tg.create_task(self._stream(attempt, launched, live))
                try:
                    return await self._executor.run(attempt.spec, attempt.kill, on_started, live.feed)
                finally:
                    beats.cancel()
                    streaming.cancel()
                    if live.streaming:
                        await self._publish_output(attempt, live)  # what came since the last flush
        finally:
            self._running.pop(attempt.attempt_id, None)

    async def _stream(self, attempt: Attempt, launched: asyncio.Event, live: LiveOutput) -> None:
        """Publish live output every LIVE_FLUSH_S once the job outlived STARTED_DELAY_S (short jobs never do)."""
        await launched.wait()
        await asyncio.sleep(STARTED_DELAY_S)
        live.streaming = True
        while True:
            await self._publish_output(attempt, live)
            await asyncio.sleep(LIVE_FLUSH_S)

    async def _publish_output(self, attempt: Attempt, live: LiveOutput, replay: bool = False) -> None:
        """Publish the output that came since the last publication, or (``replay``) all of it so far.

        A replay is one message even when the job wrote nothing yet, so that a follower knows it came.
        """
        pieces: list[Piece] = (live.so_far() or [("stdout", 0, b"")]) if replay else live.take()
        if not pieces:
            return
        dispatch = attempt.dispatch
        subject = subjects.output(dispatch.sid, dispatch.tenant or DEFAULT_TENANT, attempt.attempt_id)
        now = time.time()
        extra = {"replay": True} if replay else {}
        envs = [
            output_for(dispatch, {"stream": stream, "offset": offset, "data": data, **extra}, now)
            for stream, offset, data in pieces
        ]
        try:
            await self._nc.publish(subject, encode(envs))
        except NatsError as exc:  # live output is best effort; the kept output comes with the result
            logger.debug("live output of %s not sent: %s", attempt.attempt_id, exc)

    async def serve_control(self, sub: Subscription) -> None:
        """Take control requests for the attempts this process runs (one subscription for all of them)."""
        await consume(sub, self._on_control)

    async def finish(self, attempt: Attempt, finished: Finished) -> str:
        """Send an attempt's FINISHED event; return the event ID its ack will name."""
        env = event_for(attempt.dispatch, Kind.FINISHED, finished.to_wire(), time.time())
        await self._outbox.put([env])
        return eid_of(env)

    async def _announce_and_beat(
        self, attempt: Attempt, launched: asyncio.Event, pid_box: list[int], hook: Hook | None
    ) -> None:
        await launched.wait()
        await asyncio.sleep(STARTED_DELAY_S)
        payload = {"host": self.host, "pid": pid_box[0] if pid_box else None, "worker": self._worker}
        await self._outbox.put([event_for(attempt.dispatch, Kind.STARTED, payload, time.time())])
        seq = 0
        while True:
            await asyncio.sleep(self._heartbeat_s)
            seq += 1
            await self._outbox.put([event_for(attempt.dispatch, Kind.HEARTBEAT, {}, time.time(), seq)])
            if hook is None:
                continue
            try:
                async with asyncio.timeout(HOOK_TIMEOUT_S):
                    await hook()
            except (NatsError, TimeoutError, OSError) as exc:  # the next beat tries again
                logger.warning("attempt %s: heartbeat hook failed: %s", attempt.attempt_id, exc)

    async def _on_control(self, msg: Msg) -> None:
        try:
            envs = decode(msg.data)
        except WireError as exc:
            logger.warning("bad control message on %s: %s", msg.subject, exc)
            await reply(msg, error_reply(exc, ts=time.time()))
            return
        attempt_id = subjects.attempt_of_control(msg.subject)
        running = self._running.get(attempt_id)
        if running is None:
            return  # another executor runs it, or it already ended: that one answers
        attempt, live = running
        actions = {env.payload.get("action") for env in envs if env.kind == Kind.CONTROL}
        if "kill" in actions:
            logger.info("attempt %s: kill requested", attempt.attempt_id)
            attempt.kill.set()
            action = "kill"
        elif "replay" in actions:
            await self._publish_output(attempt, live, replay=True)
            action = "replay"
        else:
            error = WireError(ErrorCode.INVALID, f"no known control action in {sorted(map(str, actions))}")
            await reply(msg, error_reply(error, ts=time.time()))
            return
        ack = Envelope(
            kind=Kind.ACK,
            sid=attempt.dispatch.sid,
            payload={"attempt_id": attempt.attempt_id, "action": action},
            ts=time.time(),
        )
        await reply(msg, encode_one(ack))
