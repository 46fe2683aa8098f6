"""Relay stats and metrics with a real relay, real workers and a real JetStream."""

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.messages import Envelope, Kind
from tests.agents.helpers import AgentProcess, EventSink
from tests.relay.helpers import DEADLINE_S, RelayProcess, dispatch, eventually, free_port, send_dispatches, wait_ready

StartRelay = Callable[..., RelayProcess]
_SAMPLE = re.compile(r'^(\w+)\{destination="([^"]+)",relay="([^"]+)"\} (\S+)$')


async def stats(nc: Client, relay: str) -> dict[str, dict[str, Any]]:
    """A stats request, as ``ekiden ls destinations`` makes it: destination name -> figures."""
    reply = await nc.request(subjects.relay_stats(relay), b"", timeout=DEADLINE_S)
    (env,) = decode(reply.data)
    assert env.kind == Kind.REPLY and env.payload["relay"] == relay
    return {d["name"]: d for d in env.payload["destinations"]}


def scrape(port: int) -> dict[tuple[str, str], float]:
    """GET /metrics: (metric, destination) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE_S) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if (m := _SAMPLE.match(line)) is not None:
            samples[(m[1], m[2])] = float(m[4])
    return samples


async def test_stats_and_metrics_show_queued_work_running_jobs_and_live_workers(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, tmp_path: Path
) -> None:
    name, dest, quiet = f"r{uid}", f"d{uid}", f"q{uid}"
    port = free_port()
    relays(name, nats_url, extra=["--metrics-port", str(port)])
    await wait_ready(nc, subjects.relay_run(name))
    await EventSink.start(nc, subjects.events(sid))
    jobs = [dispatch(sid, name, dest, f"j{i}") for i in range(5)]
    for job in jobs:
        job.payload["argv"] = ["sleep", "60"]
    assert len((await send_dispatches(nc, name, jobs))["accepted"]) == 5
    args = ["--dest", dest, "--nats", nats_url, "--concurrency", "2", "--heartbeat-s", "0.3", "--grace", "0"]
    worker = AgentProcess([*args, "--kill-grace", "0.5"], tmp_path / "worker.log")
    # A destination heard of only through a heartbeat: listed, nothing pending.
    beat = {"name": "w", "kind": "worker", "dest": quiet, "host": "h", "slots": 1, "running": 0, "version": "0"}
    await nc.publish(subjects.dest_heartbeat(quiet), encode_one(Envelope(Kind.REGISTER, "", beat, ts=time.time())))
    try:
        expected = {"pending": 3, "running": 2, "held": 0, "workers": 1}

        async def settled() -> bool:
            got = (await stats(nc, name)).get(dest, {})
            return {k: got.get(k) for k in expected} == expected

        await eventually(settled, f"stats of {dest} to be {expected}")
        figures = await stats(nc, name)
        assert figures[dest]["oldest_pending_age_s"] is not None and figures[dest]["oldest_pending_age_s"] >= 0
        assert figures[quiet] == {
            "name": quiet,
            "pending": 0,
            "running": 0,
            "held": 0,
            "workers": 1,
            "oldest_pending_age_s": None,
        }

        metrics = await asyncio.to_thread(scrape, port)
        for key, value in expected.items():
            assert metrics[(f"ekiden_destination_{key}", dest)] == value, key
        assert metrics[("ekiden_destination_oldest_pending_age_seconds", dest)] >= 0
        assert metrics[("ekiden_destination_oldest_pending_age_seconds", quiet)] == 0

        # A paused worker stops heartbeating: no longer counted, though its jobs stay delivered (AckWait).
        worker.proc.send_signal(signal.SIGSTOP)
        paused = {"pending": 3, "running": 2, "held": 0, "workers": 0}

        async def paused_seen() -> bool:
            got = (await stats(nc, name)).get(dest, {})
            return {k: got.get(k) for k in paused} == paused

        await eventually(paused_seen, f"stats of {dest} to be {paused}")
        metrics = await asyncio.to_thread(scrape, port)
        assert metrics[("ekiden_destination_workers", dest)] == 0
    finally:
        worker.proc.send_signal(signal.SIGCONT)
        await worker.stop()
        await nc.jetstream().delete_stream(subjects.dest_stream(dest))


async def test_stats_report_the_relays_own_backlog_while_the_destinations_are_unreachable(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    port = free_port()
    relays(name, nats_url, downstream_url=f"nats://127.0.0.1:{free_port()}", extra=["--metrics-port", str(port)])
    await wait_ready(nc, subjects.relay_run(name))
    await send_dispatches(nc, name, [dispatch(sid, name, dest, f"j{i}") for i in range(2)])
    figures = await stats(nc, name)
    assert figures[dest] == {
        "name": dest,
        "pending": None,
        "running": None,
        "held": 2,
        "workers": 0,
        "oldest_pending_age_s": None,
    }
    metrics = await asyncio.to_thread(scrape, port)
    assert metrics[("ekiden_destination_held", dest)] == 2
    assert ("ekiden_destination_pending", dest) not in metrics  # unknown, so absent rather than wrong


async def test_the_metrics_endpoint_answers_only_get_metrics(
    nc: Client, nats_url: str, uid: str, relays: StartRelay
) -> None:
    name = f"r{uid}"
    port = free_port()
    relay = relays(name, nats_url, extra=["--metrics-port", str(port)])
    await wait_ready(nc, subjects.relay_run(name))
    for request, status in [
        (b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"\x00\xff garbage\r\n\r\n", b""),
        (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 20_000 + b"\r\n\r\n", b""),
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            answer = await reader.read()
        writer.close()
        assert answer.split(b" ", 2)[1:2] == ([status] if status else []), answer[:80]
    assert "ekiden_relay_downstream_connected" in await asyncio.to_thread(_text, port)
    assert relay.proc is not None and relay.proc.poll() is None


def _text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=DEADLINE_S) as resp:
        return str(resp.read().decode())


def test_a_metrics_port_in_use_stops_the_relay_with_the_reason(tmp_path: Path, nats_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--name", "m", "--upstream", nats_url, "--db", str(tmp_path / "m.db"), "--metrics-port", str(port)]
        done = subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True, timeout=DEADLINE_S)
    assert done.returncode != 0
    assert f"relay: metrics endpoint 127.0.0.1:{port}:".encode() in done.stderr
