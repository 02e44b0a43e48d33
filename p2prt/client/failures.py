"""Turning a remote failure into the exception ``get`` raises.

When a task raised ``ValueError``, ``get`` raises an instance of a class derived from
both :class:`~p2prt.errors.TaskError` and ``ValueError`` (as Ray's RayTaskError does),
so ``except ValueError`` works; its message holds the remote traceback and the worker's
user and host. When the original type cannot be subclassed (or unpickled here), a plain
``TaskError`` carries the same message.
"""

from __future__ import annotations

import linecache
import pickle
import re
import types
from typing import Any

from ..errors import MissingPackageError, TaskError

__all__ = ["task_error_from_info", "dual_error"]

_dual_types: dict[type, type] = {}


def _dual_type(cause: type[BaseException]) -> type[TaskError] | None:
    if issubclass(cause, TaskError):
        return cause
    if not issubclass(cause, Exception):
        return None
    cached = _dual_types.get(cause)
    if cached is not None:
        return cached
    try:
        dual = type(f"TaskError({cause.__name__})", (TaskError, cause), {"__module__": "p2prt.errors"})
    except TypeError:  # e.g. layout conflicts with a C-implemented base
        return None
    _dual_types[cause] = dual
    return dual


def dual_error(cause: BaseException | None, cause_type: type | None, message: str, worker: str) -> TaskError:
    """An exception that is a TaskError and, where possible, an instance of ``cause_type``."""
    cls = _dual_type(cause_type) if cause_type is not None else None
    if cls is None:
        return TaskError(message, cause_type=getattr(cause_type, "__name__", ""), worker=worker)
    exc = cls.__new__(cls)
    if cause is not None:
        try:
            exc.__dict__.update(getattr(cause, "__dict__", {}))
        except (AttributeError, TypeError):
            pass
    Exception.__init__(exc, message)
    exc.cause_type = cause_type.__name__ if cause_type else ""
    exc.worker = worker
    if cause is not None:
        exc.__cause__ = cause
    return exc


_DYNAMIC = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (\S+)$')


def restore_sources(traceback: str, fn: Any) -> str:
    """Name the driver's files in a remote traceback.

    Functions shipped by value run on the worker with ``File "<dynamic-code>"`` and no
    source line; the driver has both. A frame's function is looked up by name among the
    submitted function and its module's globals; unknown frames are left as they are.
    """
    if fn is None or "<dynamic-code>" not in traceback:
        return traceback
    files: dict[str, str] = {}
    code = getattr(fn, "__code__", None)
    if code is not None:
        files[code.co_name] = code.co_filename
    for value in getattr(fn, "__globals__", {}).values():
        if isinstance(value, types.FunctionType):
            files.setdefault(value.__code__.co_name, value.__code__.co_filename)
    out: list[str] = []
    for line in traceback.splitlines():
        match = _DYNAMIC.match(line)
        filename = files.get(match.group(3)) if match else None
        if match is None or filename is None:
            out.append(line)
            continue
        indent, lineno = match.group(1), int(match.group(2))
        out.append(f'{indent}File "{filename}", line {lineno}, in {match.group(3)}')
        source = linecache.getline(filename, lineno).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if traceback.endswith("\n") else "")


def task_error_from_info(info: Any, *, name: str, worker: str, fn: Any = None) -> TaskError:
    """Build the exception for a task that raised, from the executor's error info."""
    if getattr(info, "missing_package", None):
        return MissingPackageError(
            f"task {name} failed on {worker}: package {info.missing_package!r} is not installed there "
            f"(install it on that machine, or ship your own module next to the script)",
            worker=worker,
        )
    cause: BaseException | None = None
    cause_type: type | None = None
    if info.exception is not None:
        try:
            cause = pickle.loads(info.exception)
            cause_type = type(cause)
        except Exception:
            cause = None
    header = f"task {name} failed on {worker}: {info.type_qualname}: {info.message}"
    remote = restore_sources(info.traceback, fn).rstrip()
    if not remote.startswith("Traceback"):
        remote = f"Traceback (most recent call last):\n{remote}"
    message = f"{header}\n\nRemote {remote[0].lower()}{remote[1:]}"
    return dual_error(cause, cause_type, message, worker)
