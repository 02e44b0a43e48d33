"""p2prt — pool idle computers into one encrypted peer-to-peer compute cluster.

    import p2prt

    p2prt.init()                       # embedded local cluster; or p2prt.init("alice/friends")

    @p2prt.remote
    def square(x):
        return x * x

    print(sum(p2prt.get([square.remote(i) for i in range(100)])))

Importing p2prt starts nothing; the runtime starts at ``init()`` or the first call.
The API's modules load on first use of their names, so that the processes that only
run the package's roles (``python -m p2prt worker``, executors) do not import them.
"""

from typing import TYPE_CHECKING, Any

from . import errors
from .errors import GetTimeoutError, ObjectLostError, P2prtError, TaskError, WorkerCrashedError

if TYPE_CHECKING:
    from ._api import ClusterInfo, cancel, get, init, is_initialized, put, shutdown, stats, wait
    from ._remote import RemoteFunction, remote
    from .client.objects import ObjectRef
    from .executor import Executor

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(
        ("ClusterInfo", "cancel", "get", "init", "is_initialized", "put", "shutdown", "stats", "wait"),
        "p2prt._api",
    ),
    **dict.fromkeys(("RemoteFunction", "remote"), "p2prt._remote"),
    "ObjectRef": "p2prt.client.objects",
    "Executor": "p2prt.executor",
}

if not TYPE_CHECKING:  # hidden from type checkers: a module __getattr__ would make any name valid

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'p2prt' has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


__all__ = [
    "__version__",
    "errors",
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "get",
    "wait",
    "put",
    "cancel",
    "stats",
    "ObjectRef",
    "Executor",
    "RemoteFunction",
    "ClusterInfo",
    "P2prtError",
    "TaskError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "ObjectLostError",
]
