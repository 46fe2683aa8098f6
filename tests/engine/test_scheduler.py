"""The scheduler in a real manager (real NATS, real site database), driven by a clock the test moves."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ErrorCode, WireError
from tests.engine.schedule_helpers import ManualClock, at, jobnet, scheduling_manager, site_rows, wait_for_fires

NY = "America/New_York"


def hourly(catch_up: str = "once", **extra: Any) -> dict[str, Any]:
    """A schedule that starts 'daily' at the top of every hour, New York time."""
    return {
        "jobnet": jobnet(),
        "schedule": {"hourly": {"jobnet": "daily", "timezone": NY, "cron": "0 * * * *", "catch_up": catch_up, **extra}},
    }


async def test_fires_each_time_on_time_and_records_it_with_the_run(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:59:30", NY))
    defs = {
        "jobnet": jobnet(),
        "schedule": {"open": {"jobnet": "daily", "timezone": NY, "at": ["09:00", "09:30"], "params": {"k": "v"}}},
    }
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        applied = await api.call("apply", definitions=defs)
        assert applied["schedules"] == [{"name": "open", "changed": True, "next_fire_at": at("2027-01-04 09:00", NY)}]
        await clock.set(at("2027-01-04 09:00", NY))
        [first] = await wait_for_fires(api, "open", 1)
        await clock.set(at("2027-01-04 09:30:02", NY))
        fires = await wait_for_fires(api, "open", 2)
        status = await api.call("status", run=fires[1]["run"])
    assert first["fire_at"] == first["due_at"] == at("2027-01-04 09:00", NY)
    assert [f["note"] for f in fires] == ["on time", "on time"]
    assert fires[1]["fire_at"] == at("2027-01-04 09:30", NY)
    assert status["jobnet"] == "daily" and status["params"] == {"k": "v"}
    assert site_rows(site_dir, "SELECT COUNT(*) FROM runs") == [(2,)]
    assert site_rows(site_dir, "SELECT next_fire_at FROM schedules") == [(at("2027-01-05 09:00", NY),)]


@pytest.mark.parametrize(
    ("policy", "runs", "first_note"),
    [("once", 1, "catch-up once for 5 fire time(s)"), ("all", 5, "catch-up all"), ("skip", 0, None)],
)
async def test_catch_up_after_the_manager_was_down_across_several_fire_times(
    site_dir: Path, sid: str, nats_url: str, policy: str, runs: int, first_note: str | None
) -> None:
    clock = ManualClock(at("2027-01-04 08:30", NY))
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=hourly(policy))
    # No manager while 09:00, 10:00, 11:00, 12:00 and 13:00 pass.
    await clock.set(at("2027-01-04 13:20", NY))
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        caught = await wait_for_fires(api, "hourly", runs) if runs else []
        await asyncio.sleep(0.5)  # nothing more may follow
        assert len(await api.call("fires", name="hourly")) == runs
        [state] = (await api.call("schedules", name="hourly"))["schedules"]
        # WebSphere's rule: the next fire time counts from the actual fire time, not from the missed ones.
        assert state["next_fire_at"] == at("2027-01-04 14:00", NY)
        await clock.set(at("2027-01-04 14:00", NY))
        after = await wait_for_fires(api, "hourly", runs + 1)
    if first_note is not None:
        assert first_note in caught[0]["note"]
    assert [f["fire_at"] for f in caught] == [at(f"2027-01-04 {h}:00", NY) for h in ("09", 10, 11, 12, 13)][:runs]
    assert after[-1]["fire_at"] == at("2027-01-04 14:00", NY) and after[-1]["note"] == "on time"
    assert site_rows(site_dir, "SELECT COUNT(*) FROM runs") == [(runs + 1,)]


async def test_hold_keeps_fire_times_for_catch_up_and_disable_drops_them(
    site_dir: Path, sid: str, nats_url: str
) -> None:
    clock = ManualClock(at("2027-01-04 08:30", NY))
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=hourly("all"))
        held = await api.call("schedule", name="hourly", action="hold")
        assert held["held"] is True
        await clock.set(at("2027-01-04 10:30", NY))
        await asyncio.sleep(0.3)
        assert await api.call("fires", name="hourly") == []
        await api.call("schedule", name="hourly", action="release")
        fires = await wait_for_fires(api, "hourly", 2)
        assert [f["fire_at"] for f in fires] == [at("2027-01-04 09:00", NY), at("2027-01-04 10:00", NY)]

        disabled = await api.call("schedule", name="hourly", action="disable")
        assert disabled["enabled"] is False
        await clock.set(at("2027-01-04 12:30", NY))
        await asyncio.sleep(0.3)
        enabled = await api.call("schedule", name="hourly", action="enable")
        assert enabled["next_fire_at"] == at("2027-01-04 13:00", NY)  # 11:00 and 12:00 are gone
        await clock.set(at("2027-01-04 13:00", NY))
        fires = await wait_for_fires(api, "hourly", 3)
    assert fires[-1]["fire_at"] == at("2027-01-04 13:00", NY)


async def test_one_off_change_moves_a_single_fire(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:00", NY))
    defs = {"jobnet": jobnet(), "schedule": {"open": {"jobnet": "daily", "timezone": NY, "at": ["09:00"]}}}
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=defs)
        with pytest.raises(WireError) as refused:
            await api.call("schedule", name="open", action="change", at="2027-01-05 10:00", to="2027-01-05 11:00")
        assert refused.value.code == ErrorCode.NOT_FOUND  # it does not fire at 10:00
        changed = await api.call("schedule", name="open", action="change", at="2027-01-05 09:00", to="2027-01-05 07:15")
        assert changed["changes"] == [[at("2027-01-05 09:00", NY), at("2027-01-05 07:15", NY)]]
        await clock.set(at("2027-01-04 09:00", NY))
        await wait_for_fires(api, "open", 1)
        await clock.set(at("2027-01-05 07:15", NY))
        fires = await wait_for_fires(api, "open", 2)
        await clock.set(at("2027-01-05 09:30", NY))
        await asyncio.sleep(0.3)
        [state] = (await api.call("schedules", name="open"))["schedules"]
        fires = await wait_for_fires(api, "open", 2)
    assert (fires[1]["fire_at"], fires[1]["due_at"]) == (at("2027-01-05 09:00", NY), at("2027-01-05 07:15", NY))
    assert len(fires) == 2  # 09:00 on the 5th did not fire again
    assert state["changes"] == [] and state["next_fire_at"] == at("2027-01-06 09:00", NY)


async def test_a_repeated_fire_returns_the_run_it_started(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:59", NY))
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=hourly())
        await clock.set(at("2027-01-04 09:00", NY))
        [fire] = await wait_for_fires(api, "hourly", 1)
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:  # a new manager: nothing in memory
        repeat = {"schedule": "hourly", "at": fire["fire_at"], "digest": "any", "next": None}
        again = await api.call("run", jobnet="daily", fire=repeat)
        with pytest.raises(WireError) as stale:
            await api.call("run", jobnet="daily", fire={**repeat, "at": fire["fire_at"] + 60})
    assert again == {"run": fire["run"], "jobnet": "daily", "deduplicated": True}
    assert stale.value.code == ErrorCode.CONFLICT
    assert site_rows(site_dir, "SELECT COUNT(*) FROM runs") == [(1,)]


async def test_apply_refuses_unknown_jobnets_and_calendars_whole(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:00", NY))
    bad = {
        "jobnet": jobnet(),
        "calendar": {"ok": {"include": [{"weekdays": ["mon"]}]}},
        "schedule": {
            "a": {"jobnet": "ghost", "at": ["09:00"]},
            "b": {"jobnet": "daily", "at": ["09:00"], "calendar": "missing"},
        },
    }
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        with pytest.raises(WireError) as refused:
            await api.call("apply", definitions=bad)
        # What is already registered may be named: the calendar and jobnet applied first, the schedule later.
        await api.call("apply", definitions={"jobnet": jobnet(), "calendar": bad["calendar"]})
        later = {"schedule": {"c": {"jobnet": "daily", "at": ["09:00"], "calendar": "ok"}}}
        applied = await api.call("apply", definitions=later)
    assert "schedule.a.jobnet: unknown jobnet 'ghost'" in refused.value.message
    assert "schedule.b: names unknown calendar 'missing'" in refused.value.message
    # 08:00 in New York is 13:00 UTC: the Monday 09:00 UTC has passed, so the next Monday.
    assert applied["schedules"][0]["next_fire_at"] == at("2027-01-11 09:00", "UTC")
    assert site_rows(site_dir, "SELECT name FROM schedules") == [("c",)]


async def test_a_changed_calendar_moves_the_next_fire(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:00", NY))  # a Monday
    cal = {"ops": {"include": [{"weekdays": ["mon", "tue"]}]}}
    defs = {
        "jobnet": jobnet(),
        "calendar": cal,
        "schedule": {"s": {"jobnet": "daily", "timezone": NY, "at": ["09:00"], "calendar": "ops"}},
    }
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=defs)
        holiday = {"calendar": {"ops": {"include": [{"weekdays": ["mon", "tue"]}], "dates": [], "exclude": []}}}
        holiday["calendar"]["ops"]["exclude"] = [{"dates": ["2027-01-04", "2027-01-05"]}]
        result = await api.call("apply", definitions=holiday)
        [state] = (await api.call("schedules", name="s"))["schedules"]
    assert result["calendars"] == ["ops"]
    assert state["next_fire_at"] == at("2027-01-11 09:00", NY)


async def test_the_due_query_reads_only_what_comes_due(site_dir: Path, sid: str, nats_url: str) -> None:
    clock = ManualClock(at("2027-01-04 08:00", NY))
    async with scheduling_manager(site_dir, sid, nats_url, clock) as api:
        await api.call("apply", definitions=hourly())
    plan = site_rows(
        site_dir,
        "EXPLAIN QUERY PLAN SELECT name, next_fire_at FROM schedules WHERE enabled=1 AND held=0"
        " AND next_fire_at <= 0 ORDER BY next_fire_at LIMIT 10",
    )
    assert any("USING INDEX schedules_due" in str(row[-1]) for row in plan), plan
