"""Objects owned by this process: refs, and the in-memory store that resolves them.

The runtime's trio thread *resolves* entries (bytes as they arrived from a worker);
user threads *read* them: ``get`` waits on a ``concurrent.futures.Future`` and
deserialises in the calling thread, so the runtime thread never spends time unpickling
results. A value is deserialised once and cached.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..serialization import loads

if TYPE_CHECKING:
    from ..wire.messages import Buffer

__all__ = ["ObjectRef", "ObjectStore", "Stored", "Failed", "Held", "new_object_id"]

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

    data: Buffer
    buffers: list[Buffer]


@dataclass(frozen=True, slots=True)
class Held:
    """A value of ``size`` bytes kept by the worker that produced it (peer id ``holder``);
    fetched from there when asked for."""

    holder: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Failed:
    """A failure; ``make()`` builds the exception to raise (built lazily, in the reader)."""

    make: Callable[[], BaseException]


class ObjectRef:
    """A reference to a (future) value, returned by ``f.remote()`` and ``p2prt.put``.

    Pass it to ``p2prt.get``, to other tasks, or ``await`` it inside trio code.
    """

    __slots__ = ("__weakref__", "id")

    _tracker: ClassVar[ObjectStore | None] = None
    """The owning store in a driver process: it counts live refs to free values."""

    def __init__(self, object_id: bytes) -> None:
        self.id = object_id
        tracker = ObjectRef._tracker
        if tracker is not None:
            tracker.hold(object_id)

    def __del__(self) -> None:
        tracker = ObjectRef._tracker
        object_id = getattr(self, "id", None)
        if tracker is not None and object_id is not None:
            tracker.release(object_id)

    def hex(self) -> str:
        return self.id.hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self.id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self) -> tuple[Any, ...]:
        tracker = ObjectRef._tracker
        if tracker is not None:
            tracker.escape(self.id)  # a copy lives elsewhere now: never free this value
        return (ObjectRef, (self.id,))

    def __await__(self) -> Any:
        from .._api import current_runtime

        return current_runtime().get_async(self).__await__()


class _Entry:
    __slots__ = ("future", "has_value", "orphan", "value")

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[Stored | Failed | Held] = concurrent.futures.Future()
        self.value: Any = None
        self.has_value = False
        self.orphan = False  # no ref left: drop as soon as it resolves


class ObjectStore:
    """Thread-safe map from object id to its future value.

    Values are freed when the last :class:`ObjectRef` to them in this process is
    garbage-collected — unless the id *escaped* (was pickled into a task's arguments, or
    handed to a running task), since a copy of the ref may then live on another machine;
    those stay until shutdown (no distributed reference counting yet).
    """

    def __init__(self) -> None:
        self._entries: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()
        self.duplicates = 0
        """Outcomes offered for an object that already had one (the first one wins)."""
        # Called (lock held, any thread) when an entry whose value is held elsewhere is
        # dropped: the holder may free it.
        self.on_drop_held: Callable[[bytes, Held], None] | None = None
        self._holds: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._released: collections.deque[bytes] = collections.deque()

    def hold(self, object_id: bytes) -> None:
        with self._lock:
            self._holds[object_id] = self._holds.get(object_id, 0) + 1
            if self._released:
                self._apply_releases()

    def escape(self, object_id: bytes) -> None:
        with self._lock:
            self._escaped.add(object_id)

    def release(self, object_id: bytes) -> None:
        """Called from ``ObjectRef.__del__``, i.e. by the garbage collector at any point,
        even inside this store's own locked sections: so it takes no lock and only queues
        the id (``deque.append`` is atomic); :meth:`_apply_releases` does the rest."""
        self._released.append(object_id)

    def collect(self) -> None:
        """Apply the releases queued by the garbage collector (called periodically)."""
        if self._released:
            with self._lock:
                self._apply_releases()

    def _apply_releases(self) -> None:
        """Apply queued releases; the caller holds ``self._lock``."""
        released = self._released
        while released:
            try:
                object_id = released.popleft()
            except IndexError:
                return
            left = self._holds.get(object_id, 0) - 1
            if left > 0:
                self._holds[object_id] = left
                continue
            self._holds.pop(object_id, None)
            if object_id in self._escaped:
                continue
            entry = self._entries.get(object_id)
            if entry is None:
                continue
            if entry.future.done():
                self._drop(object_id, entry)
            else:
                entry.orphan = True

    def _drop(self, object_id: bytes, entry: _Entry) -> None:
        """Remove an entry; the caller holds ``self._lock``."""
        del self._entries[object_id]
        outcome = entry.future.result() if entry.future.done() else None
        if isinstance(outcome, Held) and self.on_drop_held is not None:
            self.on_drop_held(object_id, outcome)

    def create(self, object_id: bytes) -> None:
        with self._lock:
            self._entries.setdefault(object_id, _Entry())

    def _entry(self, object_id: bytes) -> _Entry:
        entry = self._entries.get(object_id)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(object_id, _Entry())
        return entry

    def resolve(self, object_id: bytes, result: Stored | Failed | Held) -> None:
        """Set the outcome (first one wins; a late duplicate is ignored). An object whose
        refs are all gone is dropped instead."""
        entry = self._entries.get(object_id)
        if entry is None:
            return  # freed: nobody can ask for it any more
        try:
            entry.future.set_result(result)
        except concurrent.futures.InvalidStateError:
            self.duplicates += 1  # never expected: the chaos tests assert it stays 0
        if entry.orphan or self._released:
            with self._lock:
                self._apply_releases()
                if (
                    entry.orphan
                    and not self._holds.get(object_id)
                    and object_id not in self._escaped
                    and self._entries.get(object_id) is entry
                ):
                    self._drop(object_id, entry)

    def put_value(self, object_id: bytes, value: Any, stored: Stored) -> None:
        entry = self._entry(object_id)
        entry.value = value
        entry.has_value = True
        entry.future.set_result(stored)

    def future(self, object_id: bytes) -> concurrent.futures.Future[Stored | Failed | Held]:
        return self._entry(object_id).future

    def renew(self, object_id: bytes) -> None:
        """Forget a held outcome whose holder lost it: the object is being rebuilt."""
        with self._lock:
            entry = self._entries.get(object_id)
            if entry is not None and not entry.has_value:
                fresh = _Entry()
                fresh.orphan = entry.orphan
                self._entries[object_id] = fresh

    def set_value(self, object_id: bytes, value: Any) -> None:
        """The value of a held object, once fetched."""
        entry = self._entry(object_id)
        entry.value = value
        entry.has_value = True

    def has_value(self, object_id: bytes) -> bool:
        return self._entry(object_id).has_value

    def done(self, object_id: bytes) -> bool:
        return self._entry(object_id).future.done()

    def outcome(self, object_id: bytes) -> Stored | Failed | Held | None:
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
        if isinstance(result, Held):
            raise RuntimeError("a held value must be fetched before it is read")
        value = loads(readable(result.data), [readable(b) for b in result.buffers])
        entry.value = value
        entry.has_value = True
        return value

    def forget(self, object_id: bytes) -> None:
        with self._lock:
            self._entries.pop(object_id, None)

    def __len__(self) -> int:
        with self._lock:
            self._apply_releases()
            return len(self._entries)


def readable(buf: Buffer) -> bytes | bytearray | memoryview:
    """A payload buffer as memory (an external buffer is mapped). The same as
    :func:`p2prt.wire.messages.readable`, kept here so that ``import p2prt`` does not load
    the wire layer."""
    return buf if isinstance(buf, (bytes, bytearray, memoryview)) else buf.view()
