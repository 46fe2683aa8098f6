"""msgpack encoding of envelope batches, with size and shape limits that refuse hostile input."""

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from schemas.errors import ErrorCode, WireError
from schemas.messages import SCHEMA_VERSION, Envelope, Kind

#: Largest body any Ekiden process accepts, in bytes (NATS' default max_payload is 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024
#: Most envelopes in one message.
MAX_ENVELOPES = 10_000
#: Longest array and largest map msgpack may allocate while decoding.
_MAX_CONTAINER_LEN = 100_000
_FIELDS = 10
_KINDS = Kind._value2member_map_


def _pack_one(e: Envelope) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [e.version, str(e.kind), e.sid, e.epoch, e.run_id, e.job_run_id, e.attempt, e.tenant, e.ts, e.payload],
        use_bin_type=True,
    )


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode(envelopes: Sequence[Envelope]) -> bytes:
    """Pack envelopes into one message body."""
    return _array_header(len(envelopes)) + b"".join(_pack_one(e) for e in envelopes)


def encode_one(envelope: Envelope) -> bytes:
    """Pack a single envelope."""
    return b"\x91" + _pack_one(envelope)


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Envelope]:
    """Unpack and check a message body.

    Raises:
        WireError: the body is too large, is not msgpack, is truncated or nested too deep, is not a
            list of envelopes, or speaks a schema version this code does not.
    """
    if len(data) > max_bytes:
        raise WireError(ErrorCode.TOO_LARGE, f"message of {len(data)} bytes is over the {max_bytes}-byte limit")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_array_len=_MAX_CONTAINER_LEN,
            max_map_len=_MAX_CONTAINER_LEN,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types for bad input
        raise WireError(ErrorCode.MALFORMED, f"not a msgpack body: {type(exc).__name__}") from exc
    if not isinstance(raw, list) or not raw:
        raise WireError(ErrorCode.MALFORMED, "body must be a non-empty list of envelopes")
    if len(raw) > MAX_ENVELOPES:
        raise WireError(ErrorCode.TOO_LARGE, f"{len(raw)} envelopes in one message, limit {MAX_ENVELOPES}")
    return [_envelope(item, i) for i, item in enumerate(raw)]


def _envelope(item: Any, index: int) -> Envelope:
    if not isinstance(item, list) or len(item) != _FIELDS:
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] must be a list of {_FIELDS} fields")
    version, kind, sid, epoch, run_id, job_run_id, attempt, tenant, ts, payload = item
    if version != SCHEMA_VERSION:
        raise WireError(ErrorCode.UNSUPPORTED_VERSION, f"envelope [{index}] has schema version {version!r}")
    if kind not in _KINDS:
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] has unknown kind {kind!r}")
    if not (isinstance(sid, str) and isinstance(run_id, str) and isinstance(job_run_id, str)):
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] has a non-string ID")
    if not isinstance(tenant, str):
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] has a non-string tenant")
    if type(epoch) is not int or type(attempt) is not int:
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] has a non-integer epoch or attempt")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] has a non-numeric timestamp")
    if not isinstance(payload, dict):
        raise WireError(ErrorCode.MALFORMED, f"envelope [{index}] payload must be a map")
    return Envelope(
        kind=Kind(kind),
        sid=sid,
        payload=payload,
        epoch=epoch,
        run_id=run_id,
        job_run_id=job_run_id,
        attempt=attempt,
        tenant=tenant,
        ts=float(ts),
        version=version,
    )


def error_reply(error: WireError, sid: str = "", ts: float = 0.0) -> bytes:
    """The body that answers a refused request."""
    return encode_one(Envelope(kind=Kind.ERROR, sid=sid, payload=error.to_wire(), ts=ts))


def chunked(envelopes: Iterable[Envelope], max_bytes: int = MAX_MESSAGE_BYTES // 2) -> list[bytes]:
    """Pack envelopes into as few bodies as fit under ``max_bytes`` each (one envelope may exceed it alone)."""
    bodies: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for env in envelopes:
        one = _pack_one(env)
        if parts and (size + len(one) > max_bytes or len(parts) >= MAX_ENVELOPES):
            bodies.append(_array_header(len(parts)) + b"".join(parts))
            parts, size = [], 0
        parts.append(one)
        size += len(one)
    if parts:
        bodies.append(_array_header(len(parts)) + b"".join(parts))
    return bodies
