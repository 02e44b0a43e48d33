"""How a client runtime reaches its workers and keeps those connections working.

A mixin of :class:`~p2prt.client.runtime.ClientRuntime` (it shares the runtime's state;
see there for the theory of operation): activating a granted lease (look the worker up in
the DHT, connect or reuse the connection, attach the ticket), the connections themselves
(:mod:`.paths` finds a way; here they are served, upgraded from relayed to direct, and
mourned), and byte counters per peer and path.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

import trio

from ..board.client import BoardClient
from ..errors import P2prtError
from ..identity.certificate import NodeIdentity, PeerId
from ..transport import DEFAULT_MAX_ATTACHMENT_BYTES, MessageChannel, NoiseStream, local_address
from ..wire import board as bm
from ..wire import peer as pm
from ..wire.messages import Message
from .connection import ClientLease, WorkerConnection
from .paths import UPGRADE_BACKOFF, Dialer, nat_paths, upgrade_interval, upgrade_paths
from .tasks import Task

if TYPE_CHECKING:
    from ..dht import DhtNode

__all__ = ["WorkerLinks", "DHT_LOOKUP_TIMEOUT"]

log = logging.getLogger("p2prt.client.runtime")

DHT_LOOKUP_TIMEOUT = 2.0
"""Seconds a DHT lookup may take before the board's addresses are used."""


class WorkerLinks:
    """Connections to workers (mixin of ClientRuntime)."""

    if TYPE_CHECKING:
        identity: NodeIdentity
        stats: collections.Counter[str]
        dht: DhtNode | None
        dialer: Dialer
        _conns: dict[bytes, WorkerConnection]
        _connecting: dict[bytes, trio.Event]
        _peer_addrs: dict[bytes, list[bm.Address]]
        _leases: dict[str, ClientLease]
        _nursery: trio.Nursery | None
        _board: BoardClient | None
        _traffic: dict[bytes, list[Any]]

        def _place(self) -> None: ...
        def _on_worker_message(self, conn: WorkerConnection, msg: Message) -> None: ...
        def _retry_or_fail(
            self, task: Task, kind: str, message: str, *, crash: bool = False, worker: str = ""
        ) -> None: ...
        def _board_send_soon(self, msg: Message) -> None: ...

    async def _run_dht(self, client: BoardClient) -> None:
        """A client-mode DHT node (it asks, it does not serve), bootstrapped from the
        board's: where leased workers and held values are."""
        from ..dht import open_dht_node

        dht = client.welcome.dht
        local = local_address(client.channel.stream)
        if dht is None or local is None:
            return
        try:
            async with open_dht_node(self.identity, local[0], 0, bootstrap=[(dht.host, dht.port)], serve=False) as node:
                self.dht = node
                await trio.sleep_forever()
        except P2prtError as exc:
            log.warning("no DHT node (worker addresses come from the board): %s", exc)
        finally:
            self.dht = None

    async def _addresses_of(self, peer: bytes, known: list[bm.Address]) -> list[bm.Address]:
        """Where ``peer`` listens: its signed DHT record first, then what the board said."""
        if self.dht is None:
            return known
        from ..dht import addresses_of

        self.stats["dht_lookups"] += 1
        addrs, found = await addresses_of(self.dht, peer, known, timeout=DHT_LOOKUP_TIMEOUT)
        self.stats["dht_found"] += found
        return addrs

    async def _activate(self, lease: ClientLease, addrs: list[bm.Address]) -> None:
        peer = lease.ticket.worker_peer_id
        try:
            if peer not in self._conns:
                addrs = await self._addresses_of(peer, addrs)
            conn = await self._connection(peer, addrs)
            attached = await conn.attach(lease.ticket)
        except P2prtError as exc:
            log.warning("cannot use lease %s: %s", lease.lease_id, exc)
            self._leases.pop(lease.lease_id, None)
            if self._board is not None:
                try:
                    await self._board.send(bm.LeaseReturn([lease.lease_id]))
                except P2prtError:
                    pass
            self._place()
            return
        if lease.lease_id not in self._leases:  # revoked while we attached
            conn.enqueue(pm.Detach(lease.lease_id))
            return
        conn.host = attached.worker_host
        lease.conn = conn
        lease.active = True
        conn.leases[lease.lease_id] = lease
        self._place()

    async def _connection(self, peer: bytes, addrs: list[bm.Address]) -> WorkerConnection:
        if addrs:
            self._peer_addrs[peer] = list(addrs)
        conn = self._conns.get(peer)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(peer)
        if pending is not None:
            await pending.wait()
            conn = self._conns.get(peer)
            if conn is not None and not conn.closed:
                return conn
        event = self._connecting[peer] = trio.Event()
        try:
            stream, path = await self.dialer.reach(peer, addrs, nat_paths())
            return self._open_connection(stream, path)
        finally:
            event.set()
            self._connecting.pop(peer, None)

    def _open_connection(self, stream: NoiseStream, path: str) -> WorkerConnection:
        channel = MessageChannel(stream, max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES)
        conn = WorkerConnection(channel, self._on_worker_message)
        conn.path = path
        self._conns[conn.peer_id] = conn
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_connection, conn)
        if path == "relayed" and upgrade_paths():
            self._nursery.start_soon(self._upgrade, conn)
        return conn

    async def _upgrade(self, old: WorkerConnection) -> None:
        """Try now and then to replace relayed connection ``old`` by a direct or punched
        one; on success its leases move over as soon as their tasks in flight are done,
        and ``old`` closes once it carries nothing (DESIGN.md §6)."""
        first = delay = upgrade_interval()
        while True:
            await trio.sleep(delay)  # sleep-ok: retry backoff
            delay = min(delay * 2, first * UPGRADE_BACKOFF)
            if old.closed or self._conns.get(old.peer_id) is not old:
                return
            peer = old.peer_id
            addrs = await self._addresses_of(peer, self._peer_addrs.get(peer, []))
            try:
                stream, path = await self.dialer.reach(peer, addrs, upgrade_paths())
            except P2prtError as exc:
                self.stats["upgrade_failures"] += 1
                log.debug("relayed connection to %s stays relayed: %s", old.label, exc)
                continue
            if old.closed or self._conns.get(peer) is not old:
                await trio.aclose_forcefully(stream)
                return
            new = self._open_connection(stream, path)
            new.host = old.host
            old.retired = True
            self.stats["upgrades"] += 1
            log.info("connection to worker %s upgraded from relayed to %s", old.label, path)
            for lease in list(old.leases.values()):
                if not lease.inflight:
                    self._move_lease(lease, new)
            self._close_if_idle(old)
            return

    def _move_lease(self, lease: ClientLease, new: WorkerConnection) -> None:
        """Attach ``lease`` (no task of it in flight) to ``new`` instead of its old,
        retired connection."""
        old = lease.conn
        if old is not None:
            old.leases.pop(lease.lease_id, None)
        lease.active = False
        assert self._nursery is not None
        self._nursery.start_soon(self._attach_moved, lease, new, old)

    async def _attach_moved(self, lease: ClientLease, new: WorkerConnection, old: WorkerConnection | None) -> None:
        try:
            await new.attach(lease.ticket)
        except P2prtError as exc:
            log.warning("cannot move lease %s to the new connection: %s", lease.lease_id, exc)
            if self._leases.pop(lease.lease_id, None) is not None:
                self._board_send_soon(bm.LeaseReturn([lease.lease_id]))
        else:
            if lease.lease_id not in self._leases:  # revoked or released meanwhile
                new.enqueue(pm.Detach(lease.lease_id))
            else:
                lease.conn = new
                lease.active = True
                new.leases[lease.lease_id] = lease
        if old is not None:
            self._close_if_idle(old)
        self._place()

    def _close_if_idle(self, old: WorkerConnection) -> None:
        if old.retired and not old.leases and not old.inflight and not old.closed:
            old.closed = True
            assert self._nursery is not None
            self._nursery.start_soon(trio.aclose_forcefully, old.channel.stream)

    async def _serve_connection(self, conn: WorkerConnection) -> None:
        try:
            async with trio.open_nursery() as n:
                n.start_soon(conn.writer)
                await conn.reader()
                n.cancel_scope.cancel()
        except P2prtError as exc:
            if not conn.retired:
                log.info("connection to worker %s lost: %s", conn.label, exc)
        except BaseExceptionGroup as group:
            if not conn.retired:
                log.info("connection to worker %s lost: %r", conn.label, group.exceptions[0])
        finally:
            conn.fail_pending()
            stream = conn.channel.stream
            counted = self._traffic.setdefault(conn.peer_id, [conn.name, {}, {}])
            counted[1][conn.path] = counted[1].get(conn.path, 0) + stream.bytes_sent
            counted[2][conn.path] = counted[2].get(conn.path, 0) + stream.bytes_received
            if self._conns.get(conn.peer_id) is conn:
                del self._conns[conn.peer_id]
            self._connection_lost(conn)
            await trio.aclose_forcefully(conn.channel.stream)

    def _connection_lost(self, conn: WorkerConnection) -> None:
        for lease in list(conn.leases.values()):
            self._leases.pop(lease.lease_id, None)
            if self._board is not None:
                self._board_send_soon(bm.LeaseReturn([lease.lease_id]))
        conn.leases.clear()
        for task in list(conn.inflight.values()):
            # A task waiting for its nested tasks lent its slot out and runs nothing: it
            # is not suspected of having killed the worker (Dask blames only what runs).
            self._retry_or_fail(
                task, "crashed", f"lost the connection to worker {conn.label}", crash=not task.nested_waits
            )
        conn.inflight.clear()
        self._place()

    def traffic_report(self) -> dict[str, Any]:
        """Bytes exchanged with each peer, by path (runtime thread)."""
        totals: dict[bytes, list[Any]] = {p: [u, dict(sent), dict(rec)] for p, (u, sent, rec) in self._traffic.items()}
        for peer, conn in self._conns.items():
            entry = totals.setdefault(peer, [conn.name, {}, {}])
            stream = conn.channel.stream
            entry[1][conn.path] = entry[1].get(conn.path, 0) + stream.bytes_sent
            entry[2][conn.path] = entry[2].get(conn.path, 0) + stream.bytes_received
        return {str(PeerId(p)): {"user": u, "sent": sent, "received": rec} for p, (u, sent, rec) in totals.items()}

    async def collect_traffic(self) -> dict[str, Any]:
        """This process's counters and those of every worker it is connected to."""
        workers: dict[str, Any] = {}
        for peer, conn in list(self._conns.items()):
            try:
                workers[str(PeerId(peer))] = await conn.traffic()
            except P2prtError as exc:
                workers[str(PeerId(peer))] = {"error": str(exc)}
        return {"peers": self.traffic_report(), "workers": workers}
