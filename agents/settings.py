"""Settings of a standard agent or destination worker, built once from the command line and EKIDEN_* variables."""

import argparse
import fnmatch
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.bus import BusSettings
from schemas.names import is_valid_name

#: Attempt IDs a standard agent remembers, to accept a repeated dispatch without running it again.
DEDUPE_MEMORY = 100_000
#: The agent's own variables that its jobs get (glob patterns); ``--env-allow`` adds more.
DEFAULT_ENV_ALLOW = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM")
#: The agent's own configuration (its NATS credentials among it): never passed to a job, whatever is allowed.
NEVER_PASSED = "EKIDEN_*"


def inherited_env(environ: Mapping[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """The agent's variables a job gets: those matching a pattern, never ``EKIDEN_*``."""
    pats = tuple(patterns)
    return {
        k: v
        for k, v in environ.items()
        if not fnmatch.fnmatchcase(k, NEVER_PASSED) and any(fnmatch.fnmatchcase(k, p) for p in pats)
    }


def default_job_env() -> dict[str, str]:
    """What a job gets of this process's environment under the default allow-list."""
    return inherited_env(os.environ, DEFAULT_ENV_ALLOW)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything a standard agent or a destination worker needs to run."""

    bus: BusSettings
    #: Standard agent: the name the manager dispatches to. Worker: a name for logs and started events.
    name: str
    #: Set for a destination worker: the destination whose jobs it pulls.
    dest: str | None = None
    #: Attempts run at once.
    concurrency: int = 4
    #: Seconds running attempts get to finish after SIGTERM before they are killed.
    grace_s: float = 20.0
    #: Seconds between SIGTERM and SIGKILL for a job that is stopped.
    kill_grace_s: float = 5.0
    #: Seconds to wait for a job's pipes to close after its process exited.
    pipe_close_s: float = 1.0
    #: Worker only: exit after this many seconds with nothing running or pulled (None: never).
    idle_exit_s: float | None = None
    #: Seconds between heartbeats (of running attempts, and of a standard agent's inventory).
    heartbeat_s: float = 10.0
    #: Seconds to wait, when stopping, for the last events to be acked.
    outbox_wait_s: float = 10.0
    #: Seconds a worker's pull waits for jobs.
    fetch_timeout_s: float = 1.0
    dedupe_memory: int = DEDUPE_MEMORY
    log_level: str = "INFO"
    log_json: bool = False
    #: OS users a job may ask to run as (``user`` in its definition); honoured only when running as root.
    allow_users: frozenset[str] = frozenset()
    #: The variables of this process that every job gets (see ``inherited_env``); the job's own come on top.
    job_env: dict[str, str] = field(default_factory=default_job_env)

    @property
    def is_worker(self) -> bool:
        """True for a destination worker, False for a standard agent."""
        return self.dest is not None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _name(text: str) -> str:
    if not is_valid_name(text):
        raise argparse.ArgumentTypeError(f"invalid name {text!r}: use letters, digits, '_' and '-' (at most 64)")
    return text


def _words(text: str | None) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _flag(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line, each option defaulting to its EKIDEN_* variable."""

    def env(key: str, default: str | None = None) -> str | None:
        return environ.get(f"EKIDEN_{key}", default)

    # argparse runs string defaults through ``type`` too, so a bad variable is reported like a bad option.
    p = argparse.ArgumentParser(
        prog="python -m agents",
        description="Ekiden standard agent (--name) or destination worker (--dest).",
    )
    p.add_argument("--name", type=_name, default=env("AGENT_NAME"), help="standard agent name [EKIDEN_AGENT_NAME]")
    p.add_argument("--dest", type=_name, default=env("DEST"), help="destination to pull jobs from [EKIDEN_DEST]")
    p.add_argument("--nats", default=env("NATS_URL", "nats://127.0.0.1:4222"), help="NATS URL [EKIDEN_NATS_URL]")
    p.add_argument("--creds", default=env("NATS_CREDS"), help="NATS credentials file [EKIDEN_NATS_CREDS]")
    p.add_argument("--concurrency", type=_positive_int, default=env("CONCURRENCY", "4"), help="[EKIDEN_CONCURRENCY]")
    p.add_argument("--grace", type=_seconds, default=env("GRACE_S", "20"), help="seconds [EKIDEN_GRACE_S]")
    p.add_argument("--kill-grace", type=_seconds, default=env("KILL_GRACE_S", "5"), help="[EKIDEN_KILL_GRACE_S]")
    p.add_argument("--idle-exit", type=_positive_seconds, default=env("IDLE_EXIT_S"), help="[EKIDEN_IDLE_EXIT_S]")
    p.add_argument(
        "--heartbeat-s", type=_positive_seconds, default=env("HEARTBEAT_S", "10"), help="[EKIDEN_HEARTBEAT_S]"
    )
    p.add_argument("--outbox-wait", type=_seconds, default=env("OUTBOX_WAIT_S", "10"), help="[EKIDEN_OUTBOX_WAIT_S]")
    p.add_argument(
        "--allow-user",
        action="append",
        default=_words(env("ALLOW_USERS")),
        metavar="USER",
        help="a job may run as this OS user (repeat; the agent must run as root) [EKIDEN_ALLOW_USERS, comma-separated]",
    )
    p.add_argument(
        "--env-allow",
        action="append",
        default=_words(env("ENV_ALLOW")),
        metavar="PATTERN",
        help="also pass the agent's variables matching this glob to jobs (repeat; EKIDEN_* never) [EKIDEN_ENV_ALLOW]",
    )
    p.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"), help="[EKIDEN_LOG_LEVEL]")
    p.add_argument(
        "--log-json", action="store_true", default=_flag(env("LOG_JSON", "") or ""), help="[EKIDEN_LOG_JSON]"
    )
    return p


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Build the settings from the command line and the environment (argv wins); exit 2 on a bad value."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    ns = parser.parse_args(list(argv))
    dest: str | None = ns.dest
    name: str | None = ns.name
    if dest is None and name is None:
        parser.error("give --name (a standard agent) or --dest (a destination worker)")
    if name is None:
        # Workers come and go; this only labels their logs and started events.
        name = f"{socket.gethostname()}-{os.getpid()}"
    return AgentSettings(
        bus=BusSettings(url=ns.nats, creds_file=ns.creds, name=f"ekiden-{'worker' if dest else 'agent'}-{name}"),
        name=name,
        dest=dest,
        concurrency=ns.concurrency,
        grace_s=ns.grace,
        kill_grace_s=ns.kill_grace,
        idle_exit_s=ns.idle_exit,
        heartbeat_s=ns.heartbeat_s,
        outbox_wait_s=ns.outbox_wait,
        log_level=ns.log_level,
        log_json=ns.log_json,
        allow_users=frozenset(ns.allow_user),
        job_env=inherited_env(environ, (*DEFAULT_ENV_ALLOW, *ns.env_allow)),
    )
