"""``@p2prt.remote``: remote functions with Ray's call style."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._api import current_runtime
from .client.tasks import TaskOptions

__all__ = ["remote", "RemoteFunction"]

R = TypeVar("R")
_OPTION_NAMES = {"num_cpus", "resources", "max_retries", "retry_exceptions", "timeout", "name"}


class RemoteFunction(Generic[R]):
    """A function that runs on the cluster: ``f.remote(*args)`` returns an ObjectRef."""

    def __init__(self, fn: Callable[..., R], options: TaskOptions) -> None:
        self._function = fn
        self._options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = getattr(self._function, "__name__", "f")
        raise TypeError(
            f"Remote functions cannot be called directly. Use {name}.remote(...) instead "
            f"(and p2prt.get(...) on the result)."
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit a call; returns an ObjectRef at once."""
        return current_runtime().submit(self._function, args, kwargs, self._options)

    def options(self, **options: Any) -> RemoteFunction[R]:
        """A copy with some options changed (``num_cpus``, ``max_retries``, ``timeout``, ...)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTION_NAMES))}"
            )
        merged = {**self._options.__dict__, **options}
        return RemoteFunction(self._function, TaskOptions(**merged))

    def __repr__(self) -> str:
        return f"<p2prt.RemoteFunction {getattr(self._function, '__qualname__', '?')}>"


def remote(*args: Any, **options: Any) -> Any:
    """Decorator: ``@p2prt.remote`` or ``@p2prt.remote(num_cpus=2, max_retries=0, timeout=60)``.

    Options: ``num_cpus`` (1), ``resources`` (None), ``max_retries`` (3; -1 forever),
    ``retry_exceptions`` (False), ``timeout`` (None: seconds per attempt), ``name``.
    """
    if len(args) == 1 and not options and callable(args[0]):
        return RemoteFunction(args[0], TaskOptions())
    if args:
        raise TypeError("use @p2prt.remote or @p2prt.remote(option=value, ...)")
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTION_NAMES))}")
    opts = TaskOptions(**options)

    def wrap(fn: Callable[..., Any]) -> RemoteFunction[Any]:
        if isinstance(fn, type):
            raise TypeError("p2prt.remote decorates functions (actors are not supported yet)")
        return RemoteFunction(fn, opts)

    return wrap
