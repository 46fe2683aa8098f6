"""Reading definition files (TOML or JSON, or directories of them) into one validated set."""

import tomllib
from pathlib import Path
from typing import Any

import orjson

from schemas.calendars import parse_date_lines
from schemas.definitions import DefinitionError, Definitions, FieldError, merge, parse_definitions
from schemas.definitions_schema import parse_export


def definition_files(paths: list[str]) -> list[Path]:
    """The files that the paths name: each file as given, each directory's ``*.toml`` and ``*.json``.

    Raises:
        DefinitionError: a path does not exist.
    """
    files: list[Path] = []
    missing: list[FieldError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".toml", ".json") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            missing.append(FieldError(raw, "no such file or directory"))
    if missing:
        raise DefinitionError(missing)
    return files


def load_definitions(paths: list[str], complete: bool = True) -> Definitions:
    """Read and validate every definition file; every error of every file is reported, prefixed by its file.

    ``complete=False`` leaves what schedules and calendars name to whoever checks it against more (the manager).

    Raises:
        DefinitionError: anything is wrong; nothing is returned in part.
    """
    parts: list[Definitions] = []
    errors: list[FieldError] = []
    for path in definition_files(paths):
        try:
            parts.append(load_file(path))
        except DefinitionError as exc:
            errors.extend(FieldError(f"{path}: {e.path}", e.message) for e in exc.errors)
    if errors:
        raise DefinitionError(errors)
    return merge(parts, complete)


def load_file(path: Path) -> Definitions:
    """Read one TOML or JSON definition file (a JSON export document is accepted too).

    Raises:
        DefinitionError: the file cannot be read or does not validate.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError([FieldError(str(path), f"cannot read: {exc}")]) from exc
    if path.suffix != ".json":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DefinitionError([FieldError(str(path), f"not valid TOML: {exc}")]) from exc
    else:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise DefinitionError([FieldError("$", f"not valid JSON: {exc}")]) from exc
        if isinstance(data, dict) and "format" in data:
            return parse_export(data)
    # One file of a set: what its schedules and calendars name may be in another file (merge checks the set).
    return parse_definitions(read_dates_files(data, path.parent), complete=False)


def read_dates_files(data: Any, base: Path) -> Any:
    """Replace each calendar's ``dates_file`` by the dates the file holds (added to its ``dates``).

    A dates file is plain text, one ``YYYY-MM-DD`` per line (see ``schemas.calendars.parse_date_lines``); a
    relative path is relative to the definition file's folder. Reading it here, when definitions are loaded,
    keeps the site database self-contained: the manager stores the dates, never the path.

    Raises:
        DefinitionError: a file cannot be read or holds a line that is not a date.
    """
    cals = data.get("calendar") if isinstance(data, dict) else None
    if not isinstance(cals, dict):
        return data
    errors: list[FieldError] = []
    resolved = dict(cals)
    for name, body in cals.items():
        if not isinstance(body, dict) or not isinstance(body.get("dates_file"), str):
            continue
        where = f"calendar.{name}.dates_file"
        file = base / body["dates_file"]
        try:
            dates, bad = parse_date_lines(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(where, f"cannot read {file}: {exc}"))
            continue
        errors.extend(FieldError(where, f"{file}, line {n}: {message}") for n, message in bad)
        listed = body.get("dates", [])
        rest = {k: v for k, v in body.items() if k != "dates_file"}
        resolved[name] = {**rest, "dates": [*listed, *map(str, dates)]} if isinstance(listed, list) else rest
    if errors:
        raise DefinitionError(errors)
    return {**data, "calendar": resolved}
