"""The forwarder in-process, on a real JetStream and a real SQLite file."""

import asyncio
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import StreamConfig

from relay.forwarding import Forwarder
from relay.store import HeldDispatch, RelayStore
from schemas import subjects
from tests.relay.helpers import DEADLINE_S, eventually


async def messages_in(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages or 0)


async def test_a_failing_destination_holds_its_jobs_without_holding_up_the_others(
    nc: Client, uid: str, tmp_path: Path
) -> None:
    good, bad = f"g{uid}", f"b{uid}"
    js = nc.jetstream()
    # A foreign stream already takes the bad destination's subject, so its own stream cannot be made.
    squatter = f"SQUAT_{uid}"
    await js.add_stream(StreamConfig(name=squatter, subjects=[subjects.dest_run(bad)]))
    jobs = [HeldDispatch(f"s:r:{d}:1", d, f"job for {d}".encode()) for d in (bad, good)]

    async with await RelayStore.open(tmp_path / "relay.db") as store:
        await store.hold(jobs)
        forwarder = Forwarder(store)
        forwarder.hold(await store.held())
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(forwarder.run(js))

            async def good_forwarded() -> bool:
                return forwarder.backlog(good) == 0

            await eventually(good_forwarded, "the good destination forwarded")
            assert await messages_in(nc, subjects.dest_stream(good)) == 1
            assert forwarder.backlog(bad) == 1
            assert await store.held() == [jobs[0]]  # still held on disk, for a restart

            await js.delete_stream(squatter)  # the fault is mended: the retry goes through
            async with asyncio.timeout(DEADLINE_S):
                await forwarder.wait_idle()
            forwarder.stop()
            await task
        assert await store.held() == []
    assert await messages_in(nc, subjects.dest_stream(bad)) == 1
