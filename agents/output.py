"""Bounded capture of a job's output: keep the head and the tail, count what was cut from the middle."""

from collections.abc import Callable

#: Most output kept per stream whatever a spec asks, in bytes, so that a finished event with both
#: streams always fits one NATS message (1 MiB by default).
MAX_STREAM_BYTES = 384 * 1024
#: Bytes read from a pipe at a time.
READ_CHUNK_BYTES = 64 * 1024


def cut_marker(cut_bytes: int) -> bytes:
    """The line put where the middle of an over-long output was dropped."""
    return b"\n[ekiden: %d bytes cut]\n" % cut_bytes


class BoundedCapture:
    """Holds at most ``limit_bytes`` of a stream: the first half of the limit and the last half.

    Memory stays within the limit however much is fed, so a job that writes gigabytes costs nothing more
    than one that writes the limit.
    """

    def __init__(self, limit_bytes: int, tap: Callable[[bytes], None] | None = None) -> None:
        limit = max(0, min(limit_bytes, MAX_STREAM_BYTES))
        #: sees every piece as it comes (live output), before the bound
        self._tap = tap
        self._head_max = limit // 2
        self._tail_max = limit - self._head_max
        self._head = bytearray()
        self._tail = bytearray()
        #: Bytes fed so far.
        self.total_bytes = 0

    def feed(self, data: bytes) -> None:
        """Take the next piece of the stream."""
        if self._tap is not None:
            self._tap(data)
        self.total_bytes += len(data)
        view = memoryview(data)
        room = self._head_max - len(self._head)
        if room > 0:
            self._head += view[:room]
            view = view[room:]
        if not view or self._tail_max == 0:
            return
        if len(view) >= self._tail_max:
            self._tail[:] = view[len(view) - self._tail_max :]
            return
        # Make room first, so the buffer never grows past the limit even for a moment.
        excess = len(self._tail) + len(view) - self._tail_max
        if excess > 0:
            del self._tail[:excess]
        self._tail += view

    @property
    def cut_bytes(self) -> int:
        """Bytes dropped from the middle."""
        return self.total_bytes - len(self._head) - len(self._tail)

    def pieces(self) -> list[tuple[int, bytes]]:
        """What was kept as ``(offset in the stream, bytes)``: one piece, or the head and the tail around a cut."""
        if self.cut_bytes == 0:
            whole = bytes(self._head + self._tail)
            return [(0, whole)] if whole else []
        kept = [(0, bytes(self._head)), (self.total_bytes - len(self._tail), bytes(self._tail))]
        return [(offset, data) for offset, data in kept if data]

    def value(self) -> bytes:
        """What was kept, with a marker line where the middle was cut."""
        cut = self.cut_bytes
        if cut == 0:
            return bytes(self._head + self._tail)
        return bytes(self._head) + cut_marker(cut) + bytes(self._tail)
