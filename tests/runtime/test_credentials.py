"""Credentials files: what ``ekiden security init`` writes, what every process reads, and rotation."""

import stat
from pathlib import Path

import pytest

from ekiden.natsauth import ADMIN, Identity, Role, config_path, existing, init, permissions, security_dir
from runtime.credentials import read_credentials
from runtime.errors import ConfigError
from schemas import subjects

WORKER = Identity(Role.WORKER, "cloud")


def test_init_writes_private_credentials_and_a_config_with_only_public_keys(site_dir: Path) -> None:
    made = init(site_dir, [WORKER, Identity(Role.OPERATOR_RO, "a")])
    assert set(made) == {ADMIN, WORKER, Identity(Role.OPERATOR_RO, "a")}
    conf = config_path(site_dir).read_text()
    for who in made:
        path = who.path(security_dir(site_dir))
        creds = read_credentials(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert creds.seed is not None and creds.seed.startswith("SU")
        assert creds.seed not in conf  # the server never sees a seed
        assert (creds.role, creds.name, creds.inbox_prefix) == (str(who.role), who.name, who.inbox_prefix)
    assert read_credentials(Identity(Role.OPERATOR_RO, "a").path(security_dir(site_dir))).tenant == "a"
    assert stat.S_IMODE(security_dir(site_dir).stat().st_mode) == 0o700


def test_init_again_keeps_every_key_and_rotate_changes_only_those_named(site_dir: Path) -> None:
    init(site_dir, [WORKER])
    seeds = {w: read_credentials(w.path(security_dir(site_dir))).seed for w in existing(site_dir)}
    init(site_dir, [Identity(Role.AGENT, "db-host")])
    assert {w: read_credentials(w.path(security_dir(site_dir))).seed for w in seeds} == seeds
    assert Identity(Role.AGENT, "db-host") in existing(site_dir)
    init(site_dir, [], rotate=[WORKER])
    assert read_credentials(WORKER.path(security_dir(site_dir))).seed != seeds[WORKER]
    assert read_credentials(ADMIN.path(security_dir(site_dir))).seed == seeds[ADMIN]


def test_a_worker_is_granted_its_own_destination_only_and_no_stream_management() -> None:
    perms = permissions(WORKER)
    everything = " ".join(perms.publish + perms.subscribe)
    assert subjects.dest_stream("cloud") in everything
    assert "DELETE" not in everything and "PURGE" not in everything and "CREATE" not in everything
    assert all(
        ">" not in s or s.startswith(("ekiden.ctl", "$JS.ACK.EKIDEN_DEST_cloud", "_INBOX.worker.cloud"))
        for s in everything.split()
    )
    assert subjects.under("_INBOX") not in perms.subscribe


def test_other_credentials_files_are_read_or_refused(tmp_path: Path) -> None:
    jwt = tmp_path / "user.creds"
    jwt.write_text("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n")
    assert read_credentials(jwt).is_jwt
    bare = tmp_path / "seed.nk"
    bare.write_text("SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU\n")
    assert read_credentials(bare).seed == "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
    for text in ["", "role: admin\n", "password: x\nSUA\n"]:
        bad = tmp_path / "bad.creds"
        bad.write_text(text)
        with pytest.raises(ConfigError):
            read_credentials(bad)
    with pytest.raises(ConfigError):
        read_credentials(tmp_path / "missing.creds")
