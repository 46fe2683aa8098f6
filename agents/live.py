"""A running job's live output: the pieces waiting to be published, and what it wrote so far for a late follower.

Every piece carries its byte offset in its stream, so a follower puts together what it is sent more than
once (a replay of the output so far, then the live pieces that overlap it) and sees where bytes are
missing (over the live bound, or cut from the middle of a long replay).
"""

from agents.output import BoundedCapture

#: Seconds between publications of a running job's live output.
LIVE_FLUSH_S = 0.25
#: Most live output buffered between two publications, in bytes (more is dropped from the live view only).
LIVE_MAX_BYTES = 256 * 1024
#: Most of each stream kept for a follower who attaches late, in bytes (its head and its tail).
REPLAY_MAX_BYTES = 128 * 1024
#: The streams of a job's output.
STREAMS = ("stdout", "stderr")

#: A piece of a stream: ``(stream, offset in the stream, bytes)``.
Piece = tuple[str, int, bytes]


class LiveOutput:
    """A running job's output waiting to be published (bounded), and the head and tail of each stream so far."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, int, bytearray]] = []
        self._size = 0
        self._history = {stream: BoundedCapture(REPLAY_MAX_BYTES) for stream in STREAMS}
        #: the job outlived the start delay: its output is being published
        self.streaming = False

    def feed(self, stream: str, data: bytes) -> None:
        """Take a piece of ``stream`` (called by the executor as output comes)."""
        history = self._history.get(stream)
        if history is None:
            return
        offset = history.total_bytes
        history.feed(data)
        kept = data[: max(0, LIVE_MAX_BYTES - self._size)]  # the rest shows as a jump in offsets
        if not kept:
            return
        last = self._pending[-1] if self._pending else None
        if last is not None and last[0] == stream and last[1] + len(last[2]) == offset:
            last[2].extend(kept)
        else:
            self._pending.append((stream, offset, bytearray(kept)))
        self._size += len(kept)

    def take(self) -> list[Piece]:
        """What to publish now."""
        pieces = [(stream, offset, bytes(data)) for stream, offset, data in self._pending]
        self._pending, self._size = [], 0
        return pieces

    def so_far(self) -> list[Piece]:
        """What each stream wrote so far, as far as it was kept (its head and tail when it is long)."""
        return [(stream, offset, data) for stream in STREAMS for offset, data in self._history[stream].pieces()]
