"""Shared memory for large payloads between the worker and its executors.

Large payloads live in anonymous memory files (``memfd_create``) whose *descriptors*
pass between the worker and an executor over their socketpair (``SCM_RIGHTS``):

- :class:`MemoryFile` — a memory file written with ``write`` and never mapped here. The
  worker receives a large task argument into one (decrypted in 1 MiB pieces and
  written: faster here than decrypting into a fresh mapping, whose page faults cost
  more than the kernel's copy) and hands it on without reading it
  (:class:`~p2prt.worker._attach.SharedFile`); an executor writes a large result into
  one.
- :class:`SharedBuffer` — a memory file mapped into this process: how the other side
  reads one (an executor its argument, the worker a result it encrypts to the client).

No payload byte goes through the pipe, and nothing is left behind when a process dies:
the memory lives as long as some process holds the descriptor or a mapping.
"""

from __future__ import annotations

import mmap
import os
import weakref

__all__ = ["SharedBuffer", "MemoryFile", "SHM_MIN"]

SHM_MIN = 1 << 20
"""Buffers of at least this size go through shared memory; smaller ones are copied."""

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class SharedBuffer(mmap.mmap):
    """A memfd mapping; :attr:`fd` is open until the object is collected."""

    fd: int

    @classmethod
    def create(cls, size: int) -> SharedBuffer:
        """A new zero-filled shared buffer of ``size`` (> 0) bytes."""
        fd = os.memfd_create("p2prt", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return cls._map(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(cls, fd: int, size: int) -> SharedBuffer:
        """Map a descriptor received from the other process (taking ownership of it)."""
        try:
            if os.fstat(fd).st_size < size:
                raise ValueError(f"shared memory of {os.fstat(fd).st_size} bytes is smaller than announced {size}")
            return cls._map(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _map(cls, fd: int, size: int) -> SharedBuffer:
        buf = cls(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        buf.fd = fd
        weakref.finalize(buf, os.close, fd)
        return buf

    @classmethod
    def copy_of(cls, data: bytes | bytearray | memoryview) -> SharedBuffer:
        """A shared buffer holding a copy of ``data``."""
        shared = MemoryFile.holding(data)
        return cls._map(os.dup(shared.fd), len(shared))


class MemoryFile:
    """An unmapped memory file of a known final size, filled by :meth:`write`."""

    __slots__ = ("__weakref__", "_written", "fd", "size")

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("p2prt", os.MFD_CLOEXEC)
        weakref.finalize(self, os.close, self.fd)
        self.size = size
        self._written = 0

    @classmethod
    def holding(cls, data: bytes | bytearray | memoryview) -> MemoryFile:
        """A memory file with a copy of ``data``."""
        view = memoryview(data).cast("B")
        shared = cls(len(view))
        shared.write(view)
        return shared

    def __len__(self) -> int:
        return self.size

    def write(self, data: memoryview) -> None:
        if self._written + len(data) > self.size:
            raise ValueError("more bytes than the memory file was created for")
        while data:
            n = os.write(self.fd, data)
            self._written += n
            data = data[n:]

    def finish(self) -> MemoryFile:
        if self._written != self.size:
            raise ValueError(f"memory file has {self._written} of {self.size} bytes")
        return self

    def view(self) -> memoryview:
        """The bytes, mapped read-only into this process."""
        return memoryview(SharedBuffer._map(os.dup(self.fd), self.size))

