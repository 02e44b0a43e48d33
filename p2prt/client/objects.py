"""Objects owned by this process: refs, and the in-memory store that resolves them.

The runtime's trio thread *resolves* entries (bytes as they arrived from a worker);
user threads *read* them: ``get`` waits on a ``concurrent.futures.Future`` and
deserialises in the calling thread, so the runtime thread never spends time unpickling
results. A value is deserialised once and cached.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..serialization import loads

__all__ = ["ObjectRef", "ObjectStore", "Stored", "Failed", "new_object_id"]

_prefix = os.urandom(8)
_counter = itertools.count(1)
_counter_lock = threading.Lock()


def new_object_id() -> bytes:
    with _counter_lock:
        n = next(_counter)
    return _prefix + n.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class Stored:
    """A value as bytes: ``loads(data, buffers)``."""

    data: bytes
    buffers: list[bytes]


@dataclass(frozen=True, slots=True)
class Failed:
    """A failure; ``make()`` builds the exception to raise (built lazily, in the reader)."""

    make: Callable[[], BaseException]


class ObjectRef:
    """A reference to a (future) value, returned by ``f.remote()`` and ``p2prt.put``.

    Pass it to ``p2prt.get``, to other tasks, or ``await`` it inside trio code.
    """

    __slots__ = ("__weakref__", "id")

    def __init__(self, object_id: bytes) -> None:
        self.id = object_id

    def hex(self) -> str:
        return self.id.hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ObjectRef, (self.id,))

    def __await__(self) -> Any:
        from .._api import current_runtime

        return current_runtime().get_async(self).__await__()


class _Entry:
    __slots__ = ("future", "has_value", "value")

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Stored | Failed] = concurrent.futures.Future()
        self.value: Any = None
        self.has_value = False


class ObjectStore:
    """Thread-safe map from object id to its future value."""

    def __init__(self) -> None:
        self._entries: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()

    def create(self, object_id: bytes) -> None:
        with self._lock:
            self._entries.setdefault(object_id, _Entry())

    def _entry(self, object_id: bytes) -> _Entry:
        entry = self._entries.get(object_id)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(object_id, _Entry())
        return entry

    def resolve(self, object_id: bytes, result: Stored | Failed) -> None:
        """Set the outcome (first one wins; a late duplicate is ignored)."""
        fut = self._entry(object_id).future
        if not fut.done():
            try:
                fut.set_result(result)
            except concurrent.futures.InvalidStateError:
                pass

    def put_value(self, object_id: bytes, value: Any, stored: Stored) -> None:
        entry = self._entry(object_id)
        entry.value = value
        entry.has_value = True
        entry.future.set_result(stored)

    def future(self, object_id: bytes) -> concurrent.futures.Future[Stored | Failed]:
        return self._entry(object_id).future

    def done(self, object_id: bytes) -> bool:
        return self._entry(object_id).future.done()

    def outcome(self, object_id: bytes) -> Stored | Failed | None:
        fut = self._entry(object_id).future
        return fut.result() if fut.done() else None

    def value(self, object_id: bytes) -> Any:
        """The value of a resolved object (deserialised once), or raise its failure."""
        entry = self._entry(object_id)
        if entry.has_value:
            return entry.value
        result = entry.future.result()
        if isinstance(result, Failed):
            raise result.make()
        value = loads(result.data, result.buffers)
        entry.value = value
        entry.has_value = True
        return value

    def forget(self, object_id: bytes) -> None:
        with self._lock:
            self._entries.pop(object_id, None)

    def __len__(self) -> int:
        return len(self._entries)
