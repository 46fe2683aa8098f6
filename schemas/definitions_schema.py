"""The JSON Schema files for definitions and their export document, and that document's envelope.

The schema files ship inside the ``schemas`` package (``schemas/jsonschema/``), so an installed wheel finds
them through :mod:`importlib.resources`, with no path relative to a source checkout.
"""

from importlib import resources
from pathlib import Path
from typing import Any

from schemas.definitions import DefinitionError, Definitions, FieldError, parse_definitions

#: File name of the JSON Schema of the definitions map (TOML files, ``Definitions.to_dict()``).
DEFINITIONS_SCHEMA = "definitions.schema.json"
#: File name of the JSON Schema of the export document.
EXPORT_SCHEMA = "export.schema.json"
#: The export document's ``format`` value.
EXPORT_FORMAT = "ekiden-definitions"
#: The export document's ``version`` value that this code writes and reads.
EXPORT_VERSION = 1
_FOLDER = "jsonschema"
_NAMES = {
    "definitions": DEFINITIONS_SCHEMA,
    DEFINITIONS_SCHEMA: DEFINITIONS_SCHEMA,
    "export": EXPORT_SCHEMA,
    EXPORT_SCHEMA: EXPORT_SCHEMA,
}
_EXPORT_KEYS = frozenset({"format", "version", "definitions"})


def schema_path(name: str) -> Path:
    """The path of one schema file shipped in the package.

    Args:
        name: ``"definitions"`` or ``"export"``, or the file name (``DEFINITIONS_SCHEMA``, ``EXPORT_SCHEMA``).

    Returns:
        The file's path on disk.

    Raises:
        ValueError: ``name`` names no schema.
        FileNotFoundError: the package is not installed as files on disk (a zip import, say).
    """
    try:
        file_name = _NAMES[name]
    except KeyError:
        raise ValueError(f"no schema named {name!r}; expected one of {sorted(_NAMES)}") from None
    found = resources.files("schemas").joinpath(_FOLDER, file_name)
    if not isinstance(found, Path) or not found.is_file():
        raise FileNotFoundError(f"schema {file_name!r} is not installed as a file (found {found!r})")
    return found


def export_document(definitions: Definitions) -> dict[str, Any]:
    """The export document for ``definitions``: what ``export.schema.json`` describes.

    Args:
        definitions: validated definitions.

    Returns:
        ``{"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "definitions": definitions.to_dict()}``.
    """
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "definitions": definitions.to_dict()}


def parse_export(document: Any) -> Definitions:
    """Validate an export document (already read from JSON) and build its definitions.

    Errors inside the definitions keep their usual paths (``jobnet.nightly.job[3].after``), as in a TOML file.

    Args:
        document: the decoded JSON document.

    Returns:
        The definitions it holds.

    Raises:
        DefinitionError: the envelope is wrong (unknown format or version, a missing or unknown key), or the
            definitions do not validate.
    """
    if not isinstance(document, dict):
        raise DefinitionError([FieldError("$", "an export document must be a map")])
    errors = [FieldError(str(key), "unknown key") for key in sorted(set(document) - _EXPORT_KEYS, key=str)]
    if document.get("format") != EXPORT_FORMAT:
        errors.append(FieldError("format", f"must be {EXPORT_FORMAT!r}"))
    version = document.get("version")
    if isinstance(version, bool) or version != EXPORT_VERSION:
        errors.append(FieldError("version", f"unsupported version {version!r}; this build reads {EXPORT_VERSION}"))
    if "definitions" not in document:
        errors.append(FieldError("definitions", "missing"))
    if errors:
        raise DefinitionError(errors)
    return parse_definitions(document["definitions"])
