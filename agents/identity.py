"""Running a job as another OS user: only when this agent runs as root and its allow-list names the user.

The switch happens in the child between fork and exec (supplementary groups, then group, then user), so
the job never runs a single instruction as root; its environment gets that user's ``HOME``, ``USER`` and
``LOGNAME``, and it starts in that user's home (``/`` if it has none) unless the job names a directory.
"""

import os
import pwd
from collections.abc import Callable, Collection
from dataclasses import dataclass

from agents.errors import RunAsError


@dataclass(frozen=True, slots=True)
class RunAs:
    """The OS identity a job's process takes."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @property
    def workdir(self) -> str:
        """Where a job starts when it names no directory: the user's home, or ``/`` if it has none."""
        return self.home if os.path.isdir(self.home) else "/"

    def env(self) -> dict[str, str]:
        """The variables that name the user."""
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user}

    def switcher(self) -> Callable[[], None]:
        """The function the child runs before exec to become this user (groups first: they need root)."""
        groups, gid, uid = list(self.groups), self.gid, self.uid

        def switch() -> None:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)

        return switch


def resolve_user(user: str, allowed: Collection[str], euid: int | None = None) -> RunAs:
    """The identity to run a job as ``user``, if this agent may.

    Args:
        user: the job's ``user``.
        allowed: the agent's ``--allow-user`` list.
        euid: this process's effective user ID (default: ``os.geteuid()``).

    Raises:
        RunAsError: the agent does not run as root, the user is not allowed, or there is no such user.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise RunAsError(user, f"this agent runs as uid {euid}, not root, so it cannot switch users")
    if user not in allowed:
        raise RunAsError(user, "the user is not in this agent's --allow-user list")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise RunAsError(user, "no such user on this host") from None
    groups = tuple(sorted(set(os.getgrouplist(user, pw.pw_gid))))
    return RunAs(user, pw.pw_uid, pw.pw_gid, groups, pw.pw_dir or "/")
