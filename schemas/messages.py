"""The wire envelope and the typed payloads it carries.

Every NATS body is a msgpack array of one or more envelopes (see ``schemas.codec``), so a batch of
dispatches or events costs one message. An envelope is::

    [version, kind, server_id, epoch, run_id, job_run_id, attempt, tenant, ts, payload]
"""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: Wire schema version this code speaks.
SCHEMA_VERSION = 1


class Kind(StrEnum):
    """What an envelope is."""

    DISPATCH = "dispatch"  #: manager -> relay/agent -> worker: run this attempt
    ACCEPTED = "accepted"  #: event: a relay or agent holds the attempt
    STARTED = "started"  #: event: the command started
    HEARTBEAT = "heartbeat"  #: event: the attempt is still running
    OUTPUT = "output"  #: event: a chunk of live output
    FINISHED = "finished"  #: event: the attempt ended (exit code, output)
    REFUSED = "refused"  #: event: a relay or agent will not take the attempt (with the reason)
    #: reply. To events: ``{"eids": [...]}`` committed. To a dispatch batch: ``{"accepted": [...], "queued":
    #: [...], "refused": [{"attempt_id", "code", "reason"}]}``: accepted means held durably by the receiver;
    #: queued (relays only, a subset of accepted) means already in the destination's JetStream stream.
    ACK = "ack"
    HELLO = "hello"  #: a manager became active: resend everything not yet acked
    REGISTER = "register"  #: an agent announces itself with its inventory
    API = "api"  #: control API request
    REPLY = "reply"  #: control API answer
    ERROR = "error"  #: refusal with ``{code, message, retryable}``
    PROGRESS = "progress"  #: committed state changes of a run
    CONTROL = "control"  #: kill or signal an attempt


#: Kinds that a manager takes on its events subject.
EVENT_KINDS = frozenset({Kind.ACCEPTED, Kind.STARTED, Kind.HEARTBEAT, Kind.OUTPUT, Kind.FINISHED, Kind.REFUSED})


class JobStatus(StrEnum):
    """How an attempt ended, as reported by whoever ran it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    ERROR = "error"  #: could not start (command not found, bad call target)
    LOST = "lost"  #: the executor was lost and the job's restart rules forbid running it again


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: routing fields, then a kind-specific payload map."""

    kind: Kind
    sid: str
    payload: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    run_id: str = ""
    job_run_id: str = ""
    attempt: int = 0
    tenant: str = ""
    ts: float = 0.0
    version: int = SCHEMA_VERSION


def attempt_id(sid: str, run_id: str, job_id: str, attempt: int) -> str:
    """The ID of one attempt, unique across server IDs; also the JetStream dedupe ID."""
    return f"{sid}:{run_id}:{job_id}:{attempt}"


def job_run_id(run_id: str, job_id: str) -> str:
    """The ID of one job within one run."""
    return f"{run_id}:{job_id}"


#: Characters of an attempt token that an event ID carries.
TOKEN_FINGERPRINT_CHARS = 12


def event_id(attempt: str, kind: Kind, seq: int = 0, token: str = "") -> str:
    """The ID an event is acked by: its attempt, kind and sequence (heartbeats and output count up).

    With the attempt's token, the ID ends with a piece of it, so that a forged event (wrong token) never
    has the ID of the genuine one and cannot take its place in an outbox keyed by event ID.
    """
    base = f"{attempt}:{kind}:{seq}"
    return f"{base}:{token[:TOKEN_FINGERPRINT_CHARS]}" if token else base


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything an executor needs to run one attempt. Exactly one of ``argv``, ``shell``, ``call`` is set."""

    attempt_id: str
    job: str
    jobnet: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    call: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float | None = None
    output_limit_bytes: int = 65536
    agent: str | None = None
    dest: str | None = None
    relay: str | None = None
    restart: bool = True
    #: the attempt token the manager made for (attempt, target, epoch); every event of the attempt echoes it
    token: str = ""
    #: the OS user to run the job as (the agent must run as root and allow that user)
    user: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The payload map of a ``dispatch`` envelope."""
        return {
            "attempt_id": self.attempt_id,
            "job": self.job,
            "jobnet": self.jobnet,
            "argv": list(self.argv) if self.argv is not None else None,
            "shell": self.shell,
            "call": self.call,
            "args": self.args,
            "env": self.env,
            "cwd": self.cwd,
            "timeout_s": self.timeout_s,
            "output_limit_bytes": self.output_limit_bytes,
            "agent": self.agent,
            "dest": self.dest,
            "relay": self.relay,
            "restart": self.restart,
            "token": self.token,
            "user": self.user,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "JobSpec":
        """Check and rebuild a job spec from a ``dispatch`` payload.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        argv = data.get("argv")
        if argv is not None and (not isinstance(argv, list) or not all(isinstance(a, str) for a in argv)):
            raise ValueError("argv must be a list of strings")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise ValueError("env must map strings to strings")
        args = data.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError("args must be a map")
        timeout_s = data.get("timeout_s")
        if timeout_s is not None and (not isinstance(timeout_s, int | float) or timeout_s <= 0):
            raise ValueError("timeout_s must be a positive number")
        limit = data.get("output_limit_bytes", 65536)
        if not isinstance(limit, int) or limit < 0:
            raise ValueError("output_limit_bytes must be a non-negative integer")
        spec = cls(
            attempt_id=_req_str(data, "attempt_id"),
            job=_req_str(data, "job"),
            jobnet=_req_str(data, "jobnet"),
            argv=tuple(argv) if argv is not None else None,
            shell=_opt_str(data, "shell"),
            call=_opt_str(data, "call"),
            args=args,
            env=env,
            cwd=_opt_str(data, "cwd"),
            timeout_s=float(timeout_s) if timeout_s is not None else None,
            output_limit_bytes=limit,
            agent=_opt_str(data, "agent"),
            dest=_opt_str(data, "dest"),
            relay=_opt_str(data, "relay"),
            restart=bool(data.get("restart", True)),
            token=_opt_str(data, "token") or "",
            user=_opt_str(data, "user"),
        )
        if sum(x is not None for x in (spec.argv, spec.shell, spec.call)) != 1:
            raise ValueError("exactly one of argv, shell and call must be set")
        if spec.argv is not None and not spec.argv:
            raise ValueError("argv must not be empty")
        return spec


def _req_str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


@dataclass(frozen=True, slots=True)
class Finished:
    """Payload of a ``finished`` event."""

    attempt_id: str
    status: JobStatus
    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    #: bytes of output dropped because it went over the limit
    truncated_bytes: int = 0
    duration_s: float = 0.0
    reason: str = ""
    host: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The payload map of a ``finished`` envelope."""
        return {
            "eid": event_id(self.attempt_id, Kind.FINISHED),
            "attempt_id": self.attempt_id,
            "status": str(self.status),
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated_bytes": self.truncated_bytes,
            "duration_s": self.duration_s,
            "reason": self.reason,
            "host": self.host,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "Finished":
        """Check and rebuild a ``finished`` payload.

        Raises:
            ValueError: a field is missing or has the wrong type.
        """
        status = data.get("status")
        if status not in JobStatus._value2member_map_:
            raise ValueError(f"unknown status {status!r}")
        exit_code = data.get("exit_code")
        if exit_code is not None and not isinstance(exit_code, int):
            raise ValueError("exit_code must be an integer or nil")
        stdout, stderr = data.get("stdout", b""), data.get("stderr", b"")
        if not isinstance(stdout, bytes) or not isinstance(stderr, bytes):
            raise ValueError("stdout and stderr must be bytes")
        duration = data.get("duration_s", 0.0)
        if not isinstance(duration, int | float):
            raise ValueError("duration_s must be a number")
        truncated = data.get("truncated_bytes", 0)
        if not isinstance(truncated, int):
            raise ValueError("truncated_bytes must be an integer")
        return cls(
            attempt_id=_req_str(data, "attempt_id"),
            status=JobStatus(str(status)),
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            truncated_bytes=truncated,
            duration_s=float(duration),
            reason=_opt_str(data, "reason") or "",
            host=_opt_str(data, "host") or "",
        )


def event_for(dispatch: Envelope, kind: Kind, payload: dict[str, Any], ts: float, seq: int = 0) -> Envelope:
    """An event about the attempt that ``dispatch`` carried, routed back to the same server ID and epoch.

    ``payload`` gets the event's ``eid``, ``attempt_id`` and the dispatch's attempt ``token`` added (the
    manager refuses an event whose token is not the one it made for that attempt).
    """
    attempt = dispatch.payload["attempt_id"]
    token = dispatch.payload.get("token")
    token = token if isinstance(token, str) else ""
    return _about(dispatch, kind, {**payload, "eid": event_id(attempt, kind, seq, token), "token": token}, ts)


def output_for(dispatch: Envelope, payload: dict[str, Any], ts: float) -> Envelope:
    """A piece of live output of the attempt that ``dispatch`` carried.

    Unlike an event it carries no attempt token (operators read it) and no event ID (nobody acks it).
    """
    return _about(dispatch, Kind.OUTPUT, payload, ts)


def _about(dispatch: Envelope, kind: Kind, payload: dict[str, Any], ts: float) -> Envelope:
    """An envelope about the attempt ``dispatch`` carried: its routing fields, and ``attempt_id`` in the payload."""
    return Envelope(
        kind=kind,
        sid=dispatch.sid,
        payload={**payload, "attempt_id": dispatch.payload["attempt_id"]},
        epoch=dispatch.epoch,
        run_id=dispatch.run_id,
        job_run_id=dispatch.job_run_id,
        attempt=dispatch.attempt,
        tenant=dispatch.tenant,
        ts=ts,
    )


def ack_for(eids: list[str], sid: str, ts: float) -> Envelope:
    """The reply that acks a batch of events by their IDs once they are committed."""
    return Envelope(kind=Kind.ACK, sid=sid, payload={"eids": eids}, ts=ts)
