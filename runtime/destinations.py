"""The JetStream work-queue stream and durable pull consumer behind each destination."""

import logging

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from schemas import subjects

logger = logging.getLogger(__name__)

#: Seconds a worker may hold a pulled job without acking or sending progress before it is redelivered.
ACK_WAIT_S = 30.0
#: Seconds within which a second publish with the same attempt ID is dropped by JetStream.
DEDUPE_WINDOW_S = 600.0
#: Jobs pulled but not yet acked, across all workers of one destination.
MAX_ACK_PENDING = 20_000


def stream_config(dest: str) -> StreamConfig:
    """Work-queue retention on disk: a job leaves the stream when a worker acks it."""
    return StreamConfig(
        name=subjects.dest_stream(dest),
        subjects=[subjects.dest_run(dest)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DEDUPE_WINDOW_S,
    )


def consumer_config() -> ConsumerConfig:
    """The durable pull consumer every worker of a destination shares."""
    return ConsumerConfig(
        durable_name=subjects.DEST_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,
        max_ack_pending=MAX_ACK_PENDING,
    )


async def ensure_destination(js: JetStreamContext, dest: str) -> None:
    """Create the destination's stream and consumer if they are missing (safe to call from every process)."""
    name = subjects.dest_stream(dest)
    try:
        await js.stream_info(name)
    except Exception:  # NotFoundError, or a JetStream that is still starting: try to create it
        try:
            await js.add_stream(stream_config(dest))
        except BadRequestError as exc:  # another process created it first
            logger.debug("stream %s: %s", name, exc)
    try:
        await js.consumer_info(name, subjects.DEST_CONSUMER)
    except Exception:
        try:
            await js.add_consumer(name, consumer_config())
        except BadRequestError as exc:
            logger.debug("consumer %s/%s: %s", name, subjects.DEST_CONSUMER, exc)
