"""Reading definition files (TOML or JSON, or directories of them) into one validated set."""

from pathlib import Path

import orjson

from schemas.definitions import DefinitionError, Definitions, FieldError, merge, parse_definitions, parse_toml
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


def load_definitions(paths: list[str]) -> Definitions:
    """Read and validate every definition file; every error of every file is reported, prefixed by its file.

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
    return merge(parts)


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
        return parse_toml(text, str(path))
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DefinitionError([FieldError("$", f"not valid JSON: {exc}")]) from exc
    if isinstance(data, dict) and "format" in data:
        return parse_export(data)
    return parse_definitions(data)
