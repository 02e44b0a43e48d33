"""Where a worker puts the large attachments it receives: memory files, unread.

A task's large argument is decrypted into a :class:`SharedFile` and handed to the
executor by descriptor; the worker never maps it. (Kept apart from :mod:`._shm` so that
executors, which use that module, do not import the wire layer.)
"""

from __future__ import annotations

from ..wire.attachments import AttachmentSink
from ..wire.messages import ExternalBuffer
from ._shm import SHM_MIN, MemoryFile

__all__ = ["SharedFile", "allocate"]


class SharedFile(MemoryFile, ExternalBuffer, AttachmentSink):
    """A memory file that a message's buffer field can hold and an attachment can fill."""

    __slots__ = ()


def allocate(size: int) -> bytearray | SharedFile:
    """Allocator for the attachments a worker receives: a memory file when large."""
    if size >= SHM_MIN:
        return SharedFile(size)
    return bytearray(size)
