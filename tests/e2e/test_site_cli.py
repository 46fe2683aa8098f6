"""``ekiden site create``, ``ls`` and ``status`` on site directories, with no manager running."""

import subprocess
import sys
from pathlib import Path

import orjson

from engine.migrations import SCHEMA_VERSION


def _ekiden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ekiden", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_create_makes_an_initialized_site_once_and_ls_and_status_read_it(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    created = _ekiden("site", "create", str(sites / "tokyo"), "--server-id", "tokyo")
    assert created.returncode == 0, created.stderr
    assert (sites / "tokyo" / "site.db").is_file()
    assert _ekiden("site", "create", str(sites / "osaka")).returncode == 0
    again = _ekiden("site", "create", str(sites / "tokyo"))
    assert again.returncode == 2
    assert "already a site" in again.stderr
    bad = _ekiden("site", "create", str(sites / "nagoya"), "--server-id", "no spaces")
    assert bad.returncode == 2
    assert not (sites / "nagoya").exists()

    listed = _ekiden("site", "ls", str(sites), "--json")
    assert listed.returncode == 0, listed.stderr
    docs = orjson.loads(listed.stdout)
    assert [(Path(d["site"]).name, d["server_id"], d["schema_version"]) for d in docs] == [
        ("osaka", "main", SCHEMA_VERSION),
        ("tokyo", "tokyo", SCHEMA_VERSION),
    ]
    table = _ekiden("site", "ls", str(sites / "tokyo"))
    assert table.stdout.splitlines()[0].split()[:3] == ["SITE", "SERVER", "ID"]
    assert "tokyo" in table.stdout.splitlines()[1]

    status = _ekiden("site", "status", "--site", str(sites / "tokyo"), "--json")
    assert status.returncode == 0, status.stderr
    doc = orjson.loads(status.stdout)
    assert (doc["server_id"], doc["lease"], doc["active"], doc["maintenance"]) == ("tokyo", None, None, False)
    text = _ekiden("site", "status", "--site", str(sites / "tokyo"))
    assert "active       none (no manager has ever held the lease)" in text.stdout


def test_status_and_ls_of_a_directory_that_is_not_a_site_fail_with_a_message(tmp_path: Path) -> None:
    status = _ekiden("site", "status", "--site", str(tmp_path))
    assert status.returncode == 2
    assert "is not a site directory" in status.stderr
    missing = _ekiden("site", "ls", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    empty = _ekiden("site", "ls", str(tmp_path), "--json")
    assert empty.returncode == 0
    assert orjson.loads(empty.stdout) == []
