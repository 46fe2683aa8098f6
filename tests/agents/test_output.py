"""Bounded output capture: head and tail kept, the middle cut and counted, memory within the limit.

Live output: pieces numbered by their offset in their stream, bounded, and the output so far for a replay.
"""

from agents.live import LIVE_MAX_BYTES, REPLAY_MAX_BYTES, LiveOutput
from agents.output import MAX_STREAM_BYTES, BoundedCapture, cut_marker


def test_output_under_the_limit_is_kept_whole() -> None:
    cap = BoundedCapture(100)
    for piece in (b"abc", b"", b"def" * 10):
        cap.feed(piece)
    assert cap.value() == b"abc" + b"def" * 10
    assert cap.cut_bytes == 0


def test_long_output_keeps_head_and_tail_and_counts_the_cut() -> None:
    cap = BoundedCapture(10)
    data = bytes(range(256)) * 40
    for i in range(0, len(data), 7):
        cap.feed(data[i : i + 7])
        assert len(cap._head) + len(cap._tail) <= 10
    assert cap.cut_bytes == len(data) - 10
    assert cap.value() == data[:5] + cut_marker(len(data) - 10) + data[-5:]


def test_one_huge_piece_is_cut_too() -> None:
    cap = BoundedCapture(6)
    cap.feed(b"a" * 3 + b"b" * 1000 + b"c" * 3)
    assert cap.value() == b"aaa" + cut_marker(1000) + b"ccc"


def test_zero_limit_keeps_only_the_count() -> None:
    cap = BoundedCapture(0)
    cap.feed(b"x" * 50)
    assert cap.cut_bytes == 50
    assert cap.value() == cut_marker(50)


def test_limit_is_capped_so_a_result_fits_one_message() -> None:
    cap = BoundedCapture(10 * MAX_STREAM_BYTES)
    cap.feed(b"y" * (2 * MAX_STREAM_BYTES))
    assert cap.cut_bytes == MAX_STREAM_BYTES


def test_pieces_are_the_kept_bytes_with_their_offsets() -> None:
    cap = BoundedCapture(6)
    assert cap.pieces() == []
    cap.feed(b"abc")
    assert cap.pieces() == [(0, b"abc")]
    cap.feed(b"0123456789")
    assert cap.pieces() == [(0, b"abc"), (10, b"789")]


def test_live_pieces_carry_their_stream_offsets_and_join_when_contiguous() -> None:
    live = LiveOutput()
    live.feed("stdout", b"ab")
    live.feed("stdout", b"cd")
    live.feed("stderr", b"E")
    live.feed("stdout", b"ef")
    assert live.take() == [("stdout", 0, b"abcd"), ("stderr", 0, b"E"), ("stdout", 4, b"ef")]
    assert live.take() == []
    live.feed("stdout", b"g")
    assert live.take() == [("stdout", 6, b"g")]
    live.feed("nonsense", b"x")  # not a stream: ignored
    assert live.take() == []


def test_live_output_over_its_bound_shows_as_a_jump_in_offsets_and_the_replay_keeps_head_and_tail() -> None:
    live = LiveOutput()
    big = b"x" * (LIVE_MAX_BYTES + 10)
    live.feed("stdout", big)
    live.feed("stdout", b"after")
    (piece,) = live.take()
    assert piece == ("stdout", 0, b"x" * LIVE_MAX_BYTES)
    live.feed("stdout", b"next")
    assert live.take() == [("stdout", len(big) + 5, b"next")]
    (head, tail) = live.so_far()
    total = len(big) + 9
    assert head == ("stdout", 0, b"x" * (REPLAY_MAX_BYTES // 2))
    assert tail[0] == "stdout" and tail[1] + len(tail[2]) == total and tail[2].endswith(b"afternext")
