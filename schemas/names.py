"""Rules for the names that appear in subjects, stream names and paths."""

import re

#: A name: letters, digits, '_' and '-', starting with a letter or digit, at most 64 characters.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: object) -> bool:
    """Tell whether ``name`` may be used as a server ID, jobnet, job, agent, relay or destination name."""
    # fullmatch, not match: with match, the pattern's "$" also accepts one trailing newline ("a\n").
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def check_name(name: str, what: str) -> str:
    """Return ``name`` unchanged, or raise ``ValueError`` naming ``what`` it was meant to be.

    Raises:
        ValueError: the name is not valid.
    """
    if not is_valid_name(name):
        raise ValueError(f"invalid {what} name {name!r}: use letters, digits, '_' and '-' (at most 64)")
    return name
