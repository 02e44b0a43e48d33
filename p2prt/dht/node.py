"""The trio-facing DHT node: publish and find signed peer and object-location records.

Example::

    async with open_dht_node(identity, "192.0.2.7", bootstrap=[board_dht_addr]) as node:
        await node.publish_peer([Address("192.0.2.7", 7000)], observed_addr=observed)
        record = await node.find_peer(worker_peer_id)      # PeerRecord | None, verified
        if record is not None:
            dial(record.listen_addrs)

        await node.publish_location(object_id, size)       # refreshed until removed
        loc = await node.find_location(object_id)          # ObjectLocation | None

:func:`open_dht_node` starts a :class:`DhtNode`: a ``kademlia`` server on UDP at
``host:port`` in its own asyncio thread (:mod:`._bridge`), joined to the network through
``bootstrap`` (the board's DHT address, from its hello). ``serve=False`` makes a
*client-mode* node that looks up and publishes but is never added to other nodes'
routing tables: use it behind NAT and for short-lived scripts. The node republishes its
own records (new ``seq``, new expiry) before they expire, for as long as it runs.

Lookups return ``None`` when the DHT has nothing valid: then ask the board. A returned
location names a holder that signed it; whether that holder is the expected producer
of the object is the caller's decision (any cluster member may sign a location).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node

from ..errors import DhtError, InvalidRecordError, P2prtError
from ..identity.certificate import NodeCertificate, NodeIdentity
from ..wire.board import Address
from ..wire.records import (
    DhtRecord,
    ObjectLocation,
    PeerRecord,
    encode_record,
    location_key,
    next_seq,
    peer_key,
)
from ._bridge import LoopThread
from ._protocol import P2prtProtocol, RecordCrawl, _is_id
from ._storage import RecordStorage, check_value

__all__ = ["DhtNode", "DhtSettings", "DhtStatistics", "open_dht_node"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DhtSettings:
    """Tuning of a DHT node; the defaults suit a cluster of friends' machines."""

    ksize: int = 20
    """Kademlia's k: bucket size, and how many nodes store each record."""
    alpha: int = 3
    """Parallel requests per lookup round."""
    rpc_timeout: float = 1.0
    """Seconds to wait for one UDP answer (kademlia's own default, 5 s, made every
    departed node in a routing table cost 5 s per lookup round)."""
    peer_ttl: float = 1800.0
    """Lifetime of a published peer record, in seconds."""
    location_ttl: float = 3600.0
    """Lifetime of a published object-location record (and of its tombstone)."""
    refresh_fraction: float = 0.5
    """Republish after this fraction of the lifetime."""
    quorum: int = 2
    """A lookup stops once this many nodes answered with a valid record."""


@dataclass(frozen=True)
class DhtStatistics:
    neighbors: int
    """Nodes in the routing table."""
    stored: int
    """Live records this node keeps for the network."""
    refused: int
    """Values this node's storage refused (invalid, stale, or under a wrong key)."""
    invalid_seen: int
    """Invalid values met during lookups (ignored)."""
    lookups: int
    publications: int


class _Server(Server):  # type: ignore[misc]  # kademlia has no type hints
    def __init__(self, storage: RecordStorage, settings: DhtSettings, *, serve: bool) -> None:
        super().__init__(ksize=settings.ksize, alpha=settings.alpha, storage=storage)
        self.storage = storage  # Server keeps ``storage or ForgetfulStorage()``, and ours may be empty
        self._serve = serve
        self._timeout = settings.rpc_timeout

    def _create_protocol(self) -> P2prtProtocol:
        return P2prtProtocol(self.node, self.storage, self.ksize, serve=self._serve, timeout=self._timeout)

    async def bootstrap_node(self, addr: tuple[str, int]) -> Node | None:
        result = await self.protocol.ping(tuple(addr), self.protocol.sender_id)
        return Node(result[1], addr[0], addr[1]) if result[0] and _is_id(result[1]) else None


def _check_host(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DhtError(f"a DHT node binds an IP address, not {host!r}") from None
    if ip.is_unspecified:
        raise DhtError(
            f"a DHT node must bind a specific address, not {host}: on a host with several "
            "addresses, UDP replies would leave from another source address"
        )
    return str(ip)


class DhtNode:
    """One Kademlia node of this process. Made by :func:`open_dht_node`; every method
    is called from trio, and raises :class:`DhtError` once the node is closed."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        serve: bool,
        settings: DhtSettings,
        allowed: Callable[[NodeCertificate], bool] | None,
    ) -> None:
        self.identity = identity
        self.serve = serve
        self.settings = settings
        self._allowed = allowed
        self._thread = LoopThread(f"p2prt-dht-{identity.peer_id.short}")
        self._storage = RecordStorage(allowed=allowed)
        self._server = _Server(self._storage, settings, serve=serve)
        self._address: tuple[str, int] | None = None
        self._seq = 0
        self._peer_addrs: tuple[list[Address], Address | None] | None = None
        self._locations: dict[bytes, tuple[bytes, int]] = {}  # DHT key -> (object id, size)
        self._due: dict[bytes, float] = {}  # DHT key -> trio time of the next republish
        self._changed = trio.Event()
        self._lookups = 0
        self._publications = 0
        self._on_publish: Callable[[DhtRecord], None] | None = None  # a hook for tests

    # -- life cycle ---------------------------------------------------------------------------

    async def _start(self, host: str, port: int) -> None:
        host = _check_host(host)
        self._thread.start()

        async def listen() -> tuple[str, int]:
            await self._server.listen(port, interface=host)
            sockname = self._server.transport.get_extra_info("sockname")
            return str(sockname[0]), int(sockname[1])

        try:
            self._address = await self._thread.run(listen())
        except OSError as exc:
            await self._thread.aclose()
            raise DhtError(f"cannot bind the DHT node to {host}:{port}: {exc.strerror or exc}") from exc

    async def aclose(self) -> None:
        """Stop serving and end the asyncio thread. Idempotent."""
        self._thread.call_soon(self._server.stop)
        await self._thread.aclose()

    @property
    def address(self) -> tuple[str, int]:
        """``(ip, port)`` this node listens on; give it to others as their bootstrap."""
        assert self._address is not None
        return self._address

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    async def bootstrap(self, addrs: Iterable[tuple[str, int]]) -> int:
        """Join the network through ``addrs``; returns how many nodes answered the
        crawl (0 when none was reachable — call again later)."""
        targets = [(_check_host(h), int(p)) for h, p in addrs]
        found = await self._thread.run(self._server.bootstrap(targets))
        if not found:
            log.warning("no DHT node answered at %s", targets)
        return len(found)

    # -- publishing ---------------------------------------------------------------------------

    async def publish_peer(self, listen_addrs: Sequence[Address], observed_addr: Address | None = None) -> PeerRecord:
        """Sign and store this node's peer record (a new ``seq``); it is republished
        before it expires while the node runs. Returns the record."""
        self._peer_addrs = (list(listen_addrs), observed_addr)
        rec = self._new_peer_record()
        await self._publish(rec, self.settings.peer_ttl)
        return rec

    async def publish_location(self, object_id: bytes, size: int) -> ObjectLocation:
        """Sign and store "this node holds ``object_id`` (``size`` bytes)"; republished
        until :meth:`remove_location` or the node closes."""
        rec = self._new_location(bytes(object_id), size)
        self._locations[rec.key] = (rec.object_id, size)
        await self._publish(rec, self.settings.location_ttl)
        return rec

    async def remove_location(self, object_id: bytes) -> ObjectLocation:
        """Stop republishing ``object_id``'s location and store a tombstone over it, so
        :meth:`find_location` answers ``None`` (Kademlia cannot delete)."""
        rec = self._new_location(bytes(object_id), 0, removed=True)
        self._locations.pop(rec.key, None)
        self._due.pop(rec.key, None)
        await self._store(rec)
        return rec

    def _new_peer_record(self) -> PeerRecord:
        assert self._peer_addrs is not None
        self._seq = next_seq(self._seq)
        addrs, observed = self._peer_addrs
        return PeerRecord.create(self.identity, addrs, observed, seq=self._seq, ttl=self.settings.peer_ttl)

    def _new_location(self, object_id: bytes, size: int, *, removed: bool = False) -> ObjectLocation:
        self._seq = next_seq(self._seq)
        ttl = self.settings.location_ttl
        return ObjectLocation.create(self.identity, object_id, size, seq=self._seq, ttl=ttl, removed=removed)

    async def _publish(self, rec: DhtRecord, ttl: float) -> None:
        await self._store(rec)
        self._due[rec.key] = trio.current_time() + ttl * self.settings.refresh_fraction
        self._changed.set()

    async def _store(self, rec: DhtRecord) -> int:
        value = encode_record(rec)
        stored = await self._thread.run(self._store_on_loop(rec.key, value))
        self._publications += 1
        if stored == 0:
            log.warning("no DHT node stored the %s record (no reachable neighbours?)", type(rec).__name__)
        if self._on_publish is not None:
            self._on_publish(rec)
        return stored

    async def _store_on_loop(self, key: bytes, value: bytes) -> int:
        """Store on the k nodes closest to ``key`` (and here, when serving); how many kept it."""
        kept = int(self.serve and self._storage.offer(key, value))
        protocol = self._server.protocol
        target = Node(key)
        nearest = protocol.router.find_neighbors(target)
        if not nearest:
            return kept
        crawl = NodeSpiderCrawl(protocol, target, nearest, self.settings.ksize, self.settings.alpha)
        nodes = await crawl.find()
        results = await asyncio.gather(*(protocol.call_store(n, key, value) for n in nodes))
        return kept + sum(1 for ok, answer in results if ok and answer is True)

    async def _refresher(self) -> None:
        """Republish own records when due (trio task of :func:`open_dht_node`)."""
        while True:
            self._changed = trio.Event()
            due = min(self._due.values(), default=math.inf)
            if due > trio.current_time():
                with trio.move_on_at(due):
                    await self._changed.wait()
                continue
            key = min(self._due, key=self._due.__getitem__)
            del self._due[key]
            try:
                await self._republish(key)
            except (DhtError, InvalidRecordError) as exc:
                log.warning("could not republish a DHT record: %s", exc)

    async def _republish(self, key: bytes) -> None:
        if key == peer_key(self.identity.peer_id) and self._peer_addrs is not None:
            await self._publish(self._new_peer_record(), self.settings.peer_ttl)
            return
        if key in self._locations:
            object_id, size = self._locations[key]
            await self._publish(self._new_location(object_id, size), self.settings.location_ttl)

    # -- lookups ------------------------------------------------------------------------------

    async def find_peer(self, peer_id: bytes) -> PeerRecord | None:
        """The newest valid peer record of ``peer_id``, or ``None`` when the DHT has
        none (then ask the board). Invalid records met on the way are logged and ignored."""
        rec = await self._find(peer_key(peer_id), PeerRecord)
        assert rec is None or isinstance(rec, PeerRecord)
        return rec

    async def find_location(self, object_id: bytes) -> ObjectLocation | None:
        """The newest valid location of ``object_id``; ``None`` when there is none or the
        holder removed it."""
        rec = await self._find(location_key(object_id), ObjectLocation)
        assert rec is None or isinstance(rec, ObjectLocation)
        return None if rec is None or rec.removed else rec

    async def _find(self, key: bytes, kind: type[DhtRecord]) -> DhtRecord | None:
        self._lookups += 1
        allowed = self._allowed

        def check(value: object) -> DhtRecord:
            rec = check_value(key, value, now=time.time(), allowed=allowed)
            if not isinstance(rec, kind):
                raise InvalidRecordError(f"expected a {kind.__name__}, got a {type(rec).__name__}")
            return rec

        async def crawl() -> DhtRecord | None:
            local = self._storage.record(key)
            local = local if isinstance(local, kind) else None
            protocol = self._server.protocol
            target = Node(key)
            nearest = protocol.router.find_neighbors(target)
            if not nearest:
                return local
            s = self.settings
            spider = RecordCrawl(
                protocol, target, nearest, s.ksize, s.alpha, check=check, quorum=s.quorum, local=local
            )
            return await spider.find()

        return await self._thread.run(crawl())

    # -- introspection --------------------------------------------------------------------------

    async def observed_address(self, addr: tuple[str, int]) -> tuple[str, int] | None:
        """Where the DHT node at ``addr`` sees this node's UDP packets come from (STUN)."""

        async def stun() -> object:
            return await self._server.protocol.stun(tuple(addr))  # an rpcudp stub: loop thread only

        result = await self._thread.run(stun())
        if isinstance(result, tuple) and result[0] and isinstance(result[1], list) and len(result[1]) == 2:
            return str(result[1][0]), int(result[1][1])
        return None

    async def neighbors(self) -> list[tuple[str, int]]:
        """Addresses in this node's routing table."""

        async def read() -> list[tuple[str, int]]:
            return [(n.ip, n.port) for b in self._server.protocol.router.buckets for n in b.get_nodes()]

        return await self._thread.run(read())

    async def statistics(self) -> DhtStatistics:
        async def read() -> DhtStatistics:
            protocol = self._server.protocol
            return DhtStatistics(
                neighbors=sum(len(b) for b in protocol.router.buckets),
                stored=len(self._storage),
                refused=self._storage.refused,
                invalid_seen=protocol.invalid_seen,
                lookups=self._lookups,
                publications=self._publications,
            )

        return await self._thread.run(read())


@asynccontextmanager
async def open_dht_node(
    identity: NodeIdentity,
    host: str,
    port: int = 0,
    *,
    bootstrap: Iterable[tuple[str, int]] = (),
    serve: bool = True,
    settings: DhtSettings | None = None,
    allowed: Callable[[NodeCertificate], bool] | None = None,
) -> AsyncIterator[DhtNode]:
    """Run a DHT node on UDP ``host:port`` (an IP address, not ``0.0.0.0``; port 0 picks
    one) while the block runs.

    ``bootstrap``: addresses of running nodes (none for the first node, e.g. the
    board's). ``serve=False``: client mode (see :mod:`p2prt.dht`). ``allowed``:
    called with each record's verified certificate; accept only records it approves —
    check ``cert.user`` *and* ``cert.fingerprint`` against the cluster's members (a user
    name alone can be claimed by anyone) — both when storing for others and in lookups.

    Raises :class:`DhtError` when it cannot bind. An unreachable bootstrap is logged, not
    raised: call :meth:`DhtNode.bootstrap` again later.
    """
    node = DhtNode(identity, serve=serve, settings=settings or DhtSettings(), allowed=allowed)
    await node._start(host, port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._refresher)
            targets = list(bootstrap)
            if targets:
                await node.bootstrap(targets)
            yield node
            nursery.cancel_scope.cancel()
    finally:
        await node.aclose()


async def addresses_of(
    node: DhtNode | None, peer_id: bytes, known: Sequence[Address], *, timeout: float
) -> tuple[list[Address], bool]:
    """Where ``peer_id`` listens: the addresses of its verified DHT record first (at most
    ``timeout`` seconds of lookup), then ``known`` (e.g. what the board said). Returns
    them and whether the DHT had a record. Without a node, just ``known``."""
    found: list[Address] = []
    if node is not None:
        with trio.move_on_after(timeout):
            try:
                record = await node.find_peer(peer_id)
            except P2prtError as exc:
                log.info("DHT lookup failed: %s", exc)
                record = None
            if record is not None:
                found = list(record.listen_addrs)
    return found + [a for a in known if a not in found], bool(found)
