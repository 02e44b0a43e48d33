"""Shared memory for large payloads between the worker and its executors.

A :class:`SharedBuffer` is an anonymous memory file (``memfd_create``) mapped into this
process. The worker receives a large task argument from the network straight into one
(the Noise layer decrypts into it), and passes the *file descriptor* to the executor
over their socketpair (``SCM_RIGHTS``); the executor maps the same pages. Results go the
other way. No payload byte is copied through the pipe, and nothing is left behind when a
process dies: the memory lives as long as some process holds the descriptor or a
mapping.
"""

from __future__ import annotations

import mmap
import os
import weakref

__all__ = ["SharedBuffer", "SHM_MIN", "allocate"]

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
        view = memoryview(data).cast("B")
        buf = cls.create(len(view))
        buf[:] = view
        return buf


def allocate(size: int) -> bytearray | memoryview:
    """Allocator for received attachments: shared memory when large."""
    if size >= SHM_MIN:
        return memoryview(SharedBuffer.create(size))
    return bytearray(size)
