"""The envelope codec: round trips, and refusal of hostile bodies."""

import os

import msgpack
import pytest

from schemas.codec import MAX_MESSAGE_BYTES, chunked, decode, encode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind


def _env(i: int = 0) -> Envelope:
    return Envelope(Kind.HELLO, "site1", {"epoch": i, "blob": b"\x00\x01"}, epoch=i, run_id="7", ts=1.5)


def test_batch_round_trips() -> None:
    envs = [_env(i) for i in range(40)]
    assert decode(encode(envs)) == envs
    assert decode(encode_one(envs[3])) == [envs[3]]


def test_chunked_bodies_hold_every_envelope_in_order() -> None:
    envs = [_env(i) for i in range(3000)]
    bodies = chunked(envs, max_bytes=4096)
    assert len(bodies) > 1
    assert all(len(b) <= 4096 + 100 for b in bodies)
    assert [e for b in bodies for e in decode(b)] == envs


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.MALFORMED),
        (b"\xc1", ErrorCode.MALFORMED),
        (b"\x92\x01", ErrorCode.MALFORMED),
        (b"\x91" * 200_000 + b"\xc0", ErrorCode.MALFORMED),
        (msgpack.packb([]), ErrorCode.MALFORMED),
        (msgpack.packb({"a": 1}), ErrorCode.MALFORMED),
        (msgpack.packb([[1, "hello", "s", 0, "", "", 0, "", 0.0]]), ErrorCode.MALFORMED),
        (msgpack.packb([[99, "hello", "s", 0, "", "", 0, "", 0.0, {}]]), ErrorCode.UNSUPPORTED_VERSION),
        (msgpack.packb([[1, "nope", "s", 0, "", "", 0, "", 0.0, {}]]), ErrorCode.MALFORMED),
        (msgpack.packb([[1, "hello", 5, 0, "", "", 0, "", 0.0, {}]]), ErrorCode.MALFORMED),
        (msgpack.packb([[1, "hello", "s", "0", "", "", 0, "", 0.0, {}]]), ErrorCode.MALFORMED),
        (msgpack.packb([[1, "hello", "s", 0, "", "", 0, "", 0.0, []]]), ErrorCode.MALFORMED),
        (msgpack.packb([[1, "hello", "s", 0, "", "", 0, "", 0.0, {1: 2}]]), ErrorCode.MALFORMED),
        (b"\x00" * (MAX_MESSAGE_BYTES + 1), ErrorCode.TOO_LARGE),
    ],
)
def test_hostile_bodies_are_refused_with_a_code(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as err:
        decode(body)
    assert err.value.code == code


def test_random_bytes_never_escape_as_anything_but_wire_error() -> None:
    good = encode([_env(i) for i in range(5)])
    for n in range(2000):
        blob = os.urandom(n % 300) if n % 2 else good[: n % len(good)]
        try:
            decode(blob)
        except WireError:
            pass
