"""Requests waiting for their replies, matched by request id (``rid``)."""

from __future__ import annotations

import itertools
from typing import Any

import trio

__all__ = ["Replies"]


class Replies:
    """``rid = replies.register()``; send the request; ``await replies.wait(rid)``.

    The reader calls :meth:`resolve` with each reply (a value, or an exception to raise
    in the waiter); :meth:`close` fails every waiter, now and later, with one error.
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._closed: BaseException | None = None

    def register(self) -> int:
        if self._closed is not None:
            raise self._closed
        rid = next(self._ids)
        self._waiting[rid] = (trio.Event(), [])
        return rid

    async def wait(self, rid: int) -> Any:
        """The reply to ``rid``; raises it if it is an exception, or the close error."""
        done, slot = self._waiting[rid]
        try:
            await done.wait()
        finally:
            self._waiting.pop(rid, None)
        result = slot[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def discard(self, rid: int) -> None:
        """Forget ``rid`` (its request could not be sent)."""
        self._waiting.pop(rid, None)

    def resolve(self, rid: int | None, value: Any) -> bool:
        """Hand ``value`` to the waiter of ``rid``; False if nobody waits for it."""
        entry = self._waiting.get(rid) if rid is not None else None
        if entry is None or entry[0].is_set():
            return False
        entry[1].append(value)
        entry[0].set()
        return True

    def close(self, error: BaseException) -> None:
        self._closed = error
        for rid in list(self._waiting):
            self.resolve(rid, error)
