"""``NoiseStream``: a :class:`trio.abc.Stream` encrypted with Noise, like trio's SSLStream.

Theory of operation
-------------------
A NoiseStream wraps any transport stream (TCP, a relay splice, an in-memory pair).
:func:`noise_connect` and :func:`noise_accept` drive the sans-IO
:class:`~p2prt.wire.handshake.NoiseHandshake` over the transport and return a stream
whose :attr:`NoiseStream.peer` is the verified identity of the other side. After that:

- ``send_all`` cuts the data into pieces of at most 65,519 bytes (a Noise message is at
  most 65,535 bytes with its 16-byte tag), encrypts each, prefixes a 2-byte length, and
  writes them in batches of about 256 KiB;
- ``receive_some`` reads Noise frames, decrypts one at a time and returns plaintext,
  keeping any surplus for the next call (bytes that arrived with the last handshake
  message included).

Errors follow trio's stream contract (``BusyResourceError`` for concurrent use,
``ClosedResourceError`` after our ``aclose``, ``BrokenResourceError`` when the transport
broke or a send was interrupted), with two p2prt additions raised by ``receive_some``:
:class:`~p2prt.errors.DecryptionError` when a message fails authentication and
:class:`~p2prt.errors.TruncatedFrameError` when the peer stops mid-message. Both leave
the stream broken. Code above the transport layer sees only p2prt errors
(:mod:`p2prt.transport._errors`).
"""

from __future__ import annotations

import inspect
import logging
import operator
import time
from collections.abc import Awaitable, Callable

import trio

from ..errors import ConnectionRejectedError, P2prtError, ProtocolError, TruncatedFrameError
from ..identity.certificate import NodeIdentity, PeerId
from ..wire.cipher import MAX_NOISE_MESSAGE, MAX_PLAINTEXT, CipherState
from ..wire.frames import NOISE_HEADER, FrameDecoder
from ..wire.handshake import HandshakeState, NoiseHandshake, PeerInfo

__all__ = ["NoiseStream", "noise_connect", "noise_accept", "Authorizer"]

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 256 * 1024
_SEND_BATCH = 256 * 1024

Authorizer = Callable[[PeerInfo], str | Awaitable[str | None] | None]
"""Decides on an authenticated peer: ``None`` accepts, a string is the reason to refuse."""


class _Conflict:
    """Raise BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_held", "_what")

    def __init__(self, what: str) -> None:
        self._held = False
        self._what = what

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this NoiseStream")
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


class NoiseStream(trio.abc.Stream):
    """An encrypted, authenticated stream; build it with :func:`noise_connect` or
    :func:`noise_accept`, not directly."""

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        send_cipher: CipherState,
        receive_cipher: CipherState,
        peer: PeerInfo,
        leftover: bytes = b"",
    ) -> None:
        self.transport_stream = transport_stream
        self.peer = peer
        self._send_cipher = send_cipher
        self._recv_cipher = receive_cipher
        self._frames = FrameDecoder(MAX_NOISE_MESSAGE, NOISE_HEADER)
        self._frames.feed(leftover)
        self._plain = b""
        self._plain_pos = 0
        self._send_conflict = _Conflict("sending")
        self._recv_conflict = _Conflict("receiving")
        self._closed = False
        self._send_broken = False
        self._recv_broken: BaseException | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- sending ----------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("NoiseStream was closed")
            if self._send_broken:
                raise trio.BrokenResourceError("NoiseStream is broken")
            view = memoryview(data).cast("B")
            if not view:
                await trio.lowlevel.checkpoint()
                return
            try:
                batch: list[bytes] = []
                size = 0
                encrypt = self._send_cipher.encrypt
                pack = NOISE_HEADER.pack
                for off in range(0, len(view), MAX_PLAINTEXT):
                    ct = encrypt(view[off : off + MAX_PLAINTEXT])
                    batch.append(pack(len(ct)))
                    batch.append(ct)
                    size += len(ct) + 2
                    if size >= _SEND_BATCH:
                        await self.transport_stream.send_all(b"".join(batch))
                        batch.clear()
                        size = 0
                if batch:
                    await self.transport_stream.send_all(b"".join(batch))
                self.bytes_sent += len(view)
            except BaseException:
                # A partial send (error or cancellation) desynchronises the cipher stream.
                self._send_broken = True
                raise

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("NoiseStream was closed")
            await self.transport_stream.wait_send_all_might_not_block()

    # -- receiving --------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._recv_conflict:
            if self._closed:
                raise trio.ClosedResourceError("NoiseStream was closed")
            if self._recv_broken is not None:
                raise trio.BrokenResourceError("NoiseStream is broken") from self._recv_broken
            if self._plain_pos >= len(self._plain):
                if not await self._fill():
                    return b""
            else:
                await trio.lowlevel.checkpoint()
            start = self._plain_pos
            end = len(self._plain) if max_bytes is None else min(len(self._plain), start + max_bytes)
            self._plain_pos = end
            if start == 0 and end == len(self._plain):
                return self._plain
            return self._plain[start:end]

    async def _fill(self) -> bool:
        """Decrypt the next Noise message into the plaintext buffer; False at clean EOF."""
        while True:
            try:
                frame = self._frames.next_frame()
            except ProtocolError as exc:
                self._recv_broken = exc
                raise
            if frame is not None:
                try:
                    plain = self._recv_cipher.decrypt(frame)
                except ProtocolError as exc:
                    self._recv_broken = exc
                    raise
                if not plain:
                    continue
                self._plain = plain
                self._plain_pos = 0
                self.bytes_received += len(plain)
                return True
            data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
            if not data:
                try:
                    self._frames.check_eof()
                except TruncatedFrameError as exc:
                    self._recv_broken = exc
                    raise
                return False
            self._frames.feed(data)

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        self._closed = True
        await self.transport_stream.aclose()


async def _run_handshake(
    transport: trio.abc.Stream,
    hs: NoiseHandshake,
    authorize: Authorizer | None,
) -> NoiseStream:
    try:
        if hs.initiator:
            await transport.send_all(hs.initiate())
        while not hs.complete:
            if hs.state is HandshakeState.DECIDING:
                assert hs.peer is not None
                reason = authorize(hs.peer) if authorize is not None else None
                if inspect.isawaitable(reason):
                    reason = await reason
                if reason is None:
                    await transport.send_all(hs.accept())
                    break
                await transport.send_all(hs.reject(str(reason)))
                raise _Refused(str(reason))
            data = await transport.receive_some(_RECEIVE_SIZE)
            if not data:
                raise TruncatedFrameError(f"connection closed during the handshake ({hs.state.value})")
            reply = hs.receive_data(bytes(data))
            if reply:
                await transport.send_all(reply)
    except P2prtError as exc:
        if not isinstance(exc, _Refused):
            notice = hs.failure_notice(exc)
            if notice:
                with trio.move_on_after(1):
                    try:
                        await transport.send_all(notice)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
        await trio.aclose_forcefully(transport)
        raise
    except BaseException:
        await trio.aclose_forcefully(transport)
        raise
    assert hs.peer is not None
    send, recv = hs.ciphers()
    return NoiseStream(transport, send, recv, hs.peer, hs.leftover)


class _Refused(P2prtError):
    """Raised on the responder after its authorizer refused the peer."""


async def noise_connect(
    transport: trio.abc.Stream,
    identity: NodeIdentity,
    *,
    expected_peer_id: PeerId | None = None,
    now: Callable[[], float] = time.time,
) -> NoiseStream:
    """Run the handshake as initiator over ``transport``.

    Raises the handshake's p2prt errors (certificate, decryption, peer id, version),
    :class:`~p2prt.errors.ConnectionRejectedError` when the responder refuses us, or trio
    errors from the transport (mapped by the callers in :mod:`p2prt.transport.tcp`).
    The transport is closed on failure.
    """
    hs = NoiseHandshake(identity, initiator=True, expected_peer_id=expected_peer_id, now=now)
    return await _run_handshake(transport, hs, None)


async def noise_accept(
    transport: trio.abc.Stream,
    identity: NodeIdentity,
    *,
    authorize: Authorizer | None = None,
    now: Callable[[], float] = time.time,
) -> NoiseStream:
    """Run the handshake as responder; ``authorize(peer)`` may refuse with a reason.

    A refused peer is told the reason and this raises
    :class:`~p2prt.errors.ConnectionRejectedError` here too.
    """
    hs = NoiseHandshake(identity, initiator=False, now=now)
    try:
        return await _run_handshake(transport, hs, authorize)
    except _Refused as exc:
        raise ConnectionRejectedError(f"refused {hs.peer}: {exc}") from None
