"""Errors named by path, and the helpers that every definition validator shares (pure data, no I/O)."""

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas.names import is_valid_name

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a definition, at a path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DefinitionError(ValueError):
    """A definition was refused; ``errors`` names every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def child(path: str, key: object) -> str:
    """The path of ``key`` under ``path``: ``path.key``, or ``path["key"]`` when the key is not plain.

    Keys come from the input and may hold dots, spaces or newlines; quoting them keeps every path on one line
    and unambiguous (``jobnet["a.b"]`` is one jobnet, not a key ``b`` inside jobnet ``a``).
    """
    text = str(key)
    if _PLAIN_KEY_RE.fullmatch(text):
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text, ensure_ascii=False)}]"


def check_keys(raw: dict[str, Any], allowed: frozenset[str], path: str, errors: list[FieldError]) -> dict[str, Any]:
    """Report unknown keys and null values; return the table without its nulls.

    TOML has no null, but a JSON import can hold one. It is refused rather than read as "absent", so that the
    JSON Schema (which allows no nulls) and this validator accept exactly the same documents.
    """
    for key in sorted(set(raw) - allowed, key=str):
        errors.append(FieldError(child(path, key), "unknown key"))
    for key in sorted((k for k, v in raw.items() if v is None and k in allowed), key=str):
        errors.append(FieldError(child(path, key), "must not be null (leave the key out instead)"))
    return {k: v for k, v in raw.items() if v is not None}


def string(raw: dict[str, Any], key: str, path: str, errors: list[FieldError]) -> str | None:
    """The string at ``raw[key]`` (None if absent); a value of another type is an error."""
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        errors.append(FieldError(f"{path}.{key}", "must be a string"))
        return None
    return value


def named_tables(
    raw: Any, kind: str, keys: frozenset[str], errors: list[FieldError]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """The valid ``[kind.NAME]`` tables as ``name -> (path, body)``; what is wrong with the rest goes to errors."""
    if not isinstance(raw, dict):
        errors.append(FieldError(kind, f"must be a table of {kind}s"))
        return {}
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, body in raw.items():
        found = named_table(kind, name, body, keys, errors)
        if found is not None:
            out[str(name)] = found
    return out


def named_table(
    kind: str, name: Any, body: Any, keys: frozenset[str], errors: list[FieldError]
) -> tuple[str, dict[str, Any]] | None:
    """One ``[kind.NAME]`` table as ``(path, body)`` with unknown keys reported; None if its name or shape is wrong."""
    path = child(kind, name)
    if not is_valid_name(name):
        errors.append(FieldError(path, "invalid name: use letters, digits, '_' and '-' (at most 64)"))
        return None
    if not isinstance(body, dict):
        errors.append(FieldError(path, "must be a table"))
        return None
    return path, check_keys(body, keys, path, errors)
