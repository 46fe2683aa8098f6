"""Bounded output capture: head and tail kept, the middle cut and counted, memory within the limit."""

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
