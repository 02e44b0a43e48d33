"""Values that stay on the worker that produced them (held values), seen from the
client: fetching them for ``get``, rebuilding a lost one from its lineage, and telling
holders to free what nobody refers to any more.

A mixin of :class:`~p2prt.client.runtime.ClientRuntime` (it shares the runtime's state).
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import TYPE_CHECKING, Any

import trio

from ..errors import ObjectLostError, P2prtError
from ..serialization import loads
from ..wire import board as bm
from ..wire import peer as pm
from ..wire.messages import readable
from .connection import WorkerConnection
from .objects import Failed, Held, ObjectStore, Stored
from .tasks import Task

__all__ = ["HeldValues"]


class HeldValues:
    """Held values, client side (mixin of ClientRuntime)."""

    if TYPE_CHECKING:
        store: ObjectStore
        stats: collections.Counter[str]
        _token: trio.lowlevel.TrioToken | None
        _tasks: dict[bytes, Task]
        _lineage: dict[bytes, Task]
        _waiting_on: dict[bytes, list[Task]]
        _conns: dict[bytes, WorkerConnection]
        _peer_addrs: dict[bytes, list[bm.Address]]
        _to_release: collections.deque[tuple[bytes, bytes]]

        def _place(self) -> None: ...
        def _requeue(self, task: Task) -> None: ...
        def _finish(self, task: Task, outcome: Stored | Failed | Held) -> None: ...
        async def _connection(self, peer: bytes, addrs: list[bm.Address]) -> WorkerConnection: ...
        @staticmethod
        async def _wait_future(fut: concurrent.futures.Future[Any]) -> None: ...

    def _load_held(self, object_ids: list[bytes]) -> None:
        """Fetch (in the runtime thread) and unpickle (here) values held by workers."""
        wanted = [
            oid for oid in dict.fromkeys(object_ids)
            if isinstance(self.store.outcome(oid), Held) and not self.store.has_value(oid)
        ]
        if not wanted:
            return
        assert self._token is not None
        fetched = trio.from_thread.run(self._fetch_held, wanted, trio_token=self._token)
        for oid, stored in fetched.items():
            if isinstance(stored, Stored):
                self.store.set_value(oid, loads(readable(stored.data), [readable(b) for b in stored.buffers]))

    def _rebuild(self, object_id: bytes, why: str) -> None:
        """A held value was lost with its holder: run the task that made it again
        (within its retries), or fail the object with :class:`ObjectLostError`."""
        if object_id in self._tasks or not isinstance(self.store.outcome(object_id), Held):
            return  # already being rebuilt, or not held
        producer = self._lineage.pop(object_id, None)
        self.store.renew(object_id)
        if producer is None or producer.cancelled or not producer.options.retries_left(producer.attempts):
            name = producer.name if producer is not None else "its task"
            text = f"the value of {name} was lost ({why}) and cannot be rebuilt: its retries are used up"
            self.store.resolve(object_id, Failed(lambda: ObjectLostError(text)))
            for dependent in self._waiting_on.pop(object_id, []):
                if dependent.object_id in self._tasks:
                    self._finish(dependent, Failed(lambda: ObjectLostError(text)))
            return
        self.stats["rebuilds"] += 1
        self._tasks[object_id] = producer
        self._requeue(producer)
        self._place()

    async def _fetch_held(self, object_ids: list[bytes]) -> dict[bytes, Stored | Failed]:
        """Fetch values from the workers that hold them; a lost one is rebuilt (and
        fetched again) or fails. Runs in the runtime thread; nothing is unpickled here."""
        out: dict[bytes, Stored | Failed] = {}
        pending = list(object_ids)
        while pending:
            by_holder: dict[bytes, list[bytes]] = {}
            for oid in pending:
                outcome = self.store.outcome(oid)
                if outcome is None:
                    await self._wait_future(self.store.future(oid))
                    outcome = self.store.outcome(oid)
                if isinstance(outcome, Held):
                    by_holder.setdefault(outcome.holder, []).append(oid)
                elif outcome is not None:
                    out[oid] = outcome
            pending = []
            for holder, oids in by_holder.items():
                try:
                    conn = await self._connection(holder, self._peer_addrs.get(holder, []))
                    values = await conn.fetch(oids)
                except P2prtError as exc:
                    values = [pm.ObjectValue(oid, "lost", b"", [], f"its holder is unreachable: {exc}") for oid in oids]
                for value in values:
                    if value.status == "ok":
                        out[value.object_id] = Stored(value.data, list(value.buffers))
                    else:
                        self._rebuild(value.object_id, value.message)
                        pending.append(value.object_id)
        return out

    def _send_releases(self) -> None:
        by_holder: dict[bytes, list[bytes]] = {}
        while self._to_release:
            holder, oid = self._to_release.popleft()
            self._lineage.pop(oid, None)
            by_holder.setdefault(holder, []).append(oid)
        for holder, oids in by_holder.items():
            conn = self._conns.get(holder)
            if conn is not None and not conn.closed:
                conn.enqueue(pm.ReleaseObjects(oids))
