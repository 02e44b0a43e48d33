"""Turning a remote failure into the exception ``get`` raises.

When a task raised ``ValueError``, ``get`` raises an instance of a class derived from
both :class:`~p2prt.errors.TaskError` and ``ValueError`` (as Ray's RayTaskError does),
so ``except ValueError`` works; its message holds the remote traceback and the worker's
user and host. When the original type cannot be subclassed (or unpickled here), a plain
``TaskError`` carries the same message.
"""

from __future__ import annotations

import pickle
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


def task_error_from_info(info: Any, *, name: str, worker: str) -> TaskError:
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
    message = f"{header}\n\nRemote traceback (most recent call last):\n{info.traceback.rstrip()}"
    return dual_error(cause, cause_type, message, worker)
