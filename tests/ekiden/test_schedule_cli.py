"""``ekiden calendar``, ``ekiden schedule`` and ``ekiden plan``: offline from files, and against a manager."""

import subprocess
import sys
from pathlib import Path

import pytest

from ekiden.cli import build_parser
from ekiden.schedule import COMMANDS
from tests.engine.schedule_helpers import ManualClock, at, jobnet, scheduling_manager

REPO = Path(__file__).resolve().parents[2]

DEFS = """
[calendar.holidays]
dates_file = "holidays.txt"

[calendar.business]
include = [{ weekdays = ["mon", "tue", "wed", "thu", "fri"] }]
exclude = [{ calendar = "holidays" }]

[schedule.pay]
jobnet = "payroll"
timezone = "Asia/Tokyo"
at = ["09:00"]
calendar = "business"
on = { days = 3 }
shift = "after"
"""
NET = """
[jobnet.payroll]
[[jobnet.payroll.job]]
id = "pay"
cmd = ["true"]
agent = "h"
"""


def _ekiden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ekiden", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def defs(tmp_path: Path) -> Path:
    folder = tmp_path / "defs"
    folder.mkdir()
    (folder / "calendars.toml").write_text(DEFS)
    (folder / "nets.toml").write_text(NET)  # the schedule's jobnet is in another file of the set
    (folder / "holidays.txt").write_text("# holidays\n2027-05-03 Constitution Day\n2027-05-04\n2027-05-05\n")
    return folder


def test_a_file_of_dates_feeds_the_calendar_and_check_says_why(defs: Path) -> None:
    no = _ekiden("calendar", "check", "business", "2027-05-04", "--defs", str(defs))
    yes = _ekiden("calendar", "check", "business", "2027-05-06", "--defs", str(defs))
    assert no.returncode == 1, no.stderr
    assert no.stdout.strip() == "2027-05-04 (Tue) is not an operating day of business: exclude[0]: calendar holidays"
    assert yes.returncode == 0 and "is an operating day of business: include[0]: mon,tue,wed,thu,fri" in yes.stdout


def test_a_bad_line_in_a_file_of_dates_is_named(defs: Path) -> None:
    (defs / "holidays.txt").write_text("2027-05-03\n2027-13-01\n")
    bad = _ekiden("validate", str(defs))
    assert bad.returncode == 2
    assert "calendar.holidays.dates_file:" in bad.stderr and "line 2: '2027-13-01' is not a date" in bad.stderr


def test_year_view_and_plan_offline(defs: Path) -> None:
    shown = _ekiden("calendar", "show", "business", "--year", "2027", "--defs", str(defs))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("business 2027: 258 operating days (marked *)")
    assert " 3  4  5  6* 7* 8  9" in shown.stdout  # the first week of May: three holidays, then Thursday
    plan = _ekiden("plan", "--from", "2027-04-01", "--to", "2027-06-30", "--defs", str(defs))
    assert plan.returncode == 0, plan.stderr
    rows = [line.split("  ")[0] for line in plan.stdout.splitlines()[1:]]
    # April 3rd is a Saturday and May 3rd to 5th are holidays: both runs move to the next operating day.
    assert rows == ["2027-04-05 09:00 +09:00", "2027-05-06 09:00 +09:00", "2027-06-03 09:00 +09:00"]
    assert "2027-05-03 (day 3) moved forward" in plan.stdout


async def test_schedule_commands_against_the_manager(
    site_dir: Path, sid: str, nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = ManualClock(at("2027-01-04 08:00"))
    defs = {"jobnet": jobnet(), "schedule": {"s": {"jobnet": "daily", "at": ["09:00"]}}}
    conn = ["--nats", nats_url, "--server-id", sid]
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=defs)
        for argv in (
            ["schedule", "hold", "s", *conn],
            ["schedule", "change", "s", "--at", "2027-01-05 09:00", "--to", "2027-01-05 06:00", *conn],
            ["schedule", "ls", *conn],
        ):
            args = build_parser().parse_args(argv)
            assert await COMMANDS[args.command](args) == 0
        out = capsys.readouterr().out
    assert "schedule s: enabled, held; next fire 2027-01-04 09:00:00" in out
    assert "one-off change: 2027-01-05 09:00:00 -> 2027-01-05 06:00:00" in out
    assert "s         daily   enabled held  2027-01-04 09:00:00  UTC" in out
