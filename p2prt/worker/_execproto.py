"""The pipe between the worker and its executor subprocesses: framing and frame kinds.

Both ends are the same user on the same machine and trust each other, so a frame is just
``4-byte big-endian length + pickle (protocol 5)`` of a tuple whose first item names its
kind. Sans-IO: :func:`encode` makes bytes, :class:`FrameReader` turns received bytes back
into messages; neither touches a socket.

Worker → executor::

    ("fn", fn_id, payload)                       a cloudpickled function, once per executor
    ("run", [(task_id, fn_id, args, buffers), ...])   a chunk, run in order
    ("cancel", task_id, force)                   followed by SIGINT to the executor
    ("rep", rid, ok, value)                      answer to a "req" (value is the exception if not ok)
    ("exit",)                                    finish and exit (an extra executor retires)

Executor → worker::

    ("ready", pid)                               sent once at start-up
    ("res", [(task_id, status, data, buffers), ...])  status "ok" | "error" | "cancelled"
    ("out", task_id, "stdout" | "stderr", text)  output of the running task (-1: no task)
    ("req", rid, task_id, kind, payload)         a nested call; "get" lends the slot out
    ("back", [task_id, ...])                     tasks given back unstarted (before a "get")
    ("stopped", task_id)                         force-cancel of the running task: SIGSTOPped,
                                                 waiting for SIGKILL
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_FRAME", "FrameReader", "RemoteErrorInfo", "encode"]

#: The length prefix has 4 bytes.
MAX_FRAME = 2**32 - 1

_HEADER = 4


@dataclass(frozen=True)
class RemoteErrorInfo:
    """What a client needs to re-raise a task's exception: sent as cloudpickle bytes in an
    ``ExecResult`` of status ``"error"``.

    ``exception`` is the cloudpickled exception object, or None when it cannot be pickled
    (or unpickled again); ``traceback`` is the remote traceback without the executor's own
    frames; ``missing_package`` names the package whose absence made the function or its
    arguments impossible to load on this worker.
    """

    type_module: str
    type_qualname: str
    exception: bytes | None
    message: str
    traceback: str
    missing_package: str | None = None


def encode(message: tuple[Any, ...]) -> bytes:
    """One frame: length prefix + pickle of ``message``.

    Raises ``ValueError`` if the pickle is larger than :data:`MAX_FRAME`.
    """
    body = pickle.dumps(message, protocol=5)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds the executor pipe's limit of {MAX_FRAME}")
    return len(body).to_bytes(_HEADER, "big") + body


class FrameReader:
    """Reassembles frames from received bytes.

    >>> r = FrameReader()
    >>> r.feed(encode(("exit",)))
    >>> r.messages()
    [('exit',)]
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    @property
    def wanted(self) -> int:
        """Bytes still missing to complete the frame being received (at least 1)."""
        avail = len(self._buf) - self._pos
        if avail < _HEADER:
            return _HEADER - avail
        size = int.from_bytes(self._buf[self._pos : self._pos + _HEADER], "big")
        return max(1, _HEADER + size - avail)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def messages(self) -> list[Any]:
        """Decode and remove every complete frame received so far. A frame that cannot be
        unpickled becomes ``("bad", "why")``."""
        out: list[Any] = []
        buf, pos, end = self._buf, self._pos, len(self._buf)
        with memoryview(buf) as view:
            while end - pos >= _HEADER:
                size = int.from_bytes(view[pos : pos + _HEADER], "big")
                if end - pos - _HEADER < size:
                    break
                start = pos + _HEADER
                try:
                    out.append(pickle.loads(view[start : start + size]))
                except Exception as exc:  # skip it; the receiver decides what that means
                    out.append(("bad", f"{type(exc).__name__}: {exc}"))
                pos = start + size
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > 1 << 20:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return out
