"""Error codes that cross the wire as ``{code, message, retryable}``."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Why a request or message was refused."""

    MALFORMED = "malformed"  #: the body is not a valid envelope list
    TOO_LARGE = "too_large"  #: the body is larger than the limit
    UNSUPPORTED_VERSION = "unsupported_version"  #: schema version this process does not speak
    INVALID = "invalid"  #: well-formed but refused (bad definition, bad argument)
    NOT_FOUND = "not_found"  #: unknown jobnet, run, job or agent
    CONFLICT = "conflict"  #: the current state does not allow the request
    FORBIDDEN = "forbidden"  #: the caller's tenant may not do this (another tenant's, or the admin's)
    UNAVAILABLE = "unavailable"  #: try again later (standby, backlog full)
    INTERNAL = "internal"  #: a bug or an infrastructure fault on the answering side


#: Codes a client may retry as they are.
RETRYABLE_CODES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})


@dataclass(frozen=True, slots=True)
class WireError(Exception):
    """An error that is sent to, or came from, another process."""

    code: ErrorCode
    message: str
    retryable: bool = False
    #: seconds after which a retry may succeed (a rate limit says when), if the refusal knows
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_wire(self) -> dict[str, Any]:
        """The ``{code, message, retryable}`` map sent in an ``error`` payload (and ``retry_after_s`` if set)."""
        out: dict[str, Any] = {"code": str(self.code), "message": self.message, "retryable": self.retryable}
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "WireError":
        """Rebuild an error from its wire map; unknown codes become ``internal``."""
        raw = data.get("code")
        code = ErrorCode(str(raw)) if raw in ErrorCode._value2member_map_ else ErrorCode.INTERNAL
        after = data.get("retry_after_s")
        retry_after_s = float(after) if isinstance(after, int | float) and not isinstance(after, bool) else None
        return cls(code, str(data.get("message", "")), bool(data.get("retryable", False)), retry_after_s)
