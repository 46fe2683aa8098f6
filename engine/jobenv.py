"""What a job's environment gets from its run: each run parameter as ``EKIDEN_PARAM_<NAME>``.

A parameter reaches the job as data, never as code: it is an environment variable of the process (an
argv job gets it exactly; a shell job sees it only where its own text expands ``"$EKIDEN_PARAM_X"``), and
nothing splices it into a command line or shell text.
"""

import re
from collections.abc import Mapping

#: Prefix of the variable that carries a run parameter.
PARAM_PREFIX = "EKIDEN_PARAM_"
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9_]")


def param_variable(name: str) -> str:
    """The variable a parameter becomes: upper case, each character outside ``[A-Za-z0-9_]`` as ``_``."""
    return PARAM_PREFIX + _NOT_NAME_CHAR.sub("_", name).upper()


def job_env(env: dict[str, str], params: Mapping[str, str]) -> dict[str, str]:
    """A job's own variables with its run's parameters added (a parameter wins over a same-named variable).

    Without parameters, ``env`` itself is returned (the hot path builds nothing).
    """
    if not params:
        return env
    return {**env, **{param_variable(k): v for k, v in params.items()}}
