"""Who may publish and subscribe what on NATS: the roles, their subjects, the server config and the credentials.

``ekiden security init`` keeps a site's ``security/`` folder::

    security/nats-server.conf          users (nkey public keys) and their permissions, for nats-server -c
    security/<role>/<name>.creds       one credential per identity, mode 0600 (runtime.credentials)
    security/attempt-tokens.key        the managers' attempt-token secret (engine.tokens)

Every identity gets an allow-list of subjects to publish and to subscribe, and its own reply-inbox prefix,
so that no one can read another's replies. Running it again keeps every existing key and adds what is
asked for; ``rotate`` makes new keys for the identities named (or all). See docs/security.md.
"""

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import nkeys  # type: ignore[import-untyped]

from engine.tenancy import READ_VERBS
from engine.tokens import SECURITY_DIR, load_or_create_secret
from runtime.credentials import read_credentials, render_credentials
from schemas import subjects
from schemas.names import check_name

#: The server configuration file, inside the security folder.
CONFIG_FILE = "nats-server.conf"
#: The server TLS files last given to ``init``, inside the security folder.
TLS_FILE = "tls.json"
#: Seconds a client has to authenticate.
AUTH_TIMEOUT_S = 2
#: Largest message the server accepts, in bytes (what schemas.codec accepts too).
MAX_PAYLOAD_BYTES = 1024 * 1024


class Role(StrEnum):
    """What a credential is for."""

    MANAGER = "manager"  #: named by server ID; both managers of an HA pair share it
    RELAY = "relay"  #: named by relay name
    WORKER = "worker"  #: named by destination; every worker of it shares it
    AGENT = "agent"  #: named by standard agent
    OPERATOR = "operator"  #: named by tenant: that tenant's whole API
    OPERATOR_RO = "operator-ro"  #: named by tenant: that tenant's read-only verbs
    ADMIN = "admin"  #: every tenant's whole API


@dataclass(frozen=True, slots=True)
class Identity:
    """One credential: a role and the name it is bound to."""

    role: Role
    name: str

    def __post_init__(self) -> None:
        check_name(self.name, str(self.role))

    @property
    def inbox_prefix(self) -> str:
        """The reply-inbox prefix this credential subscribes under."""
        return subjects.inbox_prefix(str(self.role), self.name)

    @property
    def tenant(self) -> str | None:
        """The tenant of an operator credential."""
        return self.name if self.role in (Role.OPERATOR, Role.OPERATOR_RO) else None

    def path(self, security_dir: Path) -> Path:
        """Where its credentials file lives."""
        return security_dir / str(self.role) / f"{self.name}.creds"

    def __str__(self) -> str:
        return f"{self.role} {self.name}"


#: The admin's identity (one per site).
ADMIN = Identity(Role.ADMIN, "admin")


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one identity may publish and subscribe."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: may answer requests it received (publish once to their reply subjects)
    allow_responses: bool


def permissions(who: Identity) -> Permissions:
    """The subjects an identity needs, and no others."""
    inbox = subjects.under(who.inbox_prefix)
    hello = subjects.hello_all()
    if who.role == Role.MANAGER:
        sid = who.name
        return Permissions(
            publish=(
                subjects.hello(sid),
                subjects.all_run_updates(sid),
                subjects.all_agent_runs(),
                subjects.all_relay_runs(),
                subjects.all_relay_stats(),
                subjects.control_all(),
            ),
            subscribe=(
                subjects.events(sid),
                subjects.api_all(sid),
                subjects.ALL_AGENT_HEARTBEATS,
                inbox,
            ),
            allow_responses=True,
        )
    if who.role == Role.RELAY:
        return Permissions(
            publish=(
                subjects.all_events(),
                subjects.all_dest_runs(),
                subjects.all_output(),
                subjects.dest_controls(),
                *_relay_jetstream(),
            ),
            subscribe=(
                subjects.all_output(),
                subjects.dest_controls(),
                subjects.relay_run(who.name),
                subjects.relay_events(who.name),
                subjects.relay_stats(who.name),
                hello,
                subjects.all_dest_heartbeats(),
                inbox,
            ),
            allow_responses=True,
        )
    if who.role == Role.WORKER:
        stream = subjects.dest_stream(who.name)
        return Permissions(
            publish=(
                subjects.all_relay_events(),
                subjects.all_output(),
                subjects.dest_heartbeat(who.name),
                subjects.js_consumer_api("CONSUMER.MSG.NEXT", stream),
                subjects.js_acks(stream),
                subjects.js_stream_api("STREAM.INFO", stream),
                subjects.js_consumer_api("CONSUMER.INFO", stream),
            ),
            subscribe=(hello, subjects.controls_of(f"dest:{who.name}"), inbox),
            allow_responses=True,
        )
    if who.role == Role.AGENT:
        return Permissions(
            publish=(
                subjects.all_events(),
                subjects.all_output(),
                subjects.agent_heartbeat(who.name),
            ),
            subscribe=(subjects.agent_run(who.name), hello, subjects.controls_of(f"agent:{who.name}"), inbox),
            allow_responses=True,
        )
    if who.role == Role.OPERATOR:
        pub: tuple[str, ...] = (subjects.api_grant(who.name),)
    elif who.role == Role.OPERATOR_RO:
        pub = tuple(subjects.api_grant(who.name, verb) for verb in READ_VERBS)
    else:
        pub = (subjects.api_grant(subjects.ALL_TENANTS),)
    grants = (subjects.run_updates_grant(who.tenant), subjects.output_grant(who.tenant), inbox)
    return Permissions(publish=pub, subscribe=grants, allow_responses=False)


def _relay_jetstream() -> tuple[str, ...]:
    """The JetStream API a relay uses for destination streams: look up, create, read the oldest job. No delete."""
    return (
        subjects.js_stream_api("STREAM.INFO"),
        subjects.js_stream_api("STREAM.CREATE"),
        subjects.js_stream_api("STREAM.MSG.GET"),
        subjects.js_stream_api("DIRECT.GET"),
        subjects.js_consumer_api("CONSUMER.INFO"),
        subjects.js_consumer_api("CONSUMER.CREATE"),
        subjects.js_consumer_api("CONSUMER.DURABLE.CREATE"),
    )


@dataclass(frozen=True, slots=True)
class Tls:
    """Server TLS for non-loopback use: the server's certificate and key, and the CA clients verify it with."""

    cert_file: Path
    key_file: Path
    ca_file: Path


def _tls_files(tls: Tls) -> dict[str, Path]:
    """The TLS files by name."""
    return {"cert_file": tls.cert_file, "key_file": tls.key_file, "ca_file": tls.ca_file}


def _saved_tls(base: Path) -> Tls | None:
    try:
        doc = json.loads((base / TLS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return Tls(Path(doc["cert_file"]), Path(doc["key_file"]), Path(doc["ca_file"]))


def security_dir(site: Path) -> Path:
    """The security folder of a site."""
    return site / SECURITY_DIR


def config_path(site: Path) -> Path:
    """The nats-server configuration file of a site."""
    return security_dir(site) / CONFIG_FILE


def existing(site: Path) -> list[Identity]:
    """Every identity that has a credentials file in the site's security folder."""
    found: list[Identity] = []
    base = security_dir(site)
    for role in Role:
        folder = base / str(role)
        if folder.is_dir():
            found += [Identity(role, p.stem) for p in sorted(folder.glob("*.creds"))]
    return found


def init(
    site: Path, wanted: Iterable[Identity], rotate: Iterable[Identity] = (), tls: Tls | None = None
) -> list[Identity]:
    """Make the credentials that are missing (and new ones for ``rotate``), then write the server config.

    Every identity found in the folder is kept; the admin always exists. TLS, once given, is remembered
    (``security/tls.json``) and every credential names its CA. Also makes the attempt-token secret.

    Returns:
        Every identity the config names, sorted.
    """
    base = security_dir(site)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    if tls is not None:
        _write_secret(base / TLS_FILE, json.dumps({k: str(v.resolve()) for k, v in _tls_files(tls).items()}))
    else:
        tls = _saved_tls(base)
    ca = str(tls.ca_file) if tls is not None else None
    renew = set(rotate)
    everyone = sorted({*existing(site), *wanted, *renew, ADMIN}, key=lambda i: (str(i.role), i.name))
    users: list[tuple[Identity, str]] = []
    for who in everyone:
        path = who.path(base)
        old = read_credentials(path) if path.exists() and who not in renew else None
        seed = old.seed if old is not None and old.seed else _new_seed()
        if old is None or old.tls_ca_file != ca:
            _write_secret(path, render_credentials(seed, str(who.role), who.name, who.inbox_prefix, who.tenant, ca))
        users.append((who, _public_key(seed)))
    _write_secret(config_path(site), render_config(users, tls))
    load_or_create_secret(site)
    return everyone


def render_config(users: list[tuple[Identity, str]], tls: Tls | None = None) -> str:
    """The nats-server configuration: one nkey user per identity with its permissions."""
    lines = [
        "# NATS server configuration made by 'ekiden security init': run that again rather than editing this.",
        "# Start the server with: nats-server -c nats-server.conf -js (add -a/-p/-sd as needed).",
        f"max_payload: {MAX_PAYLOAD_BYTES}",
        "authorization {",
        f"  timeout: {AUTH_TIMEOUT_S}",
        "  users: [",
    ]
    for who, public_key in users:
        perms = permissions(who)
        lines += [
            f"    # {who}",
            "    {",
            f"      nkey: {_q(public_key)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(perms.publish)} }}",
            f"        subscribe: {{ allow: {_list(perms.subscribe)} }}",
        ]
        if perms.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }"]
    lines += ["  ]", "}"]
    if tls is not None:
        lines += [
            "tls {",
            f"  cert_file: {_q(str(tls.cert_file.resolve()))}",
            f"  key_file: {_q(str(tls.key_file.resolve()))}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    # JSON strings are valid nats-server config strings, and a quoted "$JS..." is not a variable reference.
    return json.dumps(text)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _new_seed() -> str:
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)).decode()


def _public_key(seed: str) -> str:
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return bytes(pair.public_key).decode()
    finally:
        pair.wipe()


def _write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read, replacing any old one at once (write aside, then rename)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
