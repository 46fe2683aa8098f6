"""The follower's printer: pieces printed once each and in order by their offsets, missing bytes counted."""

import pytest

from ekiden.livelogs import Printer
from schemas.messages import Envelope, Kind


def _piece(stream: str, offset: int | None, data: bytes, replay: bool = False) -> Envelope:
    payload: dict[str, object] = {"stream": stream, "data": data, "attempt_id": "a"}
    if offset is not None:
        payload["offset"] = offset
    if replay:
        payload["replay"] = True
    return Envelope(Kind.OUTPUT, "s", payload)


def test_overlapping_pieces_print_once_and_a_gap_is_counted(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    printer = Printer()
    for env in (
        _piece("stdout", 0, b"hello ", replay=True),
        _piece("stderr", 0, b"E1", replay=True),
        _piece("stdout", 0, b"hello wor"),  # live piece overlapping the replay
        _piece("stdout", 9, b"ld\n"),
        _piece("stdout", 3, b"lo"),  # already printed
        _piece("stdout", 20, b"later\n"),  # 8 bytes never came
        _piece("stderr", None, b"E2"),  # not numbered: taken as it comes
        _piece("other", 0, b"ignored"),
    ):
        printer.piece(env)
    out, err = capfdbinary.readouterr()
    assert out == b"hello world\nlater\n"
    assert err == b"E1[ekiden: 8 bytes of stdout not shown]\nE2"
    assert printer.shown == len(b"hello world\nlater\nE1E2")


def test_a_new_attempt_starts_its_streams_again(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    printer = Printer()
    printer.piece(_piece("stdout", 0, b"first try\n"))
    printer.restart()
    printer.piece(_piece("stdout", 0, b"second\n"))
    assert capfdbinary.readouterr().out == b"first try\nsecond\n"
