"""What a running task produces besides its value: printed text and exceptions.

Used inside executor subprocesses; :mod:`traceback` and ``cloudpickle`` load only when the
first exception needs them.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable

from ._execproto import RemoteErrorInfo

__all__ = ["TaskOutput", "error_info"]


class TaskOutput(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` inside an executor: complete lines (and whatever is
    flushed) go to ``send(name, text)``; ``fileno()`` is the real descriptor."""

    def __init__(self, send: Callable[[str, str], None], name: str, fd: int) -> None:
        super().__init__()
        self._send = send
        self._name = name
        self._fd = fd
        self._parts: list[str] = []
        self._size = 0

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        cut = s.rfind("\n")
        if cut < 0:
            self._parts.append(s)
            self._size += len(s)
            if self._size >= 1 << 16:
                self.flush()
            return len(s)
        head, tail = s[: cut + 1], s[cut + 1 :]
        if self._parts:
            self._parts.append(head)
            head = "".join(self._parts)
        self._parts = [tail] if tail else []
        self._size = len(tail)
        self._send(self._name, head)
        return len(s)

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts = []
            self._size = 0
            self._send(self._name, text)


def error_info(exc: BaseException, *, loading: bool, skip_file: str) -> bytes:
    """cloudpickled :class:`RemoteErrorInfo` for ``exc``; leading traceback frames from
    ``skip_file`` (the executor's own) are left out. ``loading``: the exception came from
    unpickling the function or its arguments, so a missing module is named."""
    import traceback

    import cloudpickle

    from ..serialization import missing_package

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == skip_file:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        text = f"{type(exc).__qualname__} (traceback could not be formatted)\n"
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__qualname__}: str() failed>"
    blob: bytes | None
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)
    except Exception:
        blob = None
    info = RemoteErrorInfo(
        type_module=type(exc).__module__,
        type_qualname=type(exc).__qualname__,
        exception=blob,
        message=message,
        traceback=text,
        missing_package=missing_package(exc) if loading else None,
    )
    data: bytes = cloudpickle.dumps(info, protocol=5)
    return data
