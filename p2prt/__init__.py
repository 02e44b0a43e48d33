"""p2prt — pool idle computers into one encrypted peer-to-peer compute cluster.

    import p2prt

    p2prt.init()                       # embedded local cluster; or p2prt.init("alice/friends")

    @p2prt.remote
    def square(x):
        return x * x

    print(sum(p2prt.get([square.remote(i) for i in range(100)])))

Importing p2prt starts nothing; the runtime starts at ``init()`` or the first call.
"""

from . import errors
from ._api import ClusterInfo, cancel, get, init, is_initialized, put, shutdown, wait
from ._remote import RemoteFunction, remote
from .client.objects import ObjectRef
from .errors import GetTimeoutError, ObjectLostError, P2prtError, TaskError, WorkerCrashedError

__version__ = "0.1.0"

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
    "ObjectRef",
    "RemoteFunction",
    "ClusterInfo",
    "P2prtError",
    "TaskError",
    "GetTimeoutError",
    "WorkerCrashedError",
    "ObjectLostError",
]
