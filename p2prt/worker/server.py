"""The worker process: lends slots to a cluster and runs leased clients' tasks.

Theory of operation
-------------------
The worker listens for Noise connections, then keeps a session with the board
(:class:`~p2prt.board.link.BoardLink`, re-registering after board restarts) announcing
its slots, Python version and listen addresses. A client that holds a lease connects
and presents the board-signed ticket (:class:`~p2prt.wire.peer.Attach`); the worker
accepts it only if the board's signature verifies, it names this worker and the
connecting peer, it is for this worker's cluster, it has not expired, and the board has
not revoked it. Tasks arriving on a connection run only under a lease attached to that
connection. The worker never unpickles payloads: its executor subprocesses
(:class:`~p2prt.worker.pool.ExecutorPool`) do. Results, printed output and nested
requests flow back over the same connection, batched per write. When a client's
connection ends, its queued and running tasks are cancelled.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..board.client import BoardClient
from ..board.link import BoardLink
from ..errors import P2prtError
from ..identity.certificate import NodeIdentity
from ..identity.keys import SshPublicKey
from ..identity.known_boards import KnownBoards
from ..transport import (
    DEFAULT_MAX_ATTACHMENT_BYTES,
    MessageChannel,
    NoiseStream,
    serve_secure,
)
from ..transport._errors import unwrap_single_group
from ..wire import board as bm
from ..wire import peer as pm
from ..wire.control import ErrorReply
from ..wire.handshake import local_versions
from ..wire.messages import Message
from ._attach import allocate as shared_memory
from ._conn import ClientConn, WorkerConfig
from ._objects import HeldObjects, PeerTraffic, payload_size
from .held_serving import HeldServing
from .pool import ExecResult, ExecTask, ExecutorPool
from .reach import Reach

if TYPE_CHECKING:
    from ..dht import DhtNode

__all__ = ["WorkerServer", "WorkerConfig"]

_SECRET_ENV = {"P2PRT_KEY_PASSPHRASE", "SSH_AUTH_SOCK", "SSH_AGENT_PID"}
MAX_FUNCTIONS = 4096
MAX_FUNCTION_BYTES = 256 * 1024 * 1024

log = logging.getLogger(__name__)



REVOKED_MEMORY = 3600.0
"""Seconds a revoked lease id is remembered: longer than any lease ticket lives."""


class WorkerServer(Reach, HeldServing):
    def __init__(
        self,
        config: WorkerConfig,
        identity: NodeIdentity,
        *,
        known_boards: KnownBoards | None = None,
        pin: bool = True,
        on_ready: Callable[[list[str]], None] | None = None,
        on_published: Callable[[tuple[str, int]], None] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.host = socket.gethostname()
        self.python = local_versions().python
        self.board_key: SshPublicKey | None = None
        self.members: list[str] = []
        self._known_boards = known_boards
        self._pin = pin
        self._on_ready = on_ready
        self._on_published = on_published
        self._clients: dict[bytes, ClientConn] = {}
        self._revoked: dict[str, float] = {}  # lease id -> when (monotonic); pruned
        # Peers that attached a valid ticket here at some time: they may read the traffic
        # counters (also on a later connection that only fetches their held values).
        self._admitted: set[bytes] = set()
        self._revoked_tasks: dict[int, str] = {}
        self._task_names: dict[int, str] = {}  # pool id -> task name, for the board's dashboard
        self.done = 0  # tasks finished since start
        self.failed = 0  # tasks failed (error, crashed, timeout) since start
        self._ids = itertools.count(1)
        self._owner: dict[int, ClientConn] = {}
        self.held = HeldObjects()
        self.dht: DhtNode | None = None
        self._dht_scope: trio.CancelScope | None = None
        self.public: bool | None = None
        """Could the board dial us back (None: not known yet)."""
        self.traffic: dict[bytes, PeerTraffic] = {}
        self._nursery: trio.Nursery | None = None
        self._port = 0
        self._board: BoardClient | None = None
        # Tasks must not see the worker owner's secrets.
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
        env["P2PRT_EXECUTOR"] = "1"
        self.pool = ExecutorPool(
            config.slots,
            on_results=self._on_results,
            on_output=self._on_output,
            on_nested=self._on_nested,
            memory_limit=config.memory_limit,
            cpu_time_limit=config.cpu_time_limit,
            sandbox=config.sandbox,
            env=env,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            # Executors start while we listen and register: tasks that arrive first wait
            # in the pool's queue (a start-up failure still ends the worker).
            nursery.start_soon(self.pool.run)
            listeners = await nursery.start(
                lambda task_status: serve_secure(
                    self._serve_client,
                    self.identity,
                    host=self.config.listen_host,
                    port=self.config.listen_port,
                    reuse_port=True,
                    task_status=task_status,
                )
            )
            self._port = int(listeners[0].socket.getsockname()[1])
            link = BoardLink(
                self.config.board_address,
                self.identity,
                on_connect=self._register,
                on_push=self._on_board_push,
                known_boards=self._known_boards,
                pin=self._pin,
                # From the listening port: the board then observes the address (and a
                # home router the port mapping) that other peers can reach us at.
                local_port=self._port,
            )
            await nursery.start(link.run)
            task_status.started()

    # -- board


    async def _register(self, client: BoardClient) -> None:
        self._board = client
        self.board_key = client.board_key
        resources = {k: float(v) for k, v in self.config.resources.items()}
        # Say who may run code here *before* offering slots (on each (re)connection the
        # list is fetched again; it is printed once).
        self.members = list(await client.call(lambda rid: bm.ClusterMembers(rid, self.config.cluster)))
        if self._on_ready is not None:
            self._on_ready(self.members)
            self._on_ready = None
        await client.call(
            lambda rid: bm.WorkerRegister(
                rid, self.config.cluster, self.config.slots, resources, self.python, self.host, self._announce(client)
            )
        )
        client.done, client.failed = self.done, self.failed
        self._report_paths()  # a new session knows nothing of our client connections yet
        if self.dht is not None:
            # Connected again (a board restart, or a new NAT mapping): say where we are now.
            self._background(self.dht.publish_peer(self._announce(client), client.welcome.observed))
        # The DHT node starts once the board says whether it could dial us back
        # (board.reachability): serving when public, client mode behind a NAT.




    async def _on_board_push(self, msg: Message) -> None:
        if isinstance(msg, bm.Reachability):
            self._on_reachability(msg)
            return
        if isinstance(msg, bm.PunchStart):
            if self._nursery is not None:
                self._nursery.start_soon(self._punch, msg)
            return
        if isinstance(msg, bm.RelayIncoming):
            if self._nursery is not None:
                self._nursery.start_soon(self._accept_relay, msg)
            return
        if isinstance(msg, bm.LeaseRevoked):
            self._remember_revoked(msg.lease_id)
            for conn in self._clients.values():
                held = conn.held.pop(msg.lease_id, None)
                if held:
                    for pool_id in [t.task_id for t in held]:
                        self._revoked_tasks[pool_id] = msg.reason
                    self._on_results([ExecResult(t.task_id, "cancelled") for t in held])
                if conn.leases.pop(msg.lease_id, None) is not None:
                    for pool_id, (_, lease_id) in list(conn.tasks.items()):
                        if lease_id == msg.lease_id:
                            self._revoked_tasks[pool_id] = msg.reason
                            self.pool.cancel(pool_id, force=True)

    def _remember_revoked(self, lease_id: str) -> None:
        """Refuse this lease's ticket from now on. Entries older than any ticket can
        live are dropped (their tickets have expired anyway)."""
        now = time.monotonic()
        if len(self._revoked) >= 1024:
            self._revoked = {k: t for k, t in self._revoked.items() if now - t < REVOKED_MEMORY}
        self._revoked[lease_id] = now

    # -- clients

    def _check_ticket(self, ticket: bm.LeaseTicket, stream: NoiseStream) -> str | None:
        if self.board_key is None or not ticket.verify(self.board_key):
            return "the lease ticket is not signed by this worker's board"
        if ticket.worker_peer_id != bytes(self.identity.peer_id):
            return "the lease ticket is for another worker"
        if ticket.client_peer_id != bytes(stream.peer.peer_id):
            return "the lease ticket was issued to another client"
        if ticket.cluster != self.config.cluster:
            return f"the lease ticket is for {ticket.cluster}, this worker serves {self.config.cluster}"
        if ticket.expires <= time.time():
            return "the lease ticket has expired"
        if ticket.lease_id in self._revoked:
            return "the lease was revoked"
        return None




    async def _serve_client(self, stream: NoiseStream, path: str = "direct") -> None:
        conn = ClientConn(
            MessageChannel(stream, max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES, allocate=shared_memory),
            path=path,
        )
        # Large payloads (memory!) only from a peer that attached a lease ticket.
        conn.channel.accept_attachments(0)
        peer = bytes(stream.peer.peer_id)
        old = self._clients.get(peer)
        self._clients[peer] = conn
        self._report_paths()
        try:
            # A connection that breaks (a tampered frame, a reset) ends with that error,
            # not a nursery's group: the listener logs it as an ended connection, not a crash.
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.outbox.run)
                    async for msg in conn.channel:
                        self._on_client_message(conn, stream, msg)
                    nursery.cancel_scope.cancel()
        finally:
            self._count_traffic(peer, stream.peer.user, path, stream.bytes_sent, stream.bytes_received)
            if self._clients.get(peer) is conn:
                del self._clients[peer]
                self.held.drop_owner(peer)
            self._report_paths()
            for pool_id in list(conn.tasks):
                self.pool.cancel(pool_id, force=True)
                self._owner.pop(pool_id, None)
            conn.replies.close(P2prtError("the client went away"))
            del old


    def _on_client_message(self, conn: ClientConn, stream: NoiseStream, msg: Message) -> None:
        if isinstance(msg, pm.DefineFunction) and not conn.leases:
            conn.enqueue(ErrorReply("NotMemberError", "present a lease ticket (Attach) before sending work", None))
            return
        if isinstance(msg, pm.SubmitTasks):
            # Tasks under a lease this connection does not hold (never attached, revoked
            # or detached) are each answered "rejected": the client places them again.
            self._submit(conn, msg.tasks)
        elif isinstance(msg, pm.DefineFunction):
            if len(conn.fns) >= MAX_FUNCTIONS or conn.fn_bytes + len(msg.payload) > MAX_FUNCTION_BYTES:
                conn.fns.clear()  # the client re-sends what it needs after a "function was never defined"
                conn.fn_bytes = 0
            conn.fns[msg.fn_id] = msg.payload
            conn.fn_bytes += len(msg.payload)
        elif isinstance(msg, pm.Attach):
            problem = self._check_ticket(msg.ticket, stream)
            if problem is not None:
                log.warning("refused a lease from %s: %s", stream.peer, problem)
                conn.enqueue(ErrorReply("LeaseRefused", problem, msg.rid))
            else:
                conn.leases[msg.ticket.lease_id] = msg.ticket
                conn.channel.accept_attachments(DEFAULT_MAX_ATTACHMENT_BYTES)
                self._admitted.add(bytes(stream.peer.peer_id))
                conn.enqueue(pm.Attached(msg.rid, msg.ticket.lease_id, self.identity.user, self.host, self.python))
        elif isinstance(msg, pm.Detach):
            conn.leases.pop(msg.lease_id, None)
        elif isinstance(msg, pm.CancelTask):
            for pool_id, (client_id, lease_id) in conn.tasks.items():
                if client_id == msg.task_id:
                    held = conn.held.get(lease_id)
                    waiting = next((t for t in held if t.task_id == pool_id), None) if held else None
                    if held is not None and waiting is not None:
                        held.remove(waiting)
                        self._on_results([ExecResult(pool_id, "cancelled", message="cancelled before it started")])
                    else:
                        self.pool.cancel(pool_id, force=msg.force)
                    break
        elif isinstance(msg, pm.FetchObjects):
            assert self._nursery is not None
            self._nursery.start_soon(self._serve_fetch, conn, stream, msg)
        elif isinstance(msg, pm.StatsRequest):
            # Who uses this worker, and how much, is for its clients only.
            if bytes(stream.peer.peer_id) in self._admitted:
                conn.enqueue(pm.Stats(msg.rid, self.traffic_report()))
            else:
                conn.enqueue(ErrorReply("NotMemberError", "only this worker's clients may read its counters", msg.rid))
        elif isinstance(msg, pm.ReleaseObjects):
            released = self.held.release(bytes(stream.peer.peer_id), msg.object_ids)
            if self.dht is not None:
                for object_id in released:
                    self._background(self.dht.remove_location(object_id))
        elif isinstance(msg, (pm.NestedSubmitted, pm.NestedValues, ErrorReply)):
            rid = msg.request_id if isinstance(msg, ErrorReply) else msg.rid
            conn.replies.resolve(rid, msg)
        else:
            conn.enqueue(ErrorReply("BoardRequestError", f"unexpected message {type(msg).__name__}", None))

    def _submit(self, conn: ClientConn, specs: list[pm.TaskSpec]) -> None:
        batch: list[ExecTask] = []
        refused: list[pm.TaskResult] = []
        for spec in specs:
            if spec.lease_id not in conn.leases:
                refused.append(pm.TaskResult(spec.task_id, "rejected", b"", [], "no such lease on this connection"))
                continue
            payload = conn.fns.get(spec.fn_id)
            if payload is None:
                refused.append(pm.TaskResult(spec.task_id, "crashed", b"", [], "function was never defined"))
                continue
            pool_id = next(self._ids)
            conn.tasks[pool_id] = (spec.task_id, spec.lease_id)
            self._task_names[pool_id] = spec.name
            self._owner[pool_id] = conn
            if spec.hold_over > 0 and spec.object_id:
                conn.holds[pool_id] = (spec.object_id, spec.hold_over)
            task = ExecTask(pool_id, spec.fn_id, payload, spec.args, list(spec.buffers), spec.timeout)
            if spec.fetch:
                assert self._nursery is not None
                self._nursery.start_soon(self._fetch_then_submit, conn, spec, task)
                continue
            if conn.leases[spec.lease_id].num_cpus > 1:
                # The board counted num_cpus slots for this lease: never run two of its
                # tasks at once. (1-CPU leases need no bookkeeping: the pool has one
                # executor per slot, and the board leases no more slots than exist.)
                if conn.running.get(spec.lease_id, 0):
                    conn.held.setdefault(spec.lease_id, collections.deque()).append(task)
                    continue
                conn.running[spec.lease_id] = 1
            batch.append(task)
        if refused:
            conn.enqueue(pm.TaskResults(refused))
        if batch:
            self.pool.submit(batch)

    def _next_of_lease(self, conn: ClientConn, lease_id: str) -> None:
        if not conn.running.get(lease_id):
            return
        waiting = conn.held.get(lease_id)
        if waiting:
            self.pool.submit([waiting.popleft()])
        else:
            conn.running.pop(lease_id, None)

    def _on_results(self, results: list[ExecResult]) -> None:
        per_conn: dict[ClientConn, list[pm.TaskResult]] = {}
        for r in results:
            name = self._task_names.pop(r.task_id, "")
            self._count(r, name)
            conn = self._owner.pop(r.task_id, None)
            if conn is None:
                continue
            entry = conn.tasks.pop(r.task_id, None)
            if entry is None:
                continue
            self._next_of_lease(conn, entry[1])
            status, message = r.status, r.message
            reason = self._revoked_tasks.pop(r.task_id, None)
            if reason is not None and status == "cancelled":
                status, message = "revoked", f"the lease was revoked: {reason}"
            hold = conn.holds.pop(r.task_id, None)
            if status == "ok" and hold is not None and payload_size(r.data, r.buffers) >= hold[1]:
                owner = bytes(conn.channel.peer.peer_id)
                size = self.held.keep(hold[0], owner, r.data, r.buffers)
                if self.dht is not None:
                    self._background(self.dht.publish_location(hold[0], size))
                per_conn.setdefault(conn, []).append(pm.TaskResult(entry[0], "held", b"", [], "", size))
                continue
            per_conn.setdefault(conn, []).append(
                pm.TaskResult(entry[0], status, r.data, r.buffers, message)
            )
        for conn, items in per_conn.items():
            conn.enqueue(pm.TaskResults(items))
        if self._board is not None:
            self._board.busy = len(self._owner)

    def _count(self, r: ExecResult, name: str) -> None:
        """Counts (and recent failures) for the board's dashboard: metadata only."""
        if r.status == "ok":
            self.done += 1
        elif r.status in ("error", "crashed", "timeout"):
            self.failed += 1
            board = self._board
            if board is not None and len(board.failures) < 20:
                message = r.message if r.status != "error" else "the task raised an exception"
                board.failures.append([time.time(), name or "?", r.status, message[:200]])
        if self._board is not None:
            self._board.done, self._board.failed = self.done, self.failed


    # -- held values







    def _on_output(self, pool_id: int, stream: str, text: str) -> None:
        conn = self._owner.get(pool_id)
        if conn is not None and pool_id in conn.tasks:
            conn.enqueue(pm.TaskOutput(conn.tasks[pool_id][0], stream, text))

    async def _on_nested(self, pool_id: int, request: tuple[str, Any]) -> Any:
        conn = self._owner.get(pool_id)
        if conn is None or pool_id not in conn.tasks:
            raise P2prtError("the task's client is gone")
        client_task_id = conn.tasks[pool_id][0]
        kind, payload = request
        if kind == "submit":
            fn_payload, calls, options = payload
            reply = await conn.request(lambda rid: pm.NestedSubmit(rid, client_task_id, fn_payload, calls, options))
            if isinstance(reply, ErrorReply):
                raise P2prtError(reply.message)
            assert isinstance(reply, pm.NestedSubmitted)
            return list(reply.object_ids)
        if kind == "get":
            object_ids, timeout = payload
            reply = await conn.request(lambda rid: pm.NestedGet(rid, client_task_id, list(object_ids), timeout))
            if isinstance(reply, ErrorReply):
                raise P2prtError(reply.message)
            assert isinstance(reply, pm.NestedValues)
            return [(v.object_id, v.status, v.data, list(v.buffers), v.message) for v in reply.values]
        raise P2prtError(f"unknown nested request {kind!r}")
