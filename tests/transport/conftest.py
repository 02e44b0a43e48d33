"""Shared helpers for transport tests: identities, a server fixture, a tampering proxy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import trio

from p2prt.identity import NodeCertificate, NodeIdentity, generate_ed25519
from p2prt.transport import MessageChannel, NoiseStream, serve_secure
from p2prt.wire import Ping, Pong


def make_identity(user: str, **kwargs: object) -> NodeIdentity:
    return NodeIdentity.create(generate_ed25519(), user, **kwargs)  # type: ignore[arg-type]


def forged_signature_identity(user: str) -> NodeIdentity:
    """A certificate claiming ``user``'s SSH key but signed by another key."""
    real = generate_ed25519()
    other = generate_ed25519()
    ident = NodeIdentity.create(other, user)
    cert = ident.certificate
    forged = NodeCertificate(**{**cert.__dict__, "ssh_public_key": real.public.line})
    return NodeIdentity(ident.static_private, forged, ident.signing_private)


def expired_identity(user: str) -> NodeIdentity:
    return NodeIdentity.create(generate_ed25519(), user, lifetime=60, now=time.time() - 3600)


def mismatched_identity(user: str) -> NodeIdentity:
    """Our static key, but a (valid) certificate naming another static key."""
    mine = make_identity(user)
    theirs = NodeIdentity.create(generate_ed25519(), user)
    return NodeIdentity(mine.static_private, theirs.certificate, mine.signing_private)


@dataclass
class EchoServer:
    """serve_secure with a ping→pong handler; records who connected and what failed."""

    identity: NodeIdentity
    port: int = 0
    peers: list[object] = field(default_factory=list)
    handler_errors: list[BaseException] = field(default_factory=list)
    max_frame_size: int = 1 << 20

    async def handler(self, stream: NoiseStream) -> None:
        self.peers.append(stream.peer)
        ch = MessageChannel(stream, max_frame_size=self.max_frame_size)
        try:
            async for msg in ch:
                assert isinstance(msg, Ping)
                await ch.send(Pong(msg.nonce))
        except BaseException as exc:
            self.handler_errors.append(exc)
            raise


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> AsyncIterator[EchoServer]:
    server = EchoServer(make_identity("server"))
    listeners = await nursery.start(
        lambda task_status: serve_secure(server.handler, server.identity, handshake_timeout=2.0, task_status=task_status)
    )
    server.port = listeners[0].socket.getsockname()[1]
    yield server


Tamper = Callable[[int, bytes], bytes]
"""(offset of this chunk in its direction, chunk) -> chunk to forward."""


def flip_bit_at(offset: int) -> Tamper:
    def tamper(pos: int, chunk: bytes) -> bytes:
        if pos <= offset < pos + len(chunk):
            b = bytearray(chunk)
            b[offset - pos] ^= 0x01
            return bytes(b)
        return chunk

    return tamper


def passthrough(pos: int, chunk: bytes) -> bytes:
    return chunk


async def start_proxy(
    nursery: trio.Nursery, target_port: int, *, up: Tamper = passthrough, down: Tamper = passthrough
) -> int:
    """A real TCP proxy on loopback that forwards to ``target_port``, passing each
    direction through a tamper function (``up``: client→server)."""

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream, tamper: Tamper) -> None:
        pos = 0
        try:
            while chunk := await src.receive_some(65536):
                await dst.send_all(tamper(pos, chunk))
                pos += len(chunk)
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
    return int(listeners[0].socket.getsockname()[1])


async def ping(channel: MessageChannel, nonce: int = 7) -> None:
    await channel.send(Ping(nonce))
    reply = await channel.receive()
    assert reply == Pong(nonce)


AsyncFn = Callable[[], Awaitable[None]]
