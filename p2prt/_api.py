"""The public task API: thin functions over the current runtime (Ray's names).

The runtime is an object (``ClientRuntime`` in a driver, ``TaskRuntime`` inside a task)
held in one module variable; nothing global beyond that.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import ConfigError, RuntimeUsageError

__all__ = ["init", "shutdown", "is_initialized", "get", "wait", "put", "cancel", "current_runtime", "ClusterInfo"]

SWITCH_INTERVAL = 0.0005
"""``sys.setswitchinterval`` while a runtime runs: a user thread that computes must not
starve the runtime's thread of the GIL for Python's default 5 ms (DESIGN §9: a result
took 16 ms instead of 0.4 ms; 0.5 ms brought it to ~2 ms)."""


class _Runtime(Protocol):
    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: Any) -> Any: ...
    def put(self, value: Any) -> Any: ...
    def get(self, refs: Any, timeout: float | None = None, progress: bool | str = False) -> list[Any]: ...
    def wait(self, refs: list[Any], num_returns: int, timeout: float | None) -> tuple[list[Any], list[Any]]: ...
    def cancel(self, ref: Any, *, force: bool = False) -> None: ...
    async def get_async(self, ref: Any) -> Any: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class ClusterInfo:
    """What ``init`` connected to."""

    cluster: str
    board: str
    user: str
    embedded: bool


_runtime: _Runtime | None = None
_info: ClusterInfo | None = None
_embedded: Any = None
_lock = threading.RLock()
_old_switch: float | None = None


def init(
    cluster: str | None = None,
    *,
    board: str | None = None,
    num_cpus: int | None = None,
    key: str | None = None,
    user: str | None = None,
    ignore_reinit_error: bool = False,
    large_object_threshold: int | None = None,
) -> ClusterInfo:
    """Connect to ``cluster`` ("owner/name") through its board, or, with no cluster,
    start the embedded local cluster (a board and ``num_cpus`` worker slots on loopback).

    The board address comes from ``board``, else ``$P2PRT_BOARD``, else config.toml; the
    key from ``key`` or the usual lookup (``p2prt id``). Raises
    :class:`~p2prt.errors.RuntimeUsageError` if already initialised (unless
    ``ignore_reinit_error``), and connection or authentication errors.

    A task's value of at least ``large_object_threshold`` bytes (default 1 MiB, or
    ``$P2PRT_LARGE_OBJECT_THRESHOLD``) stays on the worker that produced it: ``get``
    fetches it from there, and a task on another worker that takes it as an argument
    has that worker fetch it directly.

    >>> import p2prt
    >>> p2prt.init()                       # doctest: +SKIP
    >>> p2prt.init("alice/friends")        # doctest: +SKIP
    """
    global _runtime, _info, _embedded, _old_switch
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                assert _info is not None
                return _info
            raise RuntimeUsageError("p2prt.init() was already called; call p2prt.shutdown() first")
        if cluster is None:
            from .config import setting

            cluster = setting("cluster")  # $P2PRT_CLUSTER or config.toml; else the embedded cluster
        if cluster is None:
            from .client.embedded import EMBEDDED_USER, EmbeddedCluster

            # The worker process starts first: its start-up overlaps the runtime's imports.
            emb = EmbeddedCluster(num_cpus)
            try:
                from .client.runtime import ClientRuntime

                runtime = ClientRuntime(
                    board_address="",
                    cluster=emb.cluster,
                    identity=emb.identity,
                    known_boards=emb.known_boards,
                    background=emb.start,
                    hold_over=_hold_over(large_object_threshold),
                )
                runtime.start()
            except BaseException:
                emb.cleanup()
                raise
            _embedded = emb
            info = ClusterInfo(emb.cluster, emb.address, EMBEDDED_USER, True)
        else:
            from .board.client import resolve_board_address
            from .client.runtime import ClientRuntime
            from .identity import NodeIdentity, default_user_name, load_user_key

            address = resolve_board_address(board)
            name = user or default_user_name()
            identity = NodeIdentity.create(load_user_key(key), name)
            runtime = ClientRuntime(
                board_address=address,
                cluster=cluster,
                identity=identity,
                hold_over=_hold_over(large_object_threshold),
            )
            runtime.start()
            info = ClusterInfo(cluster, address, name, False)
        _runtime, _info = runtime, info
        _old_switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        return info


def _hold_over(threshold: int | None) -> int:
    if threshold is None:
        from .config import resolve

        text, source = resolve("large_object_threshold")
        try:
            threshold = int(text or 1 << 20)
        except ValueError:
            raise ConfigError(f"large_object_threshold ({source}) must be a number of bytes, not {text!r}") from None
    if threshold < 0:
        raise ConfigError("large_object_threshold must be >= 0 (0: never hold values on workers)")
    return threshold


def stats() -> dict[str, Any]:
    """Bytes this process exchanged with each peer, by path, and the counters of every
    worker it is connected to::

        {"peers": {peer id: {"user": ..., "sent": {"direct": n}, "received": {"direct": n}}},
         "workers": {peer id: {"peers": {...same form...}, "held": {"objects": n, "bytes": n}}}}
    """
    runtime = current_runtime()
    collect = getattr(runtime, "collect_traffic", None)
    token = getattr(runtime, "_token", None)
    if collect is None or token is None:
        raise RuntimeUsageError("p2prt.stats() needs the runtime of a script (not of a task)")
    import trio

    result: dict[str, Any] = trio.from_thread.run(collect, trio_token=token)
    return result


def shutdown() -> None:
    """Stop the runtime (and the embedded cluster). Safe to call twice."""
    global _runtime, _info, _embedded, _old_switch
    with _lock:
        runtime, _runtime, _info = _runtime, None, None
        if runtime is not None:
            runtime.shutdown()
        if _embedded is not None:
            _embedded.cleanup()
            _embedded = None
        if _old_switch is not None:
            sys.setswitchinterval(_old_switch)
            _old_switch = None


atexit.register(shutdown)


def is_initialized() -> bool:
    return _runtime is not None


def current_runtime() -> _Runtime:
    """The runtime to use: inside a task, the task's; else the driver's, starting the
    embedded cluster on first use (as Ray does)."""
    global _runtime
    if _runtime is not None:
        return _runtime
    with _lock:
        if _runtime is None:
            if os.environ.get("P2PRT_EXECUTOR") == "1":
                from .worker.task_runtime import TaskRuntime

                _runtime = TaskRuntime()
            else:
                init()
        assert _runtime is not None
        return _runtime


def _check_not_in_trio(what: str) -> None:
    trio = sys.modules.get("trio")  # not imported: certainly not inside trio
    if trio is None or not trio.lowlevel.in_trio_run():
        return
    raise RuntimeUsageError(
        f"p2prt.{what}() blocks, and this is inside a trio event loop: use `await ref` "
        "(or `await trio.to_thread.run_sync(p2prt.get, refs)`) instead"
    )


def _as_refs(refs: Any, what: str) -> tuple[list[Any], bool]:
    from .client.objects import ObjectRef

    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"p2prt.{what}() takes ObjectRefs, got {type(r).__name__} in the list")
        return list(refs), False
    raise TypeError(f"p2prt.{what}() takes an ObjectRef or a list of them, got {type(refs).__name__}")


def get(refs: Any, *, timeout: float | None = None, progress: bool | str = False) -> Any:
    """The value of a ref, or the values of a list of refs (in order).

    ``progress=True`` (or a label) shows a tqdm bar that advances as results arrive.
    Raises the task's error (an instance of both :class:`~p2prt.errors.TaskError` and
    the original exception type), or :class:`~p2prt.errors.GetTimeoutError`.
    """
    _check_not_in_trio("get")
    items, single = _as_refs(refs, "get")
    values = current_runtime().get(items, timeout, progress)
    return values[0] if single else values


def wait(refs: Sequence[Any], *, num_returns: int = 1, timeout: float | None = None) -> tuple[list[Any], list[Any]]:
    """``(ready, not_ready)``: the first ``num_returns`` finished refs, in input order."""
    _check_not_in_trio("wait")
    items, _ = _as_refs(list(refs), "wait")
    if not 0 <= num_returns <= len(items):
        raise ValueError(f"num_returns must be between 0 and {len(items)}, got {num_returns}")
    if len({r.id for r in items}) != len(items):
        raise ValueError("p2prt.wait() got the same ref twice")
    return current_runtime().wait(items, num_returns, timeout)


def put(value: Any) -> Any:
    """Store ``value`` in this process and return a ref to it."""
    return current_runtime().put(value)


def cancel(ref: Any, *, force: bool = False) -> None:
    """Cancel a task: a waiting one never runs; a running one is interrupted
    (``force=True`` kills its process). ``get`` then raises TaskCancelledError."""
    items, _ = _as_refs(ref, "cancel")
    current_runtime().cancel(items[0], force=force)
