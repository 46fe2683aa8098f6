"""The control API: request-reply verbs on ``ekiden.<sid>.api.<tenant>.<verb>``, answered by the active manager.

The tenant token of the subject is the caller's tenant (NATS permissions pin each operator credential to
its own; see ``engine.tenancy``): every answer is scoped to it, and each caller has a rate limit.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from engine import tenancy
from engine.commands import RUN_COMMANDS
from engine.core import Command, Core
from engine.queries import SiteQueries
from engine.ratelimit import RateLimiter
from engine.settings import ManagerSettings
from engine.sitefile import read_status
from engine.store import Lease
from runtime.bus import reply
from schemas import subjects
from schemas.codec import decode, encode_one, error_reply
from schemas.definitions import DEFAULT_RELAY, DEFAULT_TENANT
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind

logger = logging.getLogger(__name__)

#: Requests handled at once.
MAX_CONCURRENT_REQUESTS = 64
#: Seconds a state-changing command may wait for its commit.
COMMAND_TIMEOUT_S = 30.0
#: Seconds a relay gets to report its destinations.
RELAY_STATS_TIMEOUT_S = 2.0
#: Most runs one listing returns.
MAX_LIST = 1000

#: The tenant token of the request being answered (each request is handled in a task of its own).
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller_tenant", default=tenancy.ADMIN)


class Api:
    """Answers control requests: reads go to the database, changes go through the core."""

    def __init__(self, core: Core, queries: SiteQueries, settings: ManagerSettings, lease: Lease, nc: Client) -> None:
        self._core = core
        self._queries = queries
        self._settings = settings
        self._lease = lease
        self._nc = nc
        self._limiter = RateLimiter(settings.api_rate_per_s, settings.api_burst)
        self._verbs: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self._ping,
            "site": self._site,
            "apply": self._command("apply"),
            "run": self._command("run"),
            "maintenance": self._command("maintenance"),
            "agent": self._command("agent"),
            **{verb: self._command(verb) for verb in RUN_COMMANDS},
            "status": self._status,
            "runs": self._runs,
            "jobnets": self._jobnets,
            "agents": self._agents,
            "logs": self._logs,
            "live": self._live,
            "destinations": self._destinations,
            "audit": self._audit,
            "locks": self._locks,
            "purge": self._command("purge"),
            "schedule": self._command("schedule"),
        }

    def add_verbs(self, verbs: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]) -> None:
        """Answer more read-only verbs (each takes the request's arguments and returns its result)."""
        self._verbs.update(verbs)

    async def serve(self, sub: Subscription) -> None:
        """Answer requests from ``sub`` until cancelled."""
        slots = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        async with asyncio.TaskGroup() as tg:
            async for msg in sub.messages:
                await slots.acquire()
                tg.create_task(self._handle(msg, slots))

    async def _handle(self, msg: Msg, slots: asyncio.Semaphore) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        try:
            caller = subjects.api_caller(msg.subject)
            if caller is None:
                raise WireError(ErrorCode.NOT_FOUND, f"not an API subject: {msg.subject!r}")
            tenant, verb = caller
            self._admit(tenant)
            handler = self._verbs.get(verb)
            if handler is None:
                raise WireError(ErrorCode.NOT_FOUND, f"unknown API verb {verb!r}")
            tenancy.check_verb(verb, tenant)
            _CALLER.set(tenant)
            args = decode(msg.data)[0].payload
            result = await handler(args)
            body = encode_one(
                Envelope(Kind.REPLY, self._settings.server_id, {"result": result}, self._lease.epoch, ts=time.time())
            )
        except WireError as exc:
            body = error_reply(exc, self._settings.server_id, time.time())
        except Exception as exc:  # the per-request boundary: log once, answer with an error
            logger.exception("API %s failed", verb)
            body = error_reply(WireError(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}", True))
        finally:
            slots.release()
        try:
            await reply(msg, body)
        except Exception as exc:  # the requester is gone; it will retry or give up
            logger.debug("API reply to %s lost: %s", verb, exc)

    def _admit(self, tenant: str) -> None:
        """Take a token from the caller's bucket, or refuse with when to try again."""
        wait_s = self._limiter.take(tenant)
        if wait_s:
            raise WireError(
                ErrorCode.UNAVAILABLE,
                f"too many requests from tenant {tenant!r}: retry in {wait_s:.2f}s",
                retryable=True,
                retry_after_s=max(0.001, round(wait_s, 3)),
            )

    def _command(self, verb: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def run_command(args: dict[str, Any]) -> Any:
            said = args.pop("_caller", None)
            # Who the client says it is goes to the audit log; its tenant is the one NATS vouches for.
            caller = {**(said if isinstance(said, dict) else {"user": "unknown"}), "tenant": _CALLER.get()}
            cmd = Command(verb, args, caller=caller)
            await self._core.queue.put(cmd)
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await cmd.done

        return run_command

    async def _ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {
            "server_id": self._settings.server_id,
            "epoch": self._lease.epoch,
            "host": self._settings.host,
            "pid": self._settings.pid,
            "site": str(self._settings.site_dir),
            "maintenance": self._core.maintenance,
            "runs_active": len(self._core.runs),
        }

    async def _site(self, _args: dict[str, Any]) -> dict[str, Any]:
        # The same document 'ekiden site status' reads from the file with no manager running.
        doc = await asyncio.to_thread(read_status, self._settings.site_dir)
        doc["answered_by"] = {"host": self._settings.host, "pid": self._settings.pid, "epoch": self._lease.epoch}
        return doc

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id = str(args.get("run", ""))
        doc = await self._queries.run_doc(run_id)
        if doc is None or not tenancy.visible([doc], _CALLER.get()):
            raise WireError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
        return doc

    async def _runs(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        jobnet = args.get("jobnet")
        limit = args.get("limit", 50)
        if not isinstance(limit, int) or not 0 < limit <= MAX_LIST:
            raise WireError(ErrorCode.INVALID, f"limit must be an integer in 1..{MAX_LIST}")
        tenant = _CALLER.get()
        only = None if tenancy.is_admin(tenant) else tenant
        return await self._queries.runs(jobnet if isinstance(jobnet, str) else None, limit, only)

    async def _jobnets(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        return tenancy.visible(await self._queries.jobnets(), _CALLER.get())

    async def _agents(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        agents = await self._queries.agents()
        for agent in agents:
            agent["seen_s_ago"] = round(now - agent["last_seen"], 1) if agent["last_seen"] else None
            agent["tenant"] = tenancy.agent_tenant(agent["name"], self._core.targets)
        return tenancy.visible(agents, _CALLER.get())

    async def _destinations(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        """Every destination with what its relays report: pending, running, held, workers, oldest pending age."""
        targets = self._core.targets
        relays = {targets.relay_of(name) for name in targets.destinations} | {DEFAULT_RELAY}
        rows: dict[str, dict[str, Any]] = {
            name: {"name": name, "relay": d.relay, "tenant": d.tenant, "restart": str(d.restart), "reported": False}
            for name, d in targets.destinations.items()
        }
        by_relay = {r: sorted(n for n in targets.destinations if targets.relay_of(n) == r) for r in relays}
        async with asyncio.TaskGroup() as tg:
            asks = {relay: tg.create_task(self._relay_stats(relay, by_relay[relay])) for relay in sorted(relays)}
        for relay, ask in asks.items():
            for row in rows.values():
                if row["relay"] == relay and ask.result() is None:
                    row["error"] = f"relay {relay} did not answer"
            for stats in ask.result() or []:
                name = stats.get("name")
                if not isinstance(name, str):
                    continue
                row = rows.setdefault(name, {"name": name, "relay": relay, "tenant": None, "restart": None})
                row.update({k: stats.get(k) for k in ("pending", "running", "held", "workers", "oldest_pending_age_s")})
                row["reported"] = True
        return sorted(tenancy.visible(list(rows.values()), _CALLER.get()), key=lambda r: r["name"])

    async def _locks(self, _args: dict[str, Any]) -> list[dict[str, Any]]:
        """Every lock: capacity, holders (run or run:job, with weight) and the jobs waiting for it."""
        admission = self._core.admission
        waiting = self._core.waiting_jobs()
        names = sorted(set(admission.locks) | set(admission.holders))
        return [
            {
                "name": name,
                "capacity": admission.locks[name].capacity if name in admission.locks else 1,
                "holders": [{"holder": h, "weight": w} for h, w in sorted(admission.holders.get(name, {}).items())],
                "waiters": [w for w, reason in waiting if reason.startswith(f"waiting for lock {name} ")],
            }
            for name in names
        ]

    async def _audit(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        limit = args.get("limit", 100)
        if not isinstance(limit, int) or not 0 < limit <= MAX_LIST:
            raise WireError(ErrorCode.INVALID, f"limit must be an integer in 1..{MAX_LIST}")
        return await self._queries.audit(limit)

    async def _relay_stats(self, relay: str, destinations: list[str]) -> list[dict[str, Any]] | None:
        """What relays of this name report of their destinations (and of ``destinations``); None: no answer."""
        ask = Envelope(Kind.API, self._settings.server_id, {"destinations": destinations}, ts=time.time())
        try:
            msg = await self._nc.request(subjects.relay_stats(relay), encode_one(ask), timeout=RELAY_STATS_TIMEOUT_S)
            reply = decode(msg.data)[0]
        except Exception as exc:  # no relay of that name answers: its destinations show as not reported
            logger.debug("relay %s stats: %s", relay, exc)
            return None
        found = reply.payload.get("destinations") if reply.kind == Kind.REPLY else None
        return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []

    async def _live(self, args: dict[str, Any]) -> dict[str, Any]:
        """Ask the running attempts of a job to publish their output so far on their live output subjects."""
        run_id, job_id = str(args.get("run", "")), str(args.get("job", ""))
        run = self._core.runs.get(run_id)
        tenant = _CALLER.get()
        if run is None or (not tenancy.is_admin(tenant) and (run.tenant or DEFAULT_TENANT) != tenant):
            raise WireError(ErrorCode.NOT_FOUND, f"run {run_id!r} is not running")
        job = run.jobs.get(job_id)
        if job is None:
            raise WireError(ErrorCode.NOT_FOUND, f"run {run_id} has no job {job_id!r}")
        asked = [a for a in job.live_attempts() if not a.status]
        ask = Envelope(Kind.CONTROL, self._settings.server_id, {"action": "replay"}, self._lease.epoch, ts=time.time())
        for attempt in asked:
            await self._nc.publish(subjects.control(attempt.target, attempt.attempt_id), encode_one(ask))
        return {"run": run.run_id, "job": job.id, "attempts": [a.attempt_id for a in asked]}

    async def _logs(self, args: dict[str, Any]) -> dict[str, Any]:
        run_id, job = str(args.get("run", "")), str(args.get("job", ""))
        n = args.get("attempt")
        tenant = _CALLER.get()
        if not tenancy.is_admin(tenant):
            doc = await self._queries.run_doc(run_id)
            if doc is None or not tenancy.visible([doc], tenant):
                raise WireError(ErrorCode.NOT_FOUND, f"no attempt of job {job!r} in run {run_id!r}")
        out = await self._queries.output(run_id, job, n if isinstance(n, int) else None)
        if out is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no attempt of job {job!r} in run {run_id!r}")
        return out
