"""The board server: sessions in, scheduler and store in the middle, pushes out.

Theory of operation
-------------------
Every peer keeps one Noise session with the board (:func:`~p2prt.transport.serve_secure`).
The handshake's ``authorize`` hook maps the peer's SSH key to an account (store): an
unknown key is refused with advice (closed policy) or admitted only to register (open
policy); a key whose account differs from the name the certificate claims is refused.

Each session has an outbox (a bounded memory channel) drained by a writer task that
batches messages into one write, so a slow peer never stalls the board: a peer whose
outbox overflows is disconnected. The reader task decodes requests and calls one
handler per message type. Handlers are synchronous: they consult the :class:`Store`,
call the pure :class:`Scheduler` with ``now``, and turn its events (grants, reclaims,
revocations) into pushes to the sessions concerned. A ticker calls
``scheduler.tick(now)`` and polls the store's ``data_version``: a change committed by
``p2prt board add-user/remove-user`` in another process is honoured within one tick
(removed users are disconnected; memberships are re-checked and leases revoked).

The board never sees task payloads: only who holds which lease, heartbeats and counts.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import trio

from ..errors import (
    BoardRequestError,
    NotMemberError,
    NotRegisteredError,
    P2prtError,
    RegistrationClosedError,
)
from ..identity.board import load_or_create_board_key
from ..identity.certificate import NodeIdentity, PeerId
from ..identity.keys import SshKey
from ..transport import MessageChannel, NoiseStream, remote_address, serve_secure
from ..transport._errors import unwrap_single_group
from ..wire import board as m
from ..wire.control import ErrorReply, Goodbye
from ..wire.handshake import PeerInfo
from ..wire.messages import Message
from .client import BOARD_MAX_FRAME
from .config import BoardConfig
from .metrics import BoardMetrics
from .relay import RelayHub
from .scheduler import Grant, Reclaim, Revoke, Scheduler, UnknownWorkerError, Unsatisfiable
from .status import status_to_wire
from .store import Store

__all__ = ["BoardServer", "Session"]

log = logging.getLogger(__name__)

_NO_REPLY = object()  # a handler that already pushed its Ok returns this


DIAL_BACK_TIMEOUT = 2.0
"""Seconds the board tries to reach a new worker at its observed address."""
PUNCH_DELAY = 0.0
"""Seconds a worker waits before punching back (the script is already connecting)."""


@dataclass(eq=False)
class Session:
    """One connected peer."""

    peer: PeerInfo
    peer_id: str
    user: str | None
    channel: MessageChannel
    observed: m.Address | None
    outbox: trio.MemorySendChannel[Message]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    worker_cluster: str | None = None
    listen: list[m.Address] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)  # a worker's client connections
    public: bool | None = None  # the board could dial the worker back (None: not known yet)
    registration: m.WorkerRegister | None = None

    def push(self, msg: Message) -> None:
        try:
            self.outbox.send_nowait(msg)
        except trio.WouldBlock:
            log.warning("%s is not reading; disconnecting", self.peer)
            self.cancel.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class BoardServer:
    """``await BoardServer(config).serve()`` runs a board until cancelled."""

    def __init__(self, config: BoardConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.store = Store.open(config.data_dir)
        self.board_key: SshKey = load_or_create_board_key(config.data_dir)
        self.identity = NodeIdentity.create(self.board_key, "board", kind="board")
        self.scheduler = Scheduler(config.scheduler)
        self.sessions: dict[str, Session] = {}
        # Lease requests for clusters with no live worker yet: replayed on registration.
        self._parked: dict[str, list[tuple[Session, m.LeaseRequest]]] = {}
        self.port: int | None = None
        self.dht_address: m.Address | None = None
        self.relay_address: m.Address | None = None
        self.relays = RelayHub(max_relays=config.max_relays, rate=config.relay_rate)
        self.punches = 0
        self.metrics = BoardMetrics()
        self._nursery: trio.Nursery | None = None
        self._data_version = self.store.data_version()

    @property
    def fingerprint(self) -> str:
        return self.board_key.public.fingerprint

    async def serve(
        self,
        *,
        listen_socket: socket.socket | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)``. ``listen_socket``
        (bound and listening already) is served instead of the configured host and port."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                listeners = await nursery.start(
                    lambda task_status: serve_secure(
                        self._session,
                        self.identity,
                        host=self.config.host,
                        port=self.config.port,
                        authorize=self._authorize,
                        handshake_timeout=self.config.handshake_timeout,
                        max_pending_handshakes=self.config.max_pending_handshakes,
                        listen_socket=listen_socket,
                        task_status=task_status,
                    )
                )
                self.port = int(listeners[0].socket.getsockname()[1])
                bound = str(listeners[0].socket.getsockname()[0])
                if self.config.relay:
                    relay = await nursery.start(
                        lambda task_status: serve_secure(
                            self.relays.serve,
                            self.identity,
                            host=bound,
                            port=self.config.relay_port,
                            authorize=self._authorize_relay,
                            handshake_timeout=self.config.handshake_timeout,
                            task_status=task_status,
                        )
                    )
                    self.relay_address = m.Address(bound, int(relay[0].socket.getsockname()[1]))
                dht_host = self._dht_host(bound)
                if dht_host is not None:
                    await nursery.start(self._run_dht, dht_host)
                nursery.start_soon(self._ticker)
                task_status.started(self.port)
        finally:
            self.store.close()

    def _dht_host(self, bound: str) -> str | None:
        if not self.config.dht:
            return None
        host = self.config.dht_host or bound
        if host in ("0.0.0.0", "::", ""):
            log.warning("no DHT node: the board listens on all addresses; give --dht-host to run one")
            return None
        return host

    async def _run_dht(self, host: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The cluster's bootstrap DHT node, for as long as the board serves."""
        from ..dht import open_dht_node

        async with open_dht_node(self.identity, host, 0) as node:
            self.dht_address = m.Address(*node.address)
            log.info("DHT node on udp %s:%d", *node.address)
            task_status.started()
            await trio.sleep_forever()

    def _authorize_relay(self, peer: PeerInfo) -> str | None:
        if self.store.user_for_fingerprint(peer.fingerprint) is None:
            return "only the board's users may use its relay"
        return None

    # -- admission --------------------------------------------------------------------

    def _authorize(self, peer: PeerInfo) -> str | None:
        if peer.kind != "user":
            return f"only user certificates may connect to a board, not {peer.kind}"
        account = self.store.user_for_fingerprint(peer.fingerprint)
        if account is None:
            if self.config.registration == "open":
                return None
            return (
                f"unknown key {peer.fingerprint} (claimed user {peer.user!r}); this board's registration is "
                f"closed. Ask its operator to run: p2prt board add-user {peer.user} --key "
                f"'{peer.ssh_public_key}' --data DIR"
            )
        if account != peer.user:
            return (
                f"this key ({peer.fingerprint}) belongs to account {account!r}, but the certificate claims "
                f'{peer.user!r}: set user = "{account}" in ~/.config/p2prt/config.toml or P2PRT_USER={account}'
            )
        return None

    # -- one session ----------------------------------------------------------------------

    async def _session(self, stream: NoiseStream) -> None:
        peer = stream.peer
        account = self.store.user_for_fingerprint(peer.fingerprint)
        addr = remote_address(stream)
        send, receive = trio.open_memory_channel[Message](self.config.outbox_size)
        channel = MessageChannel(stream, max_frame_size=BOARD_MAX_FRAME)
        s = Session(peer, str(peer.peer_id), account, channel, m.Address(*addr) if addr else None, send)
        old = self.sessions.get(s.peer_id)
        if old is not None:
            old.cancel.cancel()
        self.sessions[s.peer_id] = s
        s.push(
            m.Welcome(
                account,
                s.observed,
                self.config.registration,
                self.config.heartbeat_interval,
                self.dht_address,
                self.relay_address,
            )
        )
        log.info("session %s from %s", peer, addr)
        try:
            with s.cancel, unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, s, receive)
                    await self._reader(s)
                    nursery.cancel_scope.cancel()
        finally:
            self._drop_parked(s)
            if self.sessions.get(s.peer_id) is s:
                del self.sessions[s.peer_id]
                now = self.clock()
                events = self.scheduler.disconnect_client(s.peer_id, now)
                if s.worker_cluster is not None:
                    events += self.scheduler.unregister_worker(s.peer_id, now)
                self._route(events)
                log.info("session %s ended", peer)
            else:
                # The same process connected again (peer ids are per process), e.g. from
                # a new NAT mapping: its leases and registration carry over to the new
                # session, which refreshes them (or they expire by heartbeat timeout).
                log.info("session %s replaced by a new connection", peer)

    async def _writer(self, s: Session, receive: trio.MemoryReceiveChannel[Message]) -> None:
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < 512:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await s.channel.send_many(batch)
        s.cancel.cancel()  # outbox closed: the session is over

    async def _reader(self, s: Session) -> None:
        async for msg in s.channel:
            if isinstance(msg, Goodbye):
                return
            handler = self._handlers.get(type(msg))
            rid = getattr(msg, "rid", None)
            if handler is None:
                s.push(ErrorReply("BoardRequestError", f"unexpected message {type(msg).__name__}", rid))
                continue
            try:
                if s.user is None and not isinstance(msg, m.Register):
                    raise NotRegisteredError("this key has no account on this board yet: run p2prt register NAME first")
                reply = handler(self, s, msg)
            except P2prtError as exc:
                code = exc.code if isinstance(exc, BoardRequestError) else type(exc).__name__
                s.push(ErrorReply(code, str(exc), rid))
                continue
            if rid is not None and reply is not _NO_REPLY:
                s.push(m.Ok(rid, reply))

    # -- handlers (synchronous; return the Ok value) --------------------------------------

    def _require_member(self, s: Session, cluster: str) -> str:
        assert s.user is not None
        if not self.store.is_member(cluster, s.user):
            raise NotMemberError(
                f"{s.user} is not a member of {cluster}; its owner can add you with: "
                f"p2prt cluster add {cluster} {s.user}"
            )
        return s.user

    def _on_register(self, s: Session, msg: m.Register) -> Any:
        if self.config.registration != "open":
            raise RegistrationClosedError("this board's registration is closed; its operator adds users")
        if s.user is not None:
            raise BoardRequestError(f"this key already belongs to account {s.user!r}", "AlreadyRegistered")
        self.store.add_user(msg.user, [s.peer.ssh_public_key], now=self.clock())
        s.user = msg.user
        log.info("registered %s (%s)", msg.user, s.peer.fingerprint)
        return msg.user

    def _on_heartbeat(self, s: Session, msg: m.Heartbeat) -> Any:
        now = self.clock()
        if msg.paths is not None:
            s.paths = dict(msg.paths)
        if s.registration is not None and s.worker_cluster is not None:
            who = f"{s.user}@{s.registration.host}"
            self.metrics.observe(s.peer_id, who, s.worker_cluster, msg.done, msg.failed, msg.failures)
        self.scheduler.heartbeat_client(s.peer_id, now)
        if s.registration is not None:
            try:
                self.scheduler.heartbeat_worker(s.peer_id, now)
            except UnknownWorkerError:
                # Timed out while still connected (e.g. a stalled laptop): register again.
                self._register_worker(s, s.registration)
        return None

    def _on_cluster_create(self, s: Session, msg: m.ClusterCreate) -> Any:
        assert s.user is not None
        return self.store.create_cluster(s.user, msg.name, now=self.clock()).name

    def _on_cluster_delete(self, s: Session, msg: m.ClusterDelete) -> Any:
        assert s.user is not None
        members = self.store.members(msg.cluster)
        self.store.delete_cluster(msg.cluster, by=s.user)
        self._revoke_members(msg.cluster, members)
        return None

    def _on_cluster_add(self, s: Session, msg: m.ClusterAdd) -> Any:
        assert s.user is not None
        return self.store.add_members(msg.cluster, msg.users, by=s.user)

    def _on_cluster_remove(self, s: Session, msg: m.ClusterRemove) -> Any:
        assert s.user is not None
        removed = self.store.remove_members(msg.cluster, msg.users, by=s.user)
        self._revoke_members(msg.cluster, removed)
        return removed

    def _on_cluster_list(self, s: Session, msg: m.ClusterList) -> Any:
        assert s.user is not None
        return [
            {"name": c.name, "owner": c.owner, "members": c.members_count, "created": c.created}
            for c in self.store.clusters_for(s.user)
        ]

    def _on_cluster_members(self, s: Session, msg: m.ClusterMembers) -> Any:
        self._require_member(s, msg.cluster)
        return self.store.members(msg.cluster)

    def _on_worker_register(self, s: Session, msg: m.WorkerRegister) -> Any:
        self._register_worker(s, msg)
        return {"observed": s.observed.to_wire() if s.observed else None}

    def _register_worker(self, s: Session, msg: m.WorkerRegister) -> None:
        user = self._require_member(s, msg.cluster)
        # The scheduler checks the offer before it changes anything (a registration for
        # another cluster replaces the old one there), so a refused one loses nothing.
        events = self.scheduler.register_worker(
            s.peer_id,
            user=user,
            cluster=msg.cluster,
            host=msg.host,
            slots=msg.slots,
            resources=msg.resources,
            python=msg.python,
            now=self.clock(),
        )
        s.worker_cluster = msg.cluster
        s.listen = list(msg.listen)
        s.registration = msg
        self._route(events)
        if msg.cluster in self._parked:
            self._unpark(msg.cluster)
        if self._nursery is not None and s.observed is not None and s.public is None:
            self._nursery.start_soon(self._dial_back, s, s.observed)

    async def _dial_back(self, s: Session, addr: m.Address) -> None:
        """Is the worker reachable at the address we see it at? (Its board connection
        leaves from its listening port, so that is where others would dial.)"""
        public = False
        with trio.move_on_after(DIAL_BACK_TIMEOUT):
            try:
                tcp = await trio.open_tcp_stream(addr.host, addr.port)
            except OSError:
                pass
            else:
                await trio.aclose_forcefully(tcp)
                public = True
        s.public = public
        s.push(m.Reachability(public, addr))

    def _on_lease_request(self, s: Session, msg: m.LeaseRequest) -> Any:
        self._require_member(s, msg.cluster)
        events = self._request(s, msg)  # a refused request raises here, before any answer
        s.push(m.Ok(msg.rid, None))  # the Ok goes out first; grants follow in the same batch
        self._route(events)  # an Unsatisfiable for a cluster without workers is parked there
        return _NO_REPLY

    def _request(self, s: Session, msg: m.LeaseRequest) -> list[Any]:
        """The scheduler's events for ``msg`` (not routed yet)."""
        assert s.user is not None
        return self.scheduler.request_leases(
            s.peer_id,
            s.user,
            msg.cluster,
            msg.count,
            num_cpus=msg.num_cpus,
            resources=msg.resources or {},
            python=msg.python or s.peer.versions.python,
            now=self.clock(),
        )

    def _unpark(self, cluster: str) -> None:
        for s, msg in self._parked.pop(cluster, []):
            if self.sessions.get(s.peer_id) is s:
                self._route(self._request(s, msg))

    def _drop_parked(self, s: Session, cluster: str | None = None) -> None:
        for name in [cluster] if cluster is not None else list(self._parked):
            kept = [(sess, msg) for sess, msg in self._parked.get(name, []) if sess is not s]
            if kept:
                self._parked[name] = kept
            else:
                self._parked.pop(name, None)

    def _on_lease_cancel(self, s: Session, msg: m.LeaseCancel) -> Any:
        self._drop_parked(s, msg.cluster)
        self._route(self.scheduler.cancel_requests(s.peer_id, msg.cluster, self.clock()))
        return None

    def _on_lease_return(self, s: Session, msg: m.LeaseReturn) -> Any:
        now = self.clock()
        for lease_id in msg.lease_ids:
            lease = self.scheduler.lease(lease_id)
            if lease is None or lease.client_peer_id != s.peer_id:
                continue  # already gone (revoked, expired) or not this client's
            worker = self.sessions.get(lease.worker_peer_id)
            self._route(self.scheduler.return_lease(lease_id, now))
            if worker is not None:
                # Its ticket stays valid until it expires: the worker must refuse it now.
                worker.push(m.LeaseRevoked(lease_id, "returned by the client"))
        return None

    def _reachable_worker(self, s: Session, peer_id: bytes) -> Session:
        """The session of a live worker of a cluster ``s`` belongs to."""
        worker = self.sessions.get(str(PeerId(peer_id)))
        if worker is None or worker.worker_cluster is None:
            raise BoardRequestError("that worker is not connected to this board", "NoSuchWorker")
        self._require_member(s, worker.worker_cluster)
        return worker

    def _on_relay_open(self, s: Session, msg: m.RelayOpen) -> Any:
        """A token for ``s`` to reach a live worker of a cluster it belongs to."""
        worker = self._reachable_worker(s, msg.worker_peer_id)
        if not self.config.relay:
            raise BoardRequestError("this board relays nothing", "NoRelay")
        token = self.relays.offer(s.peer_id, worker.peer_id)
        worker.push(m.RelayIncoming(token, bytes(s.peer.peer_id)))
        return token

    def _on_punch_request(self, s: Session, msg: m.PunchRequest) -> Any:
        """Where to punch to (the worker's observed address); once the script is
        connecting (``ready``), tell the worker to connect back to the script's."""
        worker = self._reachable_worker(s, msg.worker_peer_id)
        if s.observed is None or worker.observed is None:
            raise BoardRequestError("the board does not know both addresses", "NoObservedAddress")
        if msg.ready:
            worker.push(m.PunchStart(bytes(s.peer.peer_id), s.observed, PUNCH_DELAY))
            self.punches += 1
        return {"host": worker.observed.host, "port": worker.observed.port, "delay": PUNCH_DELAY}

    @staticmethod
    def _reachability(s: Session | None) -> str:
        """``public`` (the board could dial it back at the address it sees), else how
        scripts reach it now (``punched``, ``relayed``, both), else ``behind NAT``."""
        if s is None:
            return "unknown"
        if s.public:
            return "public"
        ways = [p for p in ("punched", "relayed") if s.paths.get(p)]
        return "+".join(ways) if ways else "behind NAT"

    def dashboard_snapshot(self) -> dict[str, Any]:
        """Everything the operator's dashboard shows: all clusters' workers (with
        reachability, address and load), leases per user, waiting requests, tasks per
        second over the last hour and recent failures."""
        raw = self.scheduler.status()
        everything = {w.cluster for w in raw.workers} | {u.cluster for u in raw.leases} | {r.cluster for r in raw.waiting}
        status = status_to_wire(raw, everything)
        for w in status["workers"]:
            session = self.sessions.get(w["peer_id"])
            w["reachability"] = self._reachability(session)
            observed = session.observed if session is not None else None
            w["address"] = f"{observed.host}:{observed.port}" if observed is not None else None
        status["rates"] = self.metrics.rates()
        status["failures"] = self.metrics.recent_failures()
        status["board"] = {"fingerprint": self.fingerprint, "sessions": len(self.sessions), "relays": self.relays.active,
                           "punches": self.punches, "time": self.clock()}
        return status

    def _on_status(self, s: Session, msg: m.StatusRequest) -> Any:
        assert s.user is not None
        if msg.cluster is not None:
            self._require_member(s, msg.cluster)
            visible = {msg.cluster}
        else:
            visible = {c.name for c in self.store.clusters_for(s.user)}
        status = status_to_wire(self.scheduler.status(), visible)
        for w in status["workers"]:
            session = self.sessions.get(w["peer_id"])
            w["reachability"] = self._reachability(session)
            observed = session.observed if session is not None else None
            w["address"] = f"{observed.host}:{observed.port}" if observed is not None else None
        for cluster, parked in self._parked.items():
            if cluster in visible:
                for sess, req in parked:
                    status["waiting"].append(
                        {
                            "client": sess.peer_id,
                            "user": sess.user,
                            "cluster": cluster,
                            "count": req.count,
                            "num_cpus": req.num_cpus,
                            "resources": dict(req.resources or {}),
                        }
                    )
        return status

    _handlers: ClassVar[dict[type, Callable[[BoardServer, Session, Any], Any]]] = {
        m.Register: _on_register,
        m.Heartbeat: _on_heartbeat,
        m.ClusterCreate: _on_cluster_create,
        m.ClusterDelete: _on_cluster_delete,
        m.ClusterAdd: _on_cluster_add,
        m.ClusterRemove: _on_cluster_remove,
        m.ClusterList: _on_cluster_list,
        m.ClusterMembers: _on_cluster_members,
        m.WorkerRegister: _on_worker_register,
        m.LeaseRequest: _on_lease_request,
        m.LeaseCancel: _on_lease_cancel,
        m.LeaseReturn: _on_lease_return,
        m.StatusRequest: _on_status,
        m.RelayOpen: _on_relay_open,
        m.PunchRequest: _on_punch_request,
    }

    # -- events out -------------------------------------------------------------------

    def _route(self, events: list[Any]) -> None:
        for ev in events:
            if isinstance(ev, Grant):
                lease = ev.lease
                ticket = m.LeaseTicket(
                    lease.lease_id,
                    lease.cluster,
                    PeerId.parse(lease.client_peer_id),
                    lease.client_user,
                    PeerId.parse(lease.worker_peer_id),
                    lease.num_cpus,
                    dict(lease.resources),
                    lease.expires,
                ).signed(self.board_key)
                worker = self.sessions.get(lease.worker_peer_id)
                client = self.sessions.get(lease.client_peer_id)
                if worker is not None:
                    worker.push(m.LeaseGranted(ticket, []))
                if client is not None:
                    addrs = list(worker.listen) if worker is not None else []
                    client.push(m.LeaseGranted(ticket, addrs))
            elif isinstance(ev, Reclaim):
                if (client := self.sessions.get(ev.client_peer_id)) is not None:
                    client.push(m.LeaseReclaim(ev.lease_id))
            elif isinstance(ev, Revoke):
                for pid in (ev.client_peer_id, ev.worker_peer_id):
                    if (sess := self.sessions.get(pid)) is not None:
                        sess.push(m.LeaseRevoked(ev.lease_id, ev.reason))
            elif isinstance(ev, Unsatisfiable):
                client = self.sessions.get(ev.client_peer_id)
                if client is None:
                    continue
                request = m.LeaseRequest(
                    0, ev.cluster, ev.count, ev.shape.num_cpus, dict(ev.shape.resources) or None, ev.shape.python
                )
                if not self.scheduler.status(ev.cluster).workers:
                    # The last worker left: wait for the next one, as for a first request.
                    self._parked.setdefault(ev.cluster, []).append((client, request))
                    continue
                client.push(
                    m.LeaseUnsatisfiable(ev.cluster, ev.reason, ev.shape.num_cpus, dict(ev.shape.resources) or None)
                )

    def _revoke_members(self, cluster: str, users: list[str]) -> None:
        now = self.clock()
        for user in users:
            self._route(self.scheduler.remove_member(cluster, user, now))

    # -- periodic work ------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.config.tick_interval)
            self._route(self.scheduler.tick(self.clock()))
            version = self.store.data_version()
            if version != self._data_version:
                self._data_version = version
                self.resync()

    def resync(self) -> None:
        """Re-check every session and lease against the store (after an outside change)."""
        now = self.clock()
        for s in list(self.sessions.values()):
            if s.user is None:
                continue
            if self.store.user_for_fingerprint(s.peer.fingerprint) != s.user:
                log.info("account or key of %s removed; disconnecting", s.peer)
                if self.store.user_exists(s.user):  # only this key went: end this session's state
                    events = self.scheduler.disconnect_client(s.peer_id, now)
                    if s.worker_cluster is not None:
                        events += self.scheduler.unregister_worker(s.peer_id, now)
                    self._route(events)
                else:
                    self._route(self.scheduler.remove_user(s.user, now))
                s.push(Goodbye("your account or key was removed from this board"))
                s.outbox.close()  # the writer flushes what is queued, then ends the session
                s.cancel.deadline = min(s.cancel.deadline, trio.current_time() + 5.0)
        status = self.scheduler.status()
        pairs = {(w.cluster, w.user) for w in status.workers}
        pairs |= {(u.cluster, u.user) for u in status.leases}
        pairs |= {(r.cluster, r.user) for r in status.waiting}
        for cluster, user in pairs:
            if not self.store.is_member(cluster, user):
                self._route(self.scheduler.remove_member(cluster, user, now))
