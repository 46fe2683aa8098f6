"""The standard agent: a registered host that runs the attempts a manager dispatches to it by name."""

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from agents.attempts import Attempt, Attempts, RecentIds, parse_dispatch
from agents.executor import Executor
from agents.inventory import Inventory
from agents.lifecycle import bus_until_stopped
from agents.reporting import Reporter, consume, hello_handler, stop_consuming, wait_outbox
from agents.settings import AgentSettings
from runtime.bus import reply, subscribe
from runtime.epochs import EpochFence
from runtime.outbox import EventOutbox
from schemas import subjects
from schemas.codec import decode, encode_one, error_reply
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, JobStatus, Kind

logger = logging.getLogger(__name__)


class StandardAgent:
    """Takes dispatch batches on ``subjects.agent_run(name)`` and reports to ``subjects.events(sid)``."""

    def __init__(self, settings: AgentSettings, executor: Executor | None = None) -> None:
        self._settings = settings
        self._executor = executor or Executor.from_settings(settings)
        self._attempts = Attempts(settings.concurrency)
        self._recent = RecentIds(settings.dedupe_memory)
        self._inventory = Inventory(settings.name, settings.concurrency)
        self._fence = EpochFence()
        self._stopping = False

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain: stop intake, finish or kill what runs, flush the events."""
        s = self._settings
        async with bus_until_stopped(s.bus, stop) as nc:
            if nc is None:
                return
            outbox = EventOutbox(nc, route=lambda env: subjects.events(env.sid))
            reporter = Reporter(nc, outbox, self._executor, s.name, s.heartbeat_s)
            async with asyncio.TaskGroup() as tg:
                sending = tg.create_task(outbox.run())
                hello = await subscribe(nc, subjects.hello_all())
                hearing = tg.create_task(consume(hello, hello_handler(outbox, lambda: self._register(nc), self._fence)))
                control = await subscribe(nc, subjects.controls_of(f"agent:{s.name}"))
                controlling = tg.create_task(reporter.serve_control(control))
                intake = await subscribe(nc, subjects.agent_run(s.name))
                # Subscribed first, so a manager that sees the registration can dispatch at once.
                beating = tg.create_task(self._inventory_beats(nc))
                logger.info("standard agent %s ready: %d slot(s)", s.name, s.concurrency)
                async with asyncio.TaskGroup() as jobs:
                    taking = jobs.create_task(consume(intake, lambda msg: self._on_dispatch(msg, reporter, jobs)))
                    await stop.wait()
                    self._stopping = True
                    await stop_consuming(intake, taking)
                    stopped = await self._attempts.drain(s.grace_s, f"agent {s.name} is stopping")
                # Every attempt has put its finished event by now.
                await wait_outbox(outbox, s.outbox_wait_s)
                for task in (sending, beating):
                    task.cancel()
                await stop_consuming(hello, hearing)
                await stop_consuming(control, controlling)
            logger.info("standard agent %s stopped (%d attempt(s) killed)", s.name, stopped)

    async def _on_dispatch(self, msg: Msg, reporter: Reporter, jobs: asyncio.TaskGroup) -> None:
        try:
            envs = decode(msg.data)
        except WireError as exc:
            logger.warning("bad dispatch on %s: %s", msg.subject, exc)
            await reply(msg, error_reply(exc, ts=time.time()))
            return
        accepted: list[str] = []
        refused: list[dict[str, Any]] = []
        for env in envs:
            raw_id = env.payload.get("attempt_id")
            attempt_id = raw_id if isinstance(raw_id, str) else ""
            try:
                spec = parse_dispatch(env)
            except ValueError as exc:
                refused.append({"attempt_id": attempt_id, "code": str(ErrorCode.INVALID), "reason": str(exc)})
                continue
            stale = self._fence.check(env)
            if stale is not None:
                refused.append({"attempt_id": attempt_id, "code": str(ErrorCode.CONFLICT), "reason": stale})
                continue
            if attempt_id in self._attempts.held or attempt_id in self._recent:
                accepted.append(attempt_id)  # held or already run: accepted again, never run twice
                continue
            if self._stopping or not self._attempts.free:
                why = "agent is stopping" if self._stopping else f"all {self._attempts.capacity} slots are busy"
                refused.append({"attempt_id": attempt_id, "code": str(ErrorCode.UNAVAILABLE), "reason": why})
                continue
            attempt = Attempt(env, spec)
            self._attempts.take()
            self._attempts.held[attempt_id] = attempt
            self._recent.add(attempt_id)
            accepted.append(attempt_id)
            jobs.create_task(self._run(attempt, reporter))
        logger.debug("dispatch: %d accepted, %d refused", len(accepted), len(refused))
        ack = Envelope(
            kind=Kind.ACK, sid=envs[0].sid, payload={"accepted": accepted, "refused": refused}, ts=time.time()
        )
        await reply(msg, encode_one(ack))

    async def _run(self, attempt: Attempt, reporter: Reporter) -> None:
        try:
            finished = await reporter.run(attempt)
        except Exception as exc:  # the per-job boundary: a bug here becomes the attempt's result
            logger.exception("attempt %s failed in the agent", attempt.attempt_id)
            finished = Finished(
                attempt.attempt_id, JobStatus.ERROR, None, reason=f"agent error: {exc}", host=reporter.host
            )
        finally:
            self._attempts.held.pop(attempt.attempt_id, None)
            self._attempts.give()
        if attempt.stop_reason and finished.status == JobStatus.KILLED:
            finished = replace(finished, reason=attempt.stop_reason)
        await reporter.finish(attempt, finished)
        logger.info("attempt %s %s (exit %s)", attempt.attempt_id, finished.status, finished.exit_code)

    async def _register(self, nc: Client) -> None:
        await self._announce(nc, subjects.agent_heartbeat(self._settings.name))

    async def _inventory_beats(self, nc: Client) -> None:
        subject = subjects.agent_heartbeat(self._settings.name)
        await self._announce(nc, subject)
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            await self._announce(nc, subject)

    async def _announce(self, nc: Client, subject: str) -> None:
        """Publish the inventory; the register envelope serves both the first announcement and heartbeats."""
        payload = self._inventory.payload(self._attempts.busy)
        try:
            await nc.publish(subject, encode_one(Envelope(kind=Kind.REGISTER, sid="", payload=payload, ts=time.time())))
        except NatsError as exc:  # the next heartbeat announces again
            logger.warning("cannot publish inventory on %s: %s", subject, exc)
