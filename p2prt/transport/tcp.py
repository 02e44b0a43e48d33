"""Authenticated TCP: dial and serve Noise-encrypted connections.

``open_secure_stream`` returns a :class:`NoiseStream` whose ``peer`` is verified;
``serve_secure`` accepts connections, runs the handshake under a timeout, lets an
``authorize`` callback refuse peers with a reason, and hands each accepted stream to a
handler. A connection that misbehaves (garbage, a stall, a bad certificate, a crashing
handler) is logged and closed; the listener keeps serving everyone else.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..errors import ConnectError, P2prtError
from ..identity.certificate import NodeIdentity, PeerId
from ._errors import map_connect_exceptions, map_exceptions
from .channel import MessageChannel
from .noise_stream import Authorizer, NoiseStream, noise_accept, noise_connect

__all__ = [
    "open_secure_stream",
    "open_secure_channel",
    "serve_secure",
    "remote_address",
    "local_address",
    "HANDSHAKE_TIMEOUT",
]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection may take to complete the handshake before it is dropped."""


async def open_secure_stream(
    host: str,
    port: int,
    identity: NodeIdentity,
    *,
    expected_peer_id: PeerId | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    now: Callable[[], float] = time.time,
    local_port: int | None = None,
) -> NoiseStream:
    """Connect to ``host:port`` and complete the Noise handshake as initiator.

    ``local_port``: connect *from* this port — the one this process listens on (its
    listener must have been opened with ``reuse_port``), so that a NAT maps both to the
    same public port and the peer sees the address others can reach us at.

    Raises :class:`~p2prt.errors.ConnectError` (refused, unreachable, timed out), a
    handshake error (certificate, decryption, peer id), or
    :class:`~p2prt.errors.ConnectionRejectedError` with the responder's reason.
    """
    with trio.move_on_after(timeout) as scope:
        with map_connect_exceptions(host, port):
            tcp = None
            if local_port is not None:
                try:
                    tcp = await _connect_from(host, port, local_port)
                except OSError as exc:
                    if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                        raise
                    # e.g. our last connection to the same address is in TIME_WAIT
                    log.info("cannot connect to %s:%d from port %d (%s); using another port", host, port, local_port, exc)
            if tcp is None:
                tcp = await trio.open_tcp_stream(host, port)
        with map_connect_exceptions(host, port):
            return await noise_connect(tcp, identity, expected_peer_id=expected_peer_id, now=now)
    assert scope.cancelled_caught
    raise ConnectError(f"cannot connect to {host}:{port}: no handshake within {timeout:g} s")


async def open_secure_channel(host: str, port: int, identity: NodeIdentity, **kwargs: Any) -> MessageChannel:
    """:func:`open_secure_stream` wrapped in a :class:`MessageChannel`."""
    max_frame_size = kwargs.pop("max_frame_size", None)
    stream = await open_secure_stream(host, port, identity, **kwargs)
    if max_frame_size is None:
        return MessageChannel(stream)
    return MessageChannel(stream, max_frame_size=max_frame_size)


def _reusable(family: int) -> trio.socket.SocketType:
    """A TCP socket that may share its local port with a listener and other connections."""
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


async def _connect_from(host: str, port: int, local_port: int) -> trio.SocketStream:
    """A TCP connection to ``host:port`` from local port ``local_port``."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, address = infos[0]
    sock = _reusable(family)
    try:
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
        await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _reusable_listener(host: str, port: int) -> trio.SocketListener:
    """A listener whose port outgoing connections may share (``local_port``)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = _reusable(family)
    try:
        await sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def local_address(stream: NoiseStream | trio.abc.Stream) -> tuple[str, int] | None:
    """``(host, port)`` of our end of the TCP connection under ``stream``: the address
    this process reaches that peer from."""
    return _socket_address(stream, peer=False)


def remote_address(stream: NoiseStream | trio.abc.Stream) -> tuple[str, int] | None:
    """``(host, port)`` of the TCP peer under ``stream``, when there is one."""
    return _socket_address(stream, peer=True)


def _socket_address(stream: NoiseStream | trio.abc.Stream, *, peer: bool) -> tuple[str, int] | None:
    inner = stream.transport_stream if isinstance(stream, NoiseStream) else stream
    sock = getattr(inner, "socket", None)
    if sock is None:
        return None
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    return (str(addr[0]), int(addr[1]))


async def serve_secure(
    handler: Callable[[NoiseStream], Awaitable[None]],
    identity: NodeIdentity,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    authorize: Authorizer | None = None,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_pending_handshakes: int = 1024,
    now: Callable[[], float] = time.time,
    listen_socket: socket.socket | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve Noise connections on ``host:port`` until cancelled.

    ``task_status.started`` receives the listeners (read the bound port from
    ``listeners[0].socket.getsockname()``). ``handler`` owns the stream and should close
    it; it is closed for it when the handler returns or fails. ``listen_socket``, a
    socket already bound and listening, is served instead of ``host:port``.
    ``reuse_port``: outgoing connections may use the listening port (see
    :func:`open_secure_stream`'s ``local_port``).
    """
    if listen_socket is not None:
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(listen_socket))]
    elif reuse_port:
        listeners = [await _reusable_listener(host, port)]
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    pending = trio.Semaphore(max_pending_handshakes)

    async def one(tcp: trio.SocketStream) -> None:
        addr = remote_address(tcp)
        if pending.value == 0:
            log.warning("too many pending handshakes; dropping %s", addr)
            await trio.aclose_forcefully(tcp)
            return
        async with pending:
            stream: NoiseStream | None = None
            with trio.move_on_after(handshake_timeout) as scope:
                try:
                    with map_exceptions(f"handshake with {addr}"):
                        stream = await noise_accept(tcp, identity, authorize=authorize, now=now)
                except P2prtError as exc:
                    log.info("handshake with %s failed: %s: %s", addr, type(exc).__name__, exc)
                    return
                except Exception:
                    # Defence in depth: one peer must never take the listener down.
                    log.exception("handshake with %s failed unexpectedly", addr)
                    await trio.aclose_forcefully(tcp)
                    return
            if scope.cancelled_caught:
                log.info("handshake with %s timed out after %g s", addr, handshake_timeout)
                await trio.aclose_forcefully(tcp)
                return
        assert stream is not None
        try:
            await handler(stream)
        except P2prtError as exc:
            log.info("connection with %s ended: %s: %s", stream.peer, type(exc).__name__, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("connection with %s ended: %r", stream.peer, exc)
        except Exception:
            log.exception("handler for %s crashed", stream.peer)
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(one, listeners, task_status=task_status)
