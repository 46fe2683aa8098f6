"""Running ``call`` jobs: a Python function named ``package.module:function``, called with the spec's args."""

import asyncio
import contextvars
import importlib
import inspect
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from agents.errors import CallTargetError
from agents.outcome import Outcome
from agents.output import BoundedCapture
from schemas.messages import JobStatus

logger = logging.getLogger(__name__)

Target = Callable[..., Any]


class CallTargets:
    """Imports call targets once and keeps them for every later attempt."""

    def __init__(self) -> None:
        self._cache: dict[str, Target] = {}

    async def resolve(self, target: str) -> Target:
        """The function ``target`` names, imported on first use.

        Raises:
            CallTargetError: the name is malformed, the module does not import, or the attribute is
                missing or not callable.
        """
        found = self._cache.get(target)
        if found is not None:
            return found
        module_name, sep, attr_path = target.partition(":")
        if not sep or not module_name or not attr_path:
            raise CallTargetError(target, "must look like 'package.module:function'")
        try:
            # Importing runs module code and reads files: keep it off the event loop.
            obj: Any = await asyncio.to_thread(importlib.import_module, module_name)
        except (Exception, SystemExit) as exc:
            raise CallTargetError(target, f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise CallTargetError(target, f"{module_name} has no attribute {attr_path!r}") from exc
        if not callable(obj):
            raise CallTargetError(target, f"{attr_path} is not callable")
        self._cache[target] = obj
        return obj  # type: ignore[no-any-return]


async def invoke(fn: Target, args: Mapping[str, Any], limit_bytes: int) -> Outcome:
    """Call ``fn(**args)`` and turn how it ended into an outcome; never raises but for cancellation.

    An async function runs on the event loop, a plain one in a thread. Returning None, 0 or True is exit 0,
    False is exit 1, another int is the exit code, anything else is exit 0 with its ``str`` as the output.
    An exception is exit 1 with its traceback as stderr; ``SystemExit`` carries its own code.
    """
    try:
        if inspect.iscoroutinefunction(fn):
            result = await fn(**args)
        else:
            result = await _in_thread(fn, args)
            if inspect.isawaitable(result):
                result = await result
    except SystemExit as exc:
        return _exit_outcome(exc.code, limit_bytes)
    except Exception as exc:  # the job's own failure: it becomes its result
        err = BoundedCapture(limit_bytes)
        err.feed("".join(traceback.format_exception(exc)).encode(errors="replace"))
        return Outcome(JobStatus.FAILED, 1, stderr=err.value(), truncated_bytes=err.cut_bytes)
    if result is None or result is True:
        return Outcome(JobStatus.SUCCEEDED, 0)
    if result is False:
        return Outcome(JobStatus.FAILED, 1)
    if isinstance(result, int):
        return Outcome(JobStatus.SUCCEEDED if result == 0 else JobStatus.FAILED, result)
    out = BoundedCapture(limit_bytes)
    out.feed(str(result).encode(errors="replace"))
    return Outcome(JobStatus.SUCCEEDED, 0, stdout=out.value(), truncated_bytes=out.cut_bytes)


def _exit_outcome(code: object, limit_bytes: int) -> Outcome:
    if code is None:
        return Outcome(JobStatus.SUCCEEDED, 0)
    if isinstance(code, int):
        return Outcome(JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED, code)
    err = BoundedCapture(limit_bytes)
    err.feed(str(code).encode(errors="replace"))
    return Outcome(JobStatus.FAILED, 1, stderr=err.value(), truncated_bytes=err.cut_bytes)


async def _in_thread(fn: Target, args: Mapping[str, Any]) -> Any:
    """Run a blocking function in a daemon thread of its own.

    Not ``asyncio.to_thread``: a thread cannot be stopped, and a call that hangs past its timeout or a
    kill would then hold up the default executor's shutdown, and so the agent's exit, for ever.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()

    def settle(result: Any, exc: BaseException | None) -> None:
        if done.done():  # timed out or killed meanwhile
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def main() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = context.run(fn, **args)
        except BaseException as exc:  # handed to the loop, which decides what it means
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed while the call ran
            logger.warning("call %s ended after its event loop closed", getattr(fn, "__qualname__", fn))

    threading.Thread(target=main, name=f"ekiden-call-{getattr(fn, '__name__', 'fn')}", daemon=True).start()
    return await done
