"""The runtime a task sees inside an executor: nested ``.remote()`` and ``get``.

Requests go through the executor's channel to its worker, which relays them to the
task's owner (the client that submitted it) over their connection. While a task waits
in ``get``, the worker lends its slot to another executor, so nested chains deeper than
the number of slots cannot deadlock.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from typing import Any

from ..errors import GetTimeoutError, RuntimeUsageError
from ..serialization import dumps, loads, ship_by_value, ship_user_modules

__all__ = ["TaskRuntime"]


class TaskRuntime:
    """Runtime used when the API is called from inside a running task."""

    def _request(self, kind: str, payload: Any) -> Any:
        from . import executor

        return executor.request(kind, payload)

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: Any) -> Any:
        from ..client.objects import ObjectRef

        ship_user_modules()
        ship_by_value(fn)
        fn_payload, _ = dumps(fn)
        call, bufs = dumps((args, kwargs))
        if bufs:
            call = pickle.dumps((args, kwargs), protocol=5)
        ids = self._request("submit", (fn_payload, [call], pickle.dumps(options)))
        return ObjectRef(ids[0])

    def put(self, value: Any) -> Any:
        raise RuntimeUsageError("p2prt.put inside a task is not supported yet; return the value instead")

    def get(self, refs: Iterable[Any], timeout: float | None = None, progress: bool | str = False) -> list[Any]:
        # progress: ignored inside a task (its output goes to the script line by line)
        refs = list(refs)
        replies = self._request("get", ([r.id for r in refs], timeout))
        out = []
        for _oid, status, data, buffers, _message in replies:
            if status == "ok":
                out.append(loads(data, buffers))
            elif status == "timeout":
                raise GetTimeoutError(f"get timed out after {timeout} s inside a task")
            else:
                raise pickle.loads(data)
        return out

    def wait(self, refs: list[Any], num_returns: int, timeout: float | None) -> tuple[list[Any], list[Any]]:
        values_ready = self.get(refs[:num_returns], timeout)
        del values_ready
        return refs[:num_returns], refs[num_returns:]

    def cancel(self, ref: Any, *, force: bool = False) -> None:
        raise RuntimeUsageError("p2prt.cancel inside a task is not supported yet")

    async def get_async(self, ref: Any) -> Any:
        raise RuntimeUsageError("await ref inside a task is not supported; use p2prt.get")

    def shutdown(self) -> None:
        pass
