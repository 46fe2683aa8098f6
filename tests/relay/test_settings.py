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
        ([*REQUIRED, "--queued-wait-s", "-0.5"], "queued_wait_s"),
        ([*REQUIRED, "--metrics-port", "70000"], "metrics_port"),
        ([*REQUIRED, "--upstream-creds", "/nonexistent/up.creds"], "upstream credentials file"),
        ([*REQUIRED, "--downstream-creds", "/nonexistent/down.creds"], "downstream credentials file"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(argv, env={})


def test_upstream_is_an_alias_of_nats_and_each_side_has_its_own_credentials(tmp_path: Path) -> None:
    up, down = tmp_path / "up.creds", tmp_path / "down.creds"
    up.write_text("up")
    down.write_text("down")
    argv = ["--name", "r1", "--upstream", "nats://onprem:4222", "--downstream", "nats://cloud:4222", "--db", "r.db"]
    s = load([*argv, "--upstream-creds", str(up), "--metrics-port", "9464"], env={})
    assert (s.upstream_bus().url, s.upstream_bus().creds_file) == ("nats://onprem:4222", str(up))
    assert (s.metrics_port, s.metrics_host) == (9464, "127.0.0.1")
    down_bus = s.downstream_bus()
    assert down_bus is not None and (down_bus.url, down_bus.creds_file) == ("nats://cloud:4222", None)

    env = {"EKIDEN_RELAY_UPSTREAM_CREDS": str(up), "EKIDEN_RELAY_DOWNSTREAM_CREDS": str(down)}
    s = load([*argv, "--metrics-host", "0.0.0.0"], env=env)
    down_bus = s.downstream_bus()
    assert s.upstream_bus().creds_file == str(up)
    assert down_bus is not None and down_bus.creds_file == str(down)
    assert s.metrics_host == "0.0.0.0"
    assert load(["--name", "r1", "--nats", "nats://x:1", "--db", "r.db"], env={}).nats_url == "nats://x:1"
