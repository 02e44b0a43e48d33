"""The records the executor pool takes and gives: tasks, results, statistics.

Re-exported by :mod:`p2prt.worker.pool`, where they belong to the public API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.messages import Buffer

__all__ = ["ExecResult", "ExecTask", "PoolStatistics"]


@dataclass(frozen=True)
class ExecTask:
    """One task for the pool. ``fn_payload`` (cloudpickle of the function) is sent to an
    executor only if that executor has not seen ``fn_id`` yet; ``pickle.loads(args,
    buffers=buffers)`` gives ``(args, kwargs)``. Large ``args``/``buffers`` are memoryviews
    of shared memory (:mod:`p2prt.worker._shm`), handed to the executor by descriptor."""

    task_id: int
    fn_id: bytes
    fn_payload: bytes
    args: Buffer
    buffers: list[Buffer] = field(default_factory=list)
    timeout: float | None = None
    fetched: tuple[tuple[bytes, Buffer, list[Buffer]], ...] = ()  # held arguments' values


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a task. ``status`` is ``"ok"`` (``data``/``buffers`` from
    :func:`p2prt.serialization.dumps` of the value), ``"error"`` (``data`` is a cloudpickled
    :class:`~p2prt.worker._execproto.RemoteErrorInfo`), ``"crashed"``, ``"timeout"`` or
    ``"cancelled"`` (``message`` says what happened)."""

    task_id: int
    status: str
    data: Buffer = b""
    buffers: list[Buffer] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of the pool. ``running`` counts tasks sent to executors and not
    finished; ``executors`` those alive now (extras included), ``lent`` those waiting in
    a nested ``get``; ``functions_sent`` counts ``"fn"`` frames."""

    size: int
    running: int
    queued: int
    executors_started: int
    crashes: int
    timeouts: int
    executors: int = 0
    lent: int = 0
    functions_sent: int = 0
