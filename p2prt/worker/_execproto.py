"""The pipe between the worker and its executor subprocesses: framing and frame kinds.

Both ends are the same user on the same machine and trust each other, so a frame is just
``4-byte big-endian length + pickle (protocol 5)`` of a tuple whose first item names its
kind. Sans-IO: :func:`encode` makes bytes, :class:`FrameReader` turns received bytes back
into messages; neither touches a socket.

Large payloads do not go through the pipe: :func:`encode_shared` pickles each
:class:`~p2prt.worker._shm.MemoryFile` (or a memoryview of a mapped
:class:`~p2prt.worker._shm.SharedBuffer`) as a reference, and the caller sends their
descriptors with the frame (``SCM_RIGHTS``); the reader maps them. Such a frame's
length word has its top bit set and is followed by a 2-byte count of descriptors; the
reader takes that many from the descriptors received so far (they arrive no later than
the frame's first byte) and maps them.

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

import array
import io
import os
import pickle
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._shm import MemoryFile, SharedBuffer

__all__ = ["MAX_FRAME", "FrameReader", "RemoteErrorInfo", "SharedFrame", "encode", "encode_shared", "segments", "MAX_FDS", "ANCILLARY_SIZE", "fds_from_ancillary"]

#: The length prefix has 4 bytes; its top bit marks a frame with descriptors.
MAX_FRAME = 2**31 - 1
#: Descriptors per frame (and per write: SCM_MAX_FD is 253).
MAX_FDS = 200

_HEADER = 4
_SHARED = 1 << 31

#: Room for the descriptors of one write in ``recvmsg``.
ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS * 4)


def fds_from_ancillary(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors in ``recvmsg``'s ancillary data."""
    out: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            out.extend(fds)
    return out


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


class _SharedPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.shared: list[SharedBuffer | MemoryFile] = []

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, MemoryFile):
            if len(self.shared) < MAX_FDS:
                self.shared.append(obj)
                return ("shm", len(self.shared) - 1, len(obj))
            return ("bytes", obj.view().tobytes())
        if type(obj) is memoryview:
            base = obj.obj
            if isinstance(base, SharedBuffer) and obj.nbytes == len(base) and len(self.shared) < MAX_FDS:
                self.shared.append(base)
                return ("shm", len(self.shared) - 1, len(base))
            return ("bytes", obj.tobytes())
        return None


class SharedFrame(bytes):
    """A frame and the shared memory whose descriptors must go with its first byte."""

    shared: list[SharedBuffer | MemoryFile]


def segments(frames: list[bytes]) -> list[tuple[bytes | memoryview, list[int]]]:
    """How to write ``frames``: pieces of their concatenation, each to be sent with the
    descriptors listed (those of a :class:`SharedFrame` go with its first byte)."""
    data = frames[0] if len(frames) == 1 else b"".join(frames)
    cuts: list[tuple[int, list[int]]] = []
    offset = 0
    for f in frames:
        if type(f) is SharedFrame:
            cuts.append((offset, [b.fd for b in f.shared]))
        offset += len(f)
    if not cuts:
        return [(data, [])]
    view = memoryview(data)
    out: list[tuple[bytes | memoryview, list[int]]] = []
    if cuts[0][0]:
        out.append((view[: cuts[0][0]], []))
    for i, (start, fds) in enumerate(cuts):
        end = cuts[i + 1][0] if i + 1 < len(cuts) else len(data)
        out.append((view[start:end], fds))
    return out


def encode_shared(message: tuple[Any, ...]) -> bytes:
    """A frame whose memoryviews of shared buffers travel as descriptors: a
    :class:`SharedFrame` naming the buffers to send with it, in order. Other memoryviews
    are copied in."""
    fp = io.BytesIO()
    fp.write(bytes(_HEADER + 2))
    pickler = _SharedPickler(fp)
    pickler.dump(message)
    shared = pickler.shared
    body_size = fp.tell() - _HEADER - 2
    if body_size + 2 > MAX_FRAME:
        raise ValueError(f"frame of {body_size} bytes exceeds the executor pipe's limit of {MAX_FRAME}")
    buf = fp.getbuffer()
    buf[:_HEADER] = ((body_size + 2) | _SHARED).to_bytes(_HEADER, "big")
    buf[_HEADER : _HEADER + 2] = len(shared).to_bytes(2, "big")
    del buf
    if not shared:
        return fp.getvalue()
    frame = SharedFrame(fp.getvalue())
    frame.shared = shared
    return frame


class _SharedUnpickler(pickle.Unpickler):
    def __init__(self, data: memoryview, fds: list[int]) -> None:
        super().__init__(io.BytesIO(data))
        self.fds = fds
        self.taken = [False] * len(fds)

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "bytes":
            return pid[1]
        if kind == "shm":
            index, size = pid[1], pid[2]
            if self.taken[index]:
                raise pickle.UnpicklingError("a descriptor is referenced twice")
            self.taken[index] = True
            return memoryview(SharedBuffer.adopt(self.fds[index], size))
        raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")


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
        self._fds: deque[int] = deque()  # received descriptors not yet claimed by a frame

    @property
    def wanted(self) -> int:
        """Bytes still missing to complete the frame being received (at least 1)."""
        avail = len(self._buf) - self._pos
        if avail < _HEADER:
            return _HEADER - avail
        size = int.from_bytes(self._buf[self._pos : self._pos + _HEADER], "big") & ~_SHARED
        return max(1, _HEADER + size - avail)

    def feed(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...] = ()) -> None:
        """Append received bytes and the descriptors that came with them."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        self._fds.extend(fds)

    def close(self) -> None:
        """Close descriptors that no frame claimed."""
        while self._fds:
            os.close(self._fds.popleft())

    def messages(self) -> list[Any]:
        """Decode and remove every complete frame received so far. A frame that cannot be
        unpickled becomes ``("bad", "why")``."""
        out: list[Any] = []
        buf, pos, end = self._buf, self._pos, len(self._buf)
        with memoryview(buf) as view:
            while end - pos >= _HEADER:
                word = int.from_bytes(view[pos : pos + _HEADER], "big")
                size = word & ~_SHARED
                if end - pos - _HEADER < size:
                    break
                start = pos + _HEADER
                try:
                    if word & _SHARED:
                        out.append(self._load_shared(view[start : start + size]))
                    else:
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

    def _load_shared(self, frame: memoryview) -> Any:
        count = int.from_bytes(frame[:2], "big")
        if count > len(self._fds):
            raise pickle.UnpicklingError(f"a frame needs {count} descriptors, {len(self._fds)} arrived")
        fds = [self._fds.popleft() for _ in range(count)]
        unpickler = _SharedUnpickler(frame[2:], fds)
        try:
            return unpickler.load()
        finally:
            for fd, taken in zip(fds, unpickler.taken, strict=True):
                if not taken:
                    os.close(fd)
