"""The agents' exceptions, rooted at ``AgentError``."""

from runtime.errors import AppError


class AgentError(AppError):
    """Root of the exceptions raised inside a standard agent or destination worker."""


class CallTargetError(AgentError):
    """A ``call`` job names a target that cannot be imported or is not callable; the attempt cannot start."""

    def __init__(self, target: str, why: str) -> None:
        self.target = target
        self.why = why
        super().__init__(f"call target {target!r}: {why}")


class RunAsError(AgentError):
    """A job asks to run as an OS user this agent may not switch to; the attempt is refused, never run."""

    def __init__(self, user: str, why: str) -> None:
        self.user = user
        self.why = why
        super().__init__(f"cannot run as user {user!r}: {why}")
