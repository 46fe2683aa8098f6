"""The control API's schedule reads: calendars, schedules with their state, and the fires of a schedule.

Planning views (``ekiden calendar show``, ``ekiden schedule next``, ``ekiden plan``) are computed by the CLI
from these, with the same code (``schemas.calendars``, ``schemas.schedules``) that it runs on definition files.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from engine.schedule_store import ScheduleQueries
from schemas.errors import ErrorCode, WireError
from schemas.names import is_valid_name

#: Most schedules one ``schedules`` page returns (a page stays well under the message size limit).
PAGE_LIMIT = 500
#: Most fires one ``fires`` request returns.
FIRES_LIMIT = 1000


def schedule_verbs(queries: ScheduleQueries) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
    """The read verbs, by name, for ``Api.add_verbs``."""

    async def calendars(_args: dict[str, Any]) -> dict[str, str]:
        return await queries.calendars()

    async def schedules(args: dict[str, Any]) -> dict[str, Any]:
        name, after, limit = args.get("name"), args.get("after", ""), args.get("limit", PAGE_LIMIT)
        if name is not None and not is_valid_name(name):
            raise WireError(ErrorCode.INVALID, f"invalid schedule name {name!r}")
        if not isinstance(after, str) or not isinstance(limit, int) or not 0 < limit <= PAGE_LIMIT:
            raise WireError(ErrorCode.INVALID, f"after must be a name and limit an integer in 1..{PAGE_LIMIT}")
        rows = await queries.schedules(name, after, limit)
        if name is not None and not rows:
            raise WireError(ErrorCode.NOT_FOUND, f"no schedule named {name!r}")
        more = name is None and len(rows) == limit
        return {"schedules": rows, "next": rows[-1]["name"] if more else None}

    async def fires(args: dict[str, Any]) -> list[dict[str, Any]]:
        name, limit = args.get("name"), args.get("limit", 50)
        if not is_valid_name(name) or not isinstance(limit, int) or not 0 < limit <= FIRES_LIMIT:
            raise WireError(ErrorCode.INVALID, f"fires needs a schedule name and a limit in 1..{FIRES_LIMIT}")
        return await queries.fires(str(name), limit)

    return {"calendars": calendars, "schedules": schedules, "fires": fires}
