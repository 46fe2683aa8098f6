"""NATS credentials files: who a process is on the bus, and how it reaches the server.

Two kinds are read:

- an **Ekiden credential**, as ``ekiden security init`` writes it: a few ``key: value`` lines (role, name,
  reply-inbox prefix, tenant, TLS CA file) and an nkey user seed between the usual NATS markers. The
  server's configuration holds only the public key; the seed never leaves this file (challenge-response).
- a standard NATS **user-JWT creds file** (``nsc`` and operator mode), recognised by its JWT block and
  handed to nats-py as it is.

The file is secret: it is written with mode 0600 and must stay so.
"""

from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ConfigError

SEED_BEGIN = "-----BEGIN USER NKEY SEED-----"
SEED_END = "------END USER NKEY SEED------"
_JWT_MARK = "BEGIN NATS USER JWT"
#: Header keys an Ekiden credential may carry.
_KEYS = frozenset({"role", "name", "inbox_prefix", "tenant", "tls_ca"})


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a credentials file says."""

    path: str
    #: the nkey user seed (``SU...``); None for a user-JWT creds file
    seed: str | None = None
    role: str = ""
    name: str = ""
    #: the only reply-inbox prefix the credential may subscribe under
    inbox_prefix: str | None = None
    #: an operator's tenant (None: not an operator, or the admin)
    tenant: str | None = None
    #: CA bundle that signs the server's TLS certificate
    tls_ca_file: str | None = None

    @property
    def is_jwt(self) -> bool:
        """True for a standard user-JWT creds file."""
        return self.seed is None


def read_credentials(path: str | Path) -> Credentials:
    """Read and check a credentials file.

    Raises:
        ConfigError: the file cannot be read or is neither kind.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read NATS credentials {path}: {exc}") from exc
    if _JWT_MARK in text:
        return Credentials(str(path))
    fields: dict[str, str] = {}
    seed: str | None = None
    lines = iter(text.splitlines())
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == SEED_BEGIN:
            seed = next(lines, "").strip()
            break
        if line.startswith("SU") and ":" not in line:  # a bare seed file, as nats-py's nkeys_seed reads
            seed = line
            break
        key, sep, value = line.partition(":")
        if not sep or key.strip() not in _KEYS:
            raise ConfigError(f"NATS credentials {path}: unexpected line {line[:40]!r}")
        fields[key.strip()] = value.strip()
    if seed is None or not seed.startswith("SU"):
        raise ConfigError(f"NATS credentials {path}: no user nkey seed (a line starting with 'SU')")
    return Credentials(
        path=str(path),
        seed=seed,
        role=fields.get("role", ""),
        name=fields.get("name", ""),
        inbox_prefix=fields.get("inbox_prefix") or None,
        tenant=fields.get("tenant") or None,
        tls_ca_file=fields.get("tls_ca") or None,
    )


def render_credentials(
    seed: str,
    role: str,
    name: str,
    inbox_prefix: str,
    tenant: str | None = None,
    tls_ca_file: str | None = None,
) -> str:
    """The text of an Ekiden credential (see the module docstring)."""
    lines = [
        f"# Ekiden NATS credential: {role} {name}. Secret: keep it mode 0600, give it only to that process.",
        "# Made by 'ekiden security init'; the server knows only the public key of the seed below.",
        f"role: {role}",
        f"name: {name}",
        f"inbox_prefix: {inbox_prefix}",
    ]
    if tenant is not None:
        lines.append(f"tenant: {tenant}")
    if tls_ca_file is not None:
        lines.append(f"tls_ca: {tls_ca_file}")
    lines += ["", SEED_BEGIN, seed, SEED_END, ""]
    return "\n".join(lines)
