"""Values a worker holds, served to others (a mixin of
:class:`~p2prt.worker.server.WorkerServer`): fetches by their owner or by another worker
of the cluster, fetching a task's held arguments before it runs, and byte counters.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ..board.client import BoardClient
from ..errors import P2prtError
from ..identity.certificate import NodeIdentity, PeerId
from ..transport import NoiseStream
from ..wire import board as bm
from ..wire import peer as pm
from ..wire.control import ErrorReply
from ._attach import allocate as shared_memory
from ._conn import ClientConn, WorkerConfig
from ._objects import HeldObjects, PeerTraffic, fetch_from
from .pool import ExecTask, ExecutorPool

if TYPE_CHECKING:
    from ..dht import DhtNode

__all__ = ["HeldServing"]

log = logging.getLogger("p2prt.worker.server")


class HeldServing:
    """Held values, worker side (mixin of WorkerServer)."""

    if TYPE_CHECKING:
        config: WorkerConfig
        identity: NodeIdentity
        held: HeldObjects
        dht: DhtNode | None
        pool: ExecutorPool
        traffic: dict[bytes, PeerTraffic]
        _board: BoardClient | None
        _clients: dict[bytes, ClientConn]
        _owner: dict[int, ClientConn]

        async def _addresses_of(self, peer: bytes, known: list[bm.Address]) -> list[bm.Address]: ...

    def _count_traffic(self, peer: bytes, user: str, path: str, sent: int, received: int) -> None:
        self.traffic.setdefault(peer, PeerTraffic(user)).add(path, sent, received)

    def traffic_report(self) -> dict[str, Any]:
        """Bytes exchanged per peer and path (live connections included), and the values
        held here."""
        peers = {str(PeerId(p)): t.as_dict() for p, t in self.traffic.items()}
        for peer, conn in self._clients.items():
            entry = peers.setdefault(str(PeerId(peer)), PeerTraffic(conn.channel.peer.user).as_dict())
            stream = conn.channel.stream
            entry["sent"][conn.path] = entry["sent"].get(conn.path, 0) + stream.bytes_sent
            entry["received"][conn.path] = entry["received"].get(conn.path, 0) + stream.bytes_received
        dht = {"address": list(self.dht.address)} if self.dht is not None else None
        return {"peers": peers, "held": {"objects": len(self.held), "bytes": self.held.bytes_held}, "dht": dht}

    async def _serve_fetch(self, conn: ClientConn, stream: NoiseStream, msg: pm.FetchObjects) -> None:
        """Values for their owner, or for a worker of this cluster running a task that
        takes them as arguments."""
        peer = bytes(stream.peer.peer_id)
        owner_only = all((h := self.held.get(oid)) is None or h.owner == peer for oid in msg.object_ids)
        if not owner_only and not await self._is_cluster_worker(peer):
            conn.enqueue(
                ErrorReply("NotMemberError", f"{stream.peer} is not a worker of {self.config.cluster}", msg.rid)
            )
            return
        conn.enqueue(pm.FetchedObjects(msg.rid, [self.held.value(oid) for oid in msg.object_ids]))

    async def _is_cluster_worker(self, peer: bytes) -> bool:
        """Is ``peer`` a worker registered with our board for our cluster? Decided by its
        peer id, which the handshake proved; the user name in a certificate is only a
        claim (anyone can sign one that says "bob"). Asked of the board each time:
        workers and members come and go."""
        board = self._board
        if board is None:
            return False
        try:
            status = await board.call(lambda rid: bm.StatusRequest(rid, self.config.cluster))
        except P2prtError:
            return False
        wanted = str(PeerId(peer))
        return any(w.get("peer_id") == wanted for w in status.get("workers", []))

    async def _fetch_then_submit(self, conn: ClientConn, spec: pm.TaskSpec, task: ExecTask) -> None:
        """Fetch the task's held arguments (from this worker or their holders), then run it."""
        fetched: list[tuple[bytes, Any, list[Any]]] = []
        by_holder: dict[bytes, list[pm.HeldArg]] = {}
        for arg in spec.fetch:
            local = self.held.get(arg.object_id)
            if local is not None:
                fetched.append((arg.object_id, local.data, local.buffers))
            else:
                by_holder.setdefault(arg.holder, []).append(arg)
        lost: bytes | None = None
        reason = ""
        for holder, args in by_holder.items():
            try:
                values = await fetch_from(
                    self.identity,
                    holder,
                    await self._addresses_of(holder, list(args[0].addresses)),
                    [a.object_id for a in args],
                    allocate=shared_memory,
                    on_traffic=lambda p, path, s, r: self._count_traffic(p, "worker", path, s, r),
                )
            except P2prtError as exc:
                lost, reason = args[0].object_id, f"its holder is unreachable: {exc}"
                break
            for value in values:
                if value.status != "ok":
                    lost, reason = value.object_id, value.message or "its holder no longer has it"
                    break
                fetched.append((value.object_id, value.data, list(value.buffers)))
            if lost is not None:
                break
        if task.task_id not in conn.tasks:
            return  # cancelled, or the client went away, meanwhile
        if lost is not None:
            self._owner.pop(task.task_id, None)
            conn.tasks.pop(task.task_id, None)
            conn.holds.pop(task.task_id, None)
            conn.enqueue(pm.TaskResults([pm.TaskResult(spec.task_id, "lost", lost, [], f"an argument was lost: {reason}")]))
            return
        self.pool.submit([dataclasses.replace(task, fetched=tuple(fetched))])
