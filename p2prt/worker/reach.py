"""How others reach a worker (a mixin of :class:`~p2prt.worker.server.WorkerServer`).

The addresses it announces, its DHT node (serving when the board could dial it back,
client mode behind a NAT), hole punches and relayed connections that scripts set up
through the board, and the connection paths it reports in heartbeats.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from ..board.client import BoardClient, parse_board_address
from ..errors import P2prtError
from ..identity.certificate import NodeIdentity
from ..transport import NoiseStream, local_address
from ..transport._errors import unwrap_single_group
from ..transport.noise_stream import noise_accept
from ..transport.punch import punch
from ..transport.relay import open_relay
from ..transport.tcp import HANDSHAKE_TIMEOUT
from ..wire import board as bm
from ._conn import ClientConn, WorkerConfig, only_peer
from ._objects import HeldObjects

if TYPE_CHECKING:
    from ..dht import DhtNode

__all__ = ["Reach", "DHT_LOOKUP_TIMEOUT"]

log = logging.getLogger("p2prt.worker.server")

DHT_LOOKUP_TIMEOUT = 2.0
"""Seconds a DHT lookup may take before the addresses we already know are used."""


class Reach:
    """Announcing, DHT, punching and relaying (mixin of WorkerServer)."""

    if TYPE_CHECKING:
        config: WorkerConfig
        identity: NodeIdentity
        held: HeldObjects
        dht: DhtNode | None
        public: bool | None
        _dht_scope: trio.CancelScope | None
        _nursery: trio.Nursery | None
        _board: BoardClient | None
        _port: int
        _clients: dict[bytes, ClientConn]
        _on_published: Callable[[tuple[str, int]], None] | None

        async def _serve_client(self, stream: NoiseStream, path: str = "direct") -> None: ...

    def _announce(self, client: BoardClient) -> list[bm.Address]:
        hosts = list(self.config.announce)
        if not hosts:
            if self.config.listen_host not in ("0.0.0.0", "::", ""):
                hosts = [self.config.listen_host]
            else:
                observed = client.welcome.observed
                hosts = [observed.host] if observed else []
                if "127.0.0.1" not in hosts:
                    hosts.append("127.0.0.1")
        return [bm.Address(h, self._port) for h in hosts]

    def _on_reachability(self, msg: bm.Reachability) -> None:
        client = self._board
        if client is None or client.welcome.dht is None or self._nursery is None:
            return
        if self.public is msg.public and self._dht_scope is not None:
            return
        if self.public is not None and self.public != msg.public:
            log.info("reachability changed: %s", "public" if msg.public else "behind NAT")
        self.public = msg.public
        if self._dht_scope is not None:
            self._dht_scope.cancel()  # the other mode: start afresh
        self._dht_scope = trio.CancelScope()
        self._nursery.start_soon(self._run_dht, client, self._dht_scope, msg.public)

    async def _run_dht(self, client: BoardClient, scope: trio.CancelScope, serve: bool) -> None:
        """This worker's DHT node: bootstrapped from the board's, it publishes where the
        worker listens (and the locations of the values it holds). It serves others only
        when the board could reach us (``serve``); behind a NAT nobody could ask it."""
        from ..dht import open_dht_node

        dht = client.welcome.dht
        local = local_address(client.channel.stream)
        if dht is None or local is None:
            return
        with scope:
            try:
                async with open_dht_node(
                    self.identity, local[0], 0, bootstrap=[(dht.host, dht.port)], serve=serve
                ) as node:
                    self.dht = node
                    for oid, size in self.held.sizes():  # when the node was restarted
                        self._background(node.publish_location(oid, size))
                    await node.publish_peer(self._announce(client), client.welcome.observed)
                    if self._on_published is not None:
                        self._on_published(node.address)
                        self._on_published = None
                    await trio.sleep_forever()
            except P2prtError as exc:
                log.warning("no DHT node (peers will ask the board for our address): %s", exc)
            finally:
                if self._dht_scope is scope:
                    self.dht = None

    def _background(self, work: Awaitable[Any]) -> None:
        """Best-effort DHT updates: logged, never fatal."""

        async def run() -> None:
            try:
                await work
            except P2prtError as exc:
                log.info("DHT update failed: %s", exc)

        if self._nursery is not None:
            self._nursery.start_soon(run)

    async def _punch(self, msg: bm.PunchStart) -> None:
        """A script behind a NAT punches through to us: connect to it from our listening
        port at the same moment; the script runs the handshake as initiator."""
        try:
            tcp = await punch(self._port, msg.address.host, msg.address.port, delay=msg.delay)
        except P2prtError as exc:
            log.info("hole punch to %s:%d failed: %s", msg.address.host, msg.address.port, exc)
            return
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await noise_accept(tcp, self.identity, authorize=only_peer(msg.client_peer_id))
        except (P2prtError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            log.info("handshake over a punched connection failed: %r", exc)
            await trio.aclose_forcefully(tcp)
            return
        await self._serve_indirect(stream, "punched")

    async def _accept_relay(self, msg: bm.RelayIncoming) -> None:
        """A script that cannot dial us waits on the board's relay: meet it there."""
        client = self._board
        relay = client.welcome.relay if client is not None else None
        if client is None or relay is None:
            return
        host, _ = parse_board_address(self.config.board_address)
        try:
            stream = await open_relay(
                host, relay.port, self.identity, msg.token,
                board_peer_id=client.channel.peer.peer_id, authorize=only_peer(msg.client_peer_id), initiator=False,
            )
        except P2prtError as exc:
            log.info("relayed connection failed: %s", exc)
            return
        await self._serve_indirect(stream, "relayed")

    async def _serve_indirect(self, stream: NoiseStream, path: str) -> None:
        """Serve a punched or relayed connection: like the listener does for direct ones,
        whatever ends it ends only it."""
        try:
            with unwrap_single_group():
                await self._serve_client(stream, path=path)
        except (P2prtError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("%s connection with %s ended: %s", path, stream.peer, exc)
        except Exception:
            log.exception("%s connection with %s failed unexpectedly", path, stream.peer)
        finally:
            await trio.aclose_forcefully(stream)

    def _report_paths(self) -> None:
        """Tell the board how scripts reach us now (shown by ``p2prt status``)."""
        board = self._board
        if board is None:
            return
        paths: dict[str, int] = {}
        for conn in self._clients.values():
            paths[conn.path] = paths.get(conn.path, 0) + 1
        if paths != board.paths:
            board.paths = paths
            self._background(board.heartbeat())

    async def _addresses_of(self, peer: bytes, known: list[bm.Address]) -> list[bm.Address]:
        """Where ``peer`` listens: its DHT record first (current), then ``known``."""
        if self.dht is None:
            return known
        from ..dht import addresses_of

        return (await addresses_of(self.dht, peer, known, timeout=DHT_LOOKUP_TIMEOUT))[0]
