"""Attempt tokens: bound to attempt, target and epoch; one secret per site, private, shared by its managers."""

import base64
import hmac
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engine.tokens import AttemptTokens, load_or_create_secret, secret_path


def test_a_token_is_valid_only_for_its_attempt_target_and_epoch(site_dir: Path) -> None:
    tokens = AttemptTokens.for_site(site_dir)
    token = tokens.make("main:1:a:1", "dest:cloud", 3)
    assert tokens.check(token, "main:1:a:1", "dest:cloud", 3)
    assert not tokens.check(token, "main:1:a:2", "dest:cloud", 3)  # a new attempt of the same job
    assert not tokens.check(token, "main:1:b:1", "dest:cloud", 3)
    assert not tokens.check(token, "main:1:a:1", "agent:x", 3)
    assert not tokens.check(token, "main:1:a:1", "dest:cloud", 4)
    assert not tokens.check(None, "main:1:a:1", "dest:cloud", 3)
    assert not tokens.check(token[:-1], "main:1:a:1", "dest:cloud", 3)
    assert not AttemptTokens(b"another site's secret, 32 bytes!").check(token, "main:1:a:1", "dest:cloud", 3)


def test_the_secret_is_made_once_private_and_shared_by_managers_starting_together(site_dir: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_or_create_secret(site_dir), range(16)))
    assert len(secrets) == 1
    path = secret_path(site_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert AttemptTokens.for_site(site_dir).make("a", "b", 1) == AttemptTokens(secrets.pop()).make("a", "b", 1)


def test_a_token_is_the_standard_hmac_sha256_of_attempt_target_and_epoch() -> None:
    for secret in [b"k" * 32, b"short", b"l" * 200]:
        mac = hmac.digest(secret, b"main:7:job:2|agent:db|5", "sha256")[:16]
        assert AttemptTokens(secret).make("main:7:job:2", "agent:db", 5) == base64.urlsafe_b64encode(mac).decode()[:22]
