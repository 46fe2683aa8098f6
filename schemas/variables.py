"""Run variables: their names, the marked stdout line that sets one, and ``${NAME}`` references.

A job sets a variable for the units after it by printing one line on its standard output::

    ::ekiden-var NAME=VALUE

(``ekiden-var set NAME VALUE`` prints exactly that). The manager reads these lines from the output the
executor captured when the job finished; the last line for a name wins. A definition refers to a variable
as ``${NAME}`` inside an argv element, an ``env`` value, ``cwd`` or a string inside a call's ``args``: the
reference is replaced by the value as data, so an argv element stays one argument whatever the value
holds. ``$${`` writes a literal ``${``. Shell command text is never substituted: a shell job reads
variables from its environment (``"$EKIDEN_VAR_NAME"``).
"""

import re
from collections.abc import Iterator, Mapping
from typing import Any

#: A variable name: a letter or '_', then letters, digits and '_' (at most 64), so it is also an env name.
VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
_VAR_NAME_RE = re.compile(VAR_NAME_PATTERN)
#: What starts a line of stdout that sets a variable.
MARKER = "::ekiden-var "
_MARKER_BYTES = MARKER.encode()
#: Prefix of the environment variable that carries a run variable to a job.
ENV_PREFIX = "EKIDEN_VAR_"
#: Prefix of the variables the manager provides itself (a definition may not declare one).
BUILTIN_PREFIX = "EKIDEN_"
#: The run's ID, and its jobnet's name.
RUN_ID = "EKIDEN_RUN_ID"
JOBNET = "EKIDEN_JOBNET"
BUILTINS = frozenset({RUN_ID, JOBNET})
#: Longest value a job may set, in bytes (UTF-8).
MAX_VALUE_BYTES = 4096
#: Most variables one job may set.
MAX_VARS_PER_JOB = 100
_REF_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")


class MissingVariableError(KeyError):
    """A reference names a variable that has no value in this run."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"variable ${{{self.name}}} has no value in this run"


def is_var_name(name: object) -> bool:
    """Whether ``name`` may name a variable."""
    return isinstance(name, str) and _VAR_NAME_RE.fullmatch(name) is not None


def var_line(name: str, value: str) -> str:
    """The stdout line that sets ``name`` to ``value`` (without the newline).

    Raises:
        ValueError: the name is not a variable name, or the value holds a newline or NUL, or is too long.
    """
    if not is_var_name(name):
        raise ValueError(f"{name!r} is not a variable name (letters, digits and '_', not starting with a digit)")
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError("a variable's value cannot hold a newline or NUL")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValueError(f"a variable's value is at most {MAX_VALUE_BYTES} bytes")
    return f"{MARKER}{name}={value}"


def parse_output(stdout: bytes) -> dict[str, str]:
    """The variables a job's captured stdout sets (marked lines; the last one for a name wins).

    Lines that are not well formed (bad name, value too long) are ignored, and so is every variable past the
    first ``MAX_VARS_PER_JOB`` names.
    """
    found: dict[str, str] = {}
    if _MARKER_BYTES not in stdout:
        return found
    for raw in stdout.splitlines():
        if not raw.startswith(_MARKER_BYTES):
            continue
        name, sep, value = raw[len(_MARKER_BYTES) :].decode("utf-8", errors="replace").partition("=")
        if not sep or not is_var_name(name) or len(value.encode()) > MAX_VALUE_BYTES or "\0" in value:
            continue
        if name in found or len(found) < MAX_VARS_PER_JOB:
            found[name] = value
    return found


def references(text: str) -> Iterator[str]:
    """The names ``text`` refers to as ``${NAME}`` (``$${`` is a literal and refers to nothing).

    A reference whose name is not a variable name is returned as written, so a check can refuse it.
    """
    for match in _REF_RE.finditer(text):
        if match.group(0) != "$${":
            yield match.group(1)


def data_references(value: Any) -> Iterator[tuple[str, str]]:
    """``(path suffix, name)`` for every reference inside the strings of JSON data (a call's args)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield from ((where, name) for name in references(item))
        elif isinstance(item, dict):
            stack.extend((f"{where}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``${NAME}`` replaced by its value and each ``$${`` by ``${``.

    Raises:
        MissingVariableError: a name has no value.
    """
    if "$" not in text:
        return text

    def replace(match: "re.Match[str]") -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        try:
            return values[name]
        except KeyError:
            raise MissingVariableError(name) from None

    return _REF_RE.sub(replace, text)


def substitute_data(value: Any, values: Mapping[str, str]) -> Any:
    """JSON data with every string substituted (a call's args); other values are kept as they are.

    Raises:
        MissingVariableError: a name has no value.
    """
    if isinstance(value, str):
        return substitute(value, values)
    if isinstance(value, dict):
        return {k: substitute_data(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_data(v, values) for v in value]
    return value


def var_env(values: Mapping[str, str]) -> dict[str, str]:
    """Each variable as the environment variable ``EKIDEN_VAR_<NAME>`` (the name kept as it is)."""
    return {ENV_PREFIX + k: v for k, v in values.items() if "\0" not in v}
