"""Named resource locks and concurrency limits in definitions.

A lock (``[lock.NAME]``) has a capacity: 1 makes it exclusive, more lets jobs share it by weight. A job
takes locks with ``locks = ["db", {name = "tape", weight = 2}]`` while it runs; a jobnet's ``locks``
are held by each of its runs from its first dispatch to its end (a whole block). ``max_running`` limits
how many jobs run at once on a destination, an agent, or of one jobnet (across its runs).
"""

from dataclasses import dataclass
from typing import Any

from schemas.fields import FieldError, check_keys, named_tables, string
from schemas.names import is_valid_name

#: Largest lock capacity and weight, and largest ``max_running``.
MAX_CAPACITY = 1_000_000
_LOCK_KEYS = frozenset({"capacity", "tenant", "description"})
_USE_KEYS = frozenset({"name", "weight"})
#: Tenant of definitions that name none (the same as ``schemas.definitions.DEFAULT_TENANT``).
_DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class LockUse:
    """A lock a job or run takes, and how much of its capacity."""

    name: str
    weight: int = 1

    def to_wire(self) -> str | dict[str, Any]:
        """The input form: the bare name for weight 1."""
        return self.name if self.weight == 1 else {"name": self.name, "weight": self.weight}


@dataclass(frozen=True, slots=True)
class Lock:
    """A named resource with a capacity (1: exclusive)."""

    name: str
    capacity: int = 1
    tenant: str = _DEFAULT_TENANT
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The canonical map of this lock, in the input format."""
        out: dict[str, Any] = {"capacity": self.capacity}
        if self.tenant != _DEFAULT_TENANT:
            out["tenant"] = self.tenant
        if self.description:
            out["description"] = self.description
        return out


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CAPACITY


def parse_locks(raw: Any, errors: list[FieldError]) -> dict[str, Lock]:
    """The ``[lock.NAME]`` tables."""
    out: dict[str, Lock] = {}
    for name, (path, body) in named_tables(raw, "lock", _LOCK_KEYS, errors).items():
        capacity = body.get("capacity", 1)
        if not _count(capacity):
            errors.append(FieldError(f"{path}.capacity", f"must be an integer in 1..{MAX_CAPACITY} (1: exclusive)"))
            capacity = 1
        tenant = body.get("tenant", _DEFAULT_TENANT)
        if not is_valid_name(tenant):
            errors.append(FieldError(f"{path}.tenant", "must be a valid tenant name"))
            tenant = _DEFAULT_TENANT
        out[name] = Lock(name, capacity, tenant, string(body, "description", path, errors) or "")
    return out


def parse_lock_uses(raw: Any, path: str, errors: list[FieldError]) -> tuple[LockUse, ...]:
    """A ``locks = [...]`` list: lock names, or ``{name, weight}`` tables."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(FieldError(path, "must be a list of lock names or {name, weight} tables"))
        return ()
    uses: list[LockUse] = []
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            errors.append(FieldError(item_path, "must be a lock name or a {name, weight} table"))
            continue
        item = check_keys(item, _USE_KEYS, item_path, errors)
        name, weight = item.get("name"), item.get("weight", 1)
        if not is_valid_name(name):
            errors.append(FieldError(f"{item_path}.name", "must be a valid lock name"))
        elif not _count(weight):
            errors.append(FieldError(f"{item_path}.weight", f"must be an integer in 1..{MAX_CAPACITY}"))
        elif any(u.name == name for u in uses):
            errors.append(FieldError(item_path, f"lock {name!r} is listed more than once"))
        else:
            uses.append(LockUse(str(name), weight))
    return tuple(uses)


def parse_max_running(body: dict[str, Any], path: str, errors: list[FieldError]) -> int | None:
    """An optional ``max_running`` limit."""
    value = body.get("max_running")
    if value is None:
        return None
    if not _count(value):
        errors.append(FieldError(f"{path}.max_running", f"must be an integer in 1..{MAX_CAPACITY}"))
        return None
    return int(value)
