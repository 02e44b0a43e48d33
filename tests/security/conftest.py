"""Harness for the security tests: an in-process board and real workers (executor
subprocesses included) on loopback, over real sockets and real Noise.

The site: users alice, bob, carol and dave; the cluster ``alice/friends`` with members
alice, bob and carol (dave has an account but is no member). Clients speak the peer
protocol by hand (:class:`WorkerLine`) so a test can present any ticket it likes.

(Copied in spirit from tests/board/conftest.py: with ``--import-mode=importlib`` a test
folder cannot import another's helpers.)
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import operator
import pickle
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from p2prt.board.client import BoardClient, open_board_client
from p2prt.board.config import BoardConfig
from p2prt.board.scheduler import SchedulerConfig
from p2prt.board.server import BoardServer
from p2prt.identity import NodeIdentity, SshKey, generate_ed25519
from p2prt.identity.certificate import PeerId
from p2prt.transport import DEFAULT_MAX_ATTACHMENT_BYTES, MessageChannel, open_secure_stream
from p2prt.wire import board as bm
from p2prt.wire import peer as pm
from p2prt.wire.control import ErrorReply
from p2prt.wire.messages import Buffer, Message, readable
from p2prt.worker.server import WorkerConfig, WorkerServer

WAIT = 10.0
"""Seconds any single wait (a reply, a push, a start) may take before the test fails."""

CLUSTER = "alice/friends"


class WatchedWorker(WorkerServer):
    """A real worker that also tells the test when the board's revocations reached it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.revoked_events: collections.defaultdict[str, trio.Event] = collections.defaultdict(trio.Event)

    async def _on_board_push(self, msg: Message) -> None:
        await super()._on_board_push(msg)
        if isinstance(msg, bm.LeaseRevoked):
            self.revoked_events[msg.lease_id].set()

    async def wait_revoked(self, lease_id: str) -> None:
        with trio.fail_after(WAIT):
            await self.revoked_events[lease_id].wait()


@dataclass
class Site:
    """The board (in this test's nursery), its users' keys, and helpers to add peers."""

    nursery: trio.Nursery
    tmp: Path
    board: BoardServer
    port: int
    keys: dict[str, SshKey] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def identity(self, name: str, *, key: SshKey | None = None) -> NodeIdentity:
        """A fresh process identity (its own peer id) of user ``name``."""
        return NodeIdentity.create(key or self.keys[name], name)

    def connect(self, who: str | NodeIdentity) -> AbstractAsyncContextManager[BoardClient]:
        identity = self.identity(who) if isinstance(who, str) else who
        return open_board_client(self.address, identity)

    async def start_worker(self, user: str = "bob", cluster: str = CLUSTER, *, slots: int = 1) -> WatchedWorker:
        """A worker of ``user``'s, registered with the board when this returns."""
        config = WorkerConfig(self.address, cluster, slots=slots, listen_host="127.0.0.1")
        worker = WatchedWorker(config, self.identity(user))
        with trio.fail_after(WAIT):
            await self.nursery.start(worker.run)
        return worker


async def start_board(nursery: trio.Nursery, data_dir: Path, port: int = 0) -> tuple[BoardServer, int]:
    """A closed board on 127.0.0.1 (no DHT node, no relay: not needed here). Lease tickets
    live 30 s, so no ticket of a test expires by accident."""
    config = BoardConfig(
        data_dir=data_dir,
        port=port,
        heartbeat_interval=0.2,
        tick_interval=0.05,
        dht=False,
        relay=False,
        scheduler=SchedulerConfig(worker_timeout=5.0, client_timeout=5.0, lease_ttl=30.0),
    )
    server = BoardServer(config)
    with trio.fail_after(WAIT):
        bound: int = await nursery.start(server.serve)
    return server, bound


@pytest.fixture
async def site(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Site]:
    server, port = await start_board(nursery, tmp_path / "board")
    s = Site(nursery, tmp_path, server, port)
    for name in ("alice", "bob", "carol", "dave"):
        key = generate_ed25519(comment=name)
        server.store.add_user(name, [key.public], now=time.time())
        s.keys[name] = key
    async with s.connect("alice") as alice:
        with trio.fail_after(WAIT):
            await alice.call(lambda rid: bm.ClusterCreate(rid, "friends"))
            await alice.call(lambda rid: bm.ClusterAdd(rid, CLUSTER, ["bob", "carol"]))
    yield s


# -- a client's side, by hand -----------------------------------------------------------


async def lease(client: BoardClient, cluster: str = CLUSTER) -> bm.LeaseGranted:
    """Ask the board for one lease and wait for its grant."""
    with trio.fail_after(WAIT):
        await client.call(lambda rid: bm.LeaseRequest(rid, cluster, 1))
        while True:
            msg = await client.pushes.receive()
            if isinstance(msg, bm.LeaseGranted):
                return msg


def value_of(data: Buffer, buffers: list[Buffer]) -> Any:
    """The value a worker sent back (a pickle and its out-of-band buffers)."""
    return pickle.loads(readable(data), buffers=[readable(b) for b in buffers])


FN = pickle.dumps(operator.mul, protocol=5)
FN_ID = hashlib.blake2b(FN, digest_size=16).digest()


class WorkerLine:
    """A client's connection to a worker, speaking the peer protocol one request at a
    time (the worker answers in order)."""

    def __init__(self, channel: MessageChannel) -> None:
        self.channel = channel
        self._rids = itertools.count(1)
        self._tasks = itertools.count(1)
        self._defined = False
        self.attached: set[str] = set()
        self.errors: list[ErrorReply] = []

    @classmethod
    async def open(cls, identity: NodeIdentity, grant: bm.LeaseGranted, port: int | None = None) -> WorkerLine:
        """Dial the granted worker (through ``port`` on loopback if given: a proxy),
        checking that the worker named in the grant answers."""
        addr = grant.worker_addrs[0]
        with trio.fail_after(WAIT):
            stream = await open_secure_stream(
                addr.host, port or addr.port, identity, expected_peer_id=PeerId(grant.ticket.worker_peer_id)
            )
        return cls(MessageChannel(stream, max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES))

    async def aclose(self) -> None:
        await self.channel.aclose()

    async def receive(self) -> Message:
        with trio.fail_after(WAIT):
            while True:
                msg = await self.channel.receive()
                if not isinstance(msg, pm.TaskOutput):
                    return msg

    async def attach(self, ticket: bm.LeaseTicket) -> Message:
        """``Attached``, or the worker's ``ErrorReply``."""
        rid = next(self._rids)
        await self.channel.send(pm.Attach(rid, ticket))
        reply = await self.receive()
        assert isinstance(reply, (pm.Attached, ErrorReply)), reply
        assert (reply.rid if isinstance(reply, pm.Attached) else reply.request_id) == rid
        if isinstance(reply, pm.Attached):
            self.attached.add(reply.lease_id)
        return reply

    async def refused(self, ticket: bm.LeaseTicket) -> str:
        """Attach ``ticket``, expecting a refusal; its message."""
        reply = await self.attach(ticket)
        assert isinstance(reply, ErrorReply), f"the worker accepted a bad ticket: {reply!r}"
        assert reply.code == "LeaseRefused"
        return reply.message

    async def run(self, lease_id: str, x: int, y: int, *, hold_as: bytes = b"") -> pm.TaskResult:
        """Send the function (unless the worker keeps it already) and run ``x * y`` under
        ``lease_id``; the task's result, whatever its status. Error replies that come
        first (the function refused) are kept in :attr:`errors`. ``hold_as``: the worker
        keeps the value under this object id (and answers ``held``)."""
        if not self._defined:
            await self.channel.send(pm.DefineFunction(FN_ID, FN))
            self._defined = bool(self.attached)  # else the worker refuses it
        task_id = next(self._tasks)
        args = pickle.dumps(((x, y), {}), protocol=5)
        spec = pm.TaskSpec(task_id, lease_id, FN_ID, args, [], "mul", object_id=hold_as, hold_over=1 if hold_as else 0)
        await self.channel.send(pm.SubmitTasks([spec]))
        while isinstance(reply := await self.receive(), ErrorReply):
            self.errors.append(reply)
        assert isinstance(reply, pm.TaskResults), reply
        (result,) = reply.results
        assert result.task_id == task_id
        return result

    async def fetch(self, object_ids: list[bytes]) -> pm.FetchedObjects | ErrorReply:
        rid = next(self._rids)
        await self.channel.send(pm.FetchObjects(rid, object_ids))
        reply = await self.receive()
        assert isinstance(reply, (pm.FetchedObjects, ErrorReply)), reply
        return reply

    async def stats(self) -> pm.Stats | ErrorReply:
        rid = next(self._rids)
        await self.channel.send(pm.StatsRequest(rid))
        reply = await self.receive()
        assert isinstance(reply, (pm.Stats, ErrorReply)), reply
        return reply

    async def works(self, lease_id: str) -> None:
        """A task under ``lease_id`` runs and returns the right value."""
        result = await self.run(lease_id, 6, 7)
        assert result.status == "ok", result
        assert value_of(result.data, result.buffers) == 42


# -- a tampering proxy --------------------------------------------------------------------


class FrameTamper:
    """Forwards one direction frame by frame (handshake and transport messages alike
    travel as a 2-byte length and a body); when armed, flips a bit in the body of the
    next whole frame it forwards, then disarms. Independent of how TCP cuts the bytes."""

    def __init__(self) -> None:
        self.armed = False
        self.tampered = trio.Event()
        self.frames = 0

    def arm(self) -> None:
        self.armed = True

    def feed(self, buf: bytearray) -> bytes:
        """Take the whole frames out of ``buf``; return them (one maybe tampered with)."""
        out = bytearray()
        while len(buf) >= 2 and len(buf) >= 2 + (size := int.from_bytes(buf[:2], "big")):
            frame = bytearray(buf[: 2 + size])
            del buf[: 2 + size]
            if self.armed and size > 0:
                frame[2 + size // 2] ^= 0x01
                self.armed = False
                self.tampered.set()
            self.frames += 1
            out += frame
        return bytes(out)


@dataclass
class Proxy:
    port: int
    up: FrameTamper  # client -> server
    down: FrameTamper  # server -> client


async def start_proxy(nursery: trio.Nursery, target_port: int) -> Proxy:
    """A TCP proxy on loopback in front of ``target_port`` (one connection at a time is
    what the tests use; the tampers are shared by all connections)."""
    up, down = FrameTamper(), FrameTamper()

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream, tamper: FrameTamper) -> None:
        buf = bytearray()
        try:
            while chunk := await src.receive_some(65536):
                buf += chunk
                data = tamper.feed(buf)
                if data:
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(dst)

    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as n:
            n.start_soon(pipe, client, server, up)
            n.start_soon(pipe, server, client, down)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return Proxy(int(listeners[0].socket.getsockname()[1]), up, down)
