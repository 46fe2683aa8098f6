"""Attempt tokens: proof that an event comes from whoever was given that attempt.

Each dispatch carries ``token = HMAC-SHA256(site secret, attempt ID | target | epoch)`` (truncated to 128
bits, base64url). Executors echo it in every event of the attempt (``schemas.messages.event_for``), and the
manager applies an event only if its token is the one it would make for that attempt, its target and the
epoch the event names. So a worker that holds valid NATS credentials still cannot report for an attempt it
was not given (it never saw that token), nor replay an old result for a new attempt (a new attempt has a new
ID). Only the manager makes and checks tokens, so a secret shared by the managers of a site is enough: no
public-key signature is needed.

The secret is 32 random bytes in the site directory (``security/attempt-tokens.key``, mode 0600), made on
first use, so both managers of an HA pair (which share the site directory) use the same one.
"""

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

#: Folder of the site directory that holds security material.
SECURITY_DIR = "security"
#: File of the attempt-token secret, inside ``SECURITY_DIR``.
SECRET_FILE = "attempt-tokens.key"
#: Bytes of the secret.
SECRET_BYTES = 32
#: Bytes of the MAC a token keeps (128 bits: forging one takes 2**127 tries on average).
TOKEN_BYTES = 16
_BLOCK_BYTES = 64  # SHA-256's block size


def secret_path(site_dir: Path) -> Path:
    """Where the attempt-token secret of a site lives."""
    return site_dir / SECURITY_DIR / SECRET_FILE


def load_or_create_secret(site_dir: Path) -> bytes:
    """The site's attempt-token secret, made (mode 0600) if there is none yet.

    Two managers starting at once agree: the secret is written to a private temporary file and linked into
    place, which fails if the other got there first; then both read the one that is in place.

    Raises:
        OSError: the site directory cannot be written or the secret cannot be read.
    """
    path = secret_path(site_dir)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SECRET_BYTES))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
                logger.info("made a new attempt-token secret in %s", path)
            except FileExistsError:
                pass  # another manager made it first: use that one
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise OSError(f"attempt-token secret {path} is shorter than {SECRET_BYTES} bytes")
    return secret


class AttemptTokens:
    """Makes and checks attempt tokens with one site secret."""

    def __init__(self, secret: bytes) -> None:
        # HMAC (RFC 2104) with the key's inner and outer pads hashed once: each token then costs two hash
        # copies and updates, about a third of hmac.digest(), which sets the key up again every call.
        key = (hashlib.sha256(secret).digest() if len(secret) > _BLOCK_BYTES else secret).ljust(_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    @classmethod
    def for_site(cls, site_dir: Path) -> "AttemptTokens":
        """Tokens with the site's secret (made if missing)."""
        return cls(load_or_create_secret(site_dir))

    def make(self, attempt_id: str, target: str, epoch: int) -> str:
        """The token of one attempt sent to ``target`` (``dest:NAME`` or ``agent:NAME``) at ``epoch``."""
        inner = self._inner.copy()
        inner.update(f"{attempt_id}|{target}|{epoch}".encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        # 16 bytes are 24 base64 characters, the last two of them padding.
        return base64.urlsafe_b64encode(outer.digest()[:TOKEN_BYTES])[:-2].decode()

    def check(self, token: object, attempt_id: str, target: str, epoch: int) -> bool:
        """Tell whether ``token`` is the one made for this attempt, target and epoch (in constant time)."""
        return isinstance(token, str) and hmac.compare_digest(token, self.make(attempt_id, target, epoch))
