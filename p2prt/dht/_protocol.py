"""p2prt's Kademlia protocol: client mode, hostile-input hardening, verifying lookups.

Theory of operation
-------------------
Every p2prt node runs :class:`P2prtProtocol`, a subclass of the ``kademlia`` package's
``KademliaProtocol`` (UDP, msgpack RPCs over ``rpcudp``). It changes four things:

- **Client mode.** Every RPC names its sender's 20-byte node id, and the receiver adds
  the sender to its routing table. A node in client mode (behind NAT, or a short-lived
  script) sends an *empty* node id instead; receivers answer it but never add it, so no
  serving node ever routes to an address it cannot reach (each such entry costs others
  a 5 s timeout). A client still learns serving nodes from their answers.
- **Hostile input.** Requests with wrong arity or types, undecodable datagrams, and
  answers that are not well-formed node lists or values are dropped (logged at DEBUG),
  instead of raising inside ``rpcudp``'s tasks or the crawler.
- **Store** answers whether the storage kept the value (:meth:`RecordStorage.offer`).
- **Lookups** (:class:`RecordCrawl`) verify every value they receive, ignore invalid
  ones (logged), keep crawling until ``quorum`` nodes have answered with valid records
  or every close node was asked, and return the record with the highest ``seq``.

All of it runs on the DHT's asyncio thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kademlia.crawling import SpiderCrawl
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from ..errors import ProtocolError
from ..wire.records import KEY_SIZE, DhtRecord
from ._storage import RecordStorage

__all__ = ["P2prtProtocol", "RecordCrawl", "CLIENT_NODE_ID"]

log = logging.getLogger(__name__)

CLIENT_NODE_ID = b""
"""The node id a client-mode node sends: "answer me, but do not add me"."""

_Result = tuple[bool, Any]


def _is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_SIZE


def _clean_nodes(data: object) -> list[tuple[bytes, str, int]] | None:
    if not isinstance(data, list):
        return None
    out = []
    for item in data:
        if not (isinstance(item, (list, tuple)) and len(item) == 3):
            return None
        node_id, ip, port = item
        if not (_is_id(node_id) and isinstance(ip, str) and type(port) is int and 0 < port < 65536):
            return None
        out.append((node_id, ip, port))
    return out


class P2prtProtocol(KademliaProtocol):  # type: ignore[misc]  # kademlia has no type hints
    def __init__(self, source_node: Node, storage: RecordStorage, ksize: int, *, serve: bool, timeout: float) -> None:
        super().__init__(source_node, storage, ksize)
        self._wait_timeout = timeout
        self.serve = serve
        self.record_storage = storage
        self.invalid_seen = 0

    @property
    def sender_id(self) -> bytes:
        return self.source_node.id if self.serve else CLIENT_NODE_ID

    # -- serving side ---------------------------------------------------------------------

    def _sender(self, sender: tuple[str, int], nodeid: object) -> Node | None:
        """The requester as a Node; None (and never welcomed) for a client-mode node."""
        if not _is_id(nodeid):
            return None
        node = Node(nodeid, sender[0], sender[1])
        if self.serve:
            self.welcome_if_new(node)
        return node

    def rpc_ping(self, sender: tuple[str, int], nodeid: object) -> bytes | None:
        if nodeid != CLIENT_NODE_ID and not _is_id(nodeid):
            return None
        self._sender(sender, nodeid)
        return bytes(self.source_node.id)

    def rpc_store(self, sender: tuple[str, int], nodeid: object, key: object, value: object) -> bool:
        if not _is_id(key) or (nodeid != CLIENT_NODE_ID and not _is_id(nodeid)):
            return False
        self._sender(sender, nodeid)
        assert isinstance(key, bytes)
        return self.record_storage.offer(key, value)

    def rpc_find_node(self, sender: tuple[str, int], nodeid: object, key: object) -> list[Any] | None:
        if not _is_id(key) or (nodeid != CLIENT_NODE_ID and not _is_id(nodeid)):
            return None
        self._sender(sender, nodeid)
        asker = Node(bytes(KEY_SIZE), sender[0], sender[1])  # excluded by address
        neighbors = self.router.find_neighbors(Node(key), exclude=asker)
        return [tuple(n) for n in neighbors]

    def rpc_find_value(self, sender: tuple[str, int], nodeid: object, key: object) -> Any:
        if not _is_id(key) or (nodeid != CLIENT_NODE_ID and not _is_id(nodeid)):
            return None
        assert isinstance(key, bytes)
        value = self.record_storage.get(key)
        if value is None:
            return self.rpc_find_node(sender, nodeid, key)
        self._sender(sender, nodeid)
        return {"value": value}

    def welcome_if_new(self, node: Node) -> None:
        """A serving node also hands the newcomer the records it should keep; a client
        only routes through nodes that answered it, and keeps no records for others."""
        if self.serve:
            super().welcome_if_new(node)
        elif self.router.is_new_node(node):
            self.router.add_contact(node)

    async def _accept_request(self, msg_id: bytes, data: Any, address: tuple[str, int]) -> None:
        try:
            await super()._accept_request(msg_id, data, address)
        except Exception as exc:  # hostile or broken request: drop it
            log.debug("dropped a DHT request from %s: %r", address, exc)

    async def _solve_datagram(self, datagram: bytes, address: tuple[str, int]) -> None:
        try:
            await super()._solve_datagram(datagram, address)
        except Exception as exc:
            log.debug("dropped a DHT datagram from %s: %r", address, exc)

    def error_received(self, exc: Exception) -> None:
        log.debug("DHT socket error: %s", exc)

    # -- asking side ------------------------------------------------------------------------

    async def call_ping(self, node_to_ask: Node) -> _Result:
        result = await self.ping((node_to_ask.ip, node_to_ask.port), self.sender_id)
        ok = result[0] and result[1] == node_to_ask.id
        answer: _Result = self.handle_call_response(result if ok else (False, None), node_to_ask)
        return answer

    async def call_store(self, node_to_ask: Node, key: bytes, value: bytes) -> _Result:
        result = await self.store((node_to_ask.ip, node_to_ask.port), self.sender_id, key, value)
        answer: _Result = self.handle_call_response(result, node_to_ask)
        return answer

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> _Result:
        result = await self.find_node((node_to_ask.ip, node_to_ask.port), self.sender_id, node_to_find.id)
        if result[0]:
            nodes = _clean_nodes(result[1])
            result = (False, None) if nodes is None else (True, nodes)
        answer: _Result = self.handle_call_response(result, node_to_ask)
        return answer

    async def call_find_value(self, node_to_ask: Node, node_to_find: Node) -> _Result:
        result = await self.find_value((node_to_ask.ip, node_to_ask.port), self.sender_id, node_to_find.id)
        if result[0]:
            data = result[1]
            if isinstance(data, dict):
                ok = set(data) == {"value"} and isinstance(data["value"], bytes)
                result = (True, data) if ok else (False, None)
            else:
                nodes = _clean_nodes(data)
                result = (False, None) if nodes is None else (True, nodes)
        answer: _Result = self.handle_call_response(result, node_to_ask)
        return answer


class RecordCrawl(SpiderCrawl):  # type: ignore[misc]  # kademlia has no type hints
    """Find the newest valid record under ``node.id`` (a DHT key).

    ``check(value)`` decodes and verifies one value (raising :class:`ProtocolError`);
    ``local`` is this node's own valid copy, if any, counted as one answer.
    """

    def __init__(
        self,
        protocol: P2prtProtocol,
        node: Node,
        peers: list[Node],
        ksize: int,
        alpha: int,
        *,
        check: Callable[[object], DhtRecord],
        quorum: int,
        local: DhtRecord | None = None,
    ) -> None:
        super().__init__(protocol, node, peers, ksize, alpha)
        self._check = check
        self._quorum = quorum
        self.found: list[DhtRecord] = [] if local is None else [local]

    async def find(self) -> DhtRecord | None:
        return await self._find(self.protocol.call_find_value)  # type: ignore[no-any-return]

    async def _nodes_found(self, responses: dict[bytes, _Result]) -> DhtRecord | None:
        toremove = []
        for peer_id, (ok, data) in responses.items():
            if not ok:
                toremove.append(peer_id)
            elif isinstance(data, dict):
                try:
                    self.found.append(self._check(data["value"]))
                except ProtocolError as exc:
                    self.protocol.invalid_seen += 1
                    peer = self.nearest.get_node(peer_id)
                    log.warning("ignored an invalid DHT record from %s: %s", peer, exc)
            else:
                self.nearest.push([Node(*n) for n in data])
        self.nearest.remove(toremove)
        if len(self.found) >= self._quorum or self.nearest.have_contacted_all():
            return max(self.found, key=lambda r: r.seq, default=None)
        return await self.find()
