"""Relay settings from argv and EKIDEN_* variables."""

from pathlib import Path

import pytest

from relay.settings import DEFAULT_MAX_BACKLOG, DEFAULT_RETENTION_S, load
from runtime.errors import ConfigError

REQUIRED = ["--name", "r1", "--nats", "nats://up:4222", "--db", "/var/lib/relay.db"]


def test_defaults_and_one_connection_without_downstream() -> None:
    s = load(REQUIRED, env={})
    assert (s.name, s.nats_url, s.db_path) == ("r1", "nats://up:4222", Path("/var/lib/relay.db"))
    assert (s.max_backlog, s.retention_s) == (DEFAULT_MAX_BACKLOG, DEFAULT_RETENTION_S)
    assert s.downstream_bus() is None
    assert s.upstream_bus().url == "nats://up:4222"


def test_environment_fills_in_and_argv_wins() -> None:
    env = {
        "EKIDEN_RELAY_NAME": "from-env",
        "EKIDEN_NATS_URL": "nats://env:4222",
        "EKIDEN_RELAY_DB": "env.db",
        "EKIDEN_RELAY_DOWNSTREAM_URL": "nats://cloud:4222",
        "EKIDEN_RELAY_MAX_BACKLOG": "7",
        "EKIDEN_RELAY_RETENTION_S": "60",
        "EKIDEN_LOG_JSON": "true",
    }
    s = load(["--name", "from-argv", "--max-backlog", "9"], env=env)
    assert (s.name, s.nats_url, s.db_path) == ("from-argv", "nats://env:4222", Path("env.db"))
    assert (s.max_backlog, s.retention_s, s.log_json) == (9, 60.0, True)
    down = s.downstream_bus()
    assert down is not None and down.url == "nats://cloud:4222"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--name", "r1"], "required"),
        ([*REQUIRED[2:], "--name", "no spaces"], "invalid relay name"),
        ([*REQUIRED, "--max-backlog", "0"], "max_backlog"),
        ([*REQUIRED, "--max-backlog", "many"], "not a number"),
        ([*REQUIRED, "--retention-s", "nan"], "retention_s"),
        ([*REQUIRED, "--shutdown-grace-s", "-1"], "shutdown_grace_s"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(argv, env={})
