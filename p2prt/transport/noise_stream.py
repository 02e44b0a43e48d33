"""``NoiseStream``: a :class:`trio.abc.Stream` encrypted with Noise, like trio's SSLStream.

Theory of operation
-------------------
A NoiseStream wraps any transport stream (TCP, a relay splice, an in-memory pair).
:func:`noise_connect` and :func:`noise_accept` drive the sans-IO
:class:`~p2prt.wire.handshake.NoiseHandshake` over the transport and return a stream
whose :attr:`NoiseStream.peer` is the verified identity of the other side. After that:

- ``send_all`` / ``send_parts`` cut the data into pieces of at most 65,519 bytes (a
  Noise message is at most 65,535 bytes with its 16-byte tag), encrypt each straight
  into a reused output buffer behind a 2-byte length, and write up to 1 MiB at a time;
  small parts are gathered into one message first;
- ``receive_some`` returns the plaintext of the next Noise message (bytes that arrived
  with the last handshake message included); ``receive_into`` decrypts messages straight
  into the caller's buffer — how large attachments reach their final place (shared
  memory on a worker) without a copy. Ciphertext is read with ``recv_into`` into one
  buffer per connection (128 KiB, grown to 1 MiB while large data flows).

Errors follow trio's stream contract (``BusyResourceError`` for concurrent use,
``ClosedResourceError`` after our ``aclose``, ``BrokenResourceError`` when the transport
broke or a send was interrupted), with two p2prt additions raised by ``receive_some``:
:class:`~p2prt.errors.DecryptionError` when a message fails authentication and
:class:`~p2prt.errors.TruncatedFrameError` when the peer stops mid-message. Both leave
the stream broken. Code above the transport layer sees only p2prt errors
(:mod:`p2prt.transport._errors`).
"""

from __future__ import annotations

import errno
import inspect
import logging
import operator
import os
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..errors import ConnectionRejectedError, DecryptionError, P2prtError, ProtocolError, TruncatedFrameError
from ..identity.certificate import NodeIdentity, PeerId
from ..wire.cipher import MAX_NOISE_MESSAGE, MAX_PLAINTEXT, TAG_SIZE, CipherState
from ..wire.frames import NOISE_HEADER
from ..wire.handshake import HandshakeState, NoiseHandshake, PeerInfo
from .keepalive import enable_keepalive

__all__ = [
    "NoiseStream",
    "noise_connect",
    "noise_accept",
    "Authorizer",
    "NOWAIT_SENT",
    "NOWAIT_PENDING",
    "NOWAIT_REFUSED",
]

log = logging.getLogger(__name__)

_RECEIVE_SIZE = 256 * 1024  # handshake reads
_RECV_SMALL = 2 * (MAX_NOISE_MESSAGE + 2)  # receive buffer of every connection
_RECV_LARGE = 1 << 20  # ... grown to this once a large buffer is being received
_SEND_BATCH = 1 << 20  # ciphertext written per transport send (at most)
_SEND_BUFFER = _SEND_BATCH + MAX_NOISE_MESSAGE + 2

NOWAIT_REFUSED, NOWAIT_SENT, NOWAIT_PENDING = 0, 1, 2
"""Outcomes of :meth:`NoiseStream.send_nowait`."""

Authorizer = Callable[[PeerInfo], str | Awaitable[str | None] | None]
"""Decides on an authenticated peer: ``None`` accepts, a string is the reason to refuse."""


class _Conflict:
    """Raise BusyResourceError when two tasks use one direction at once."""

    __slots__ = ("_what", "held")

    def __init__(self, what: str) -> None:
        self.held = False
        self._what = what

    def __enter__(self) -> None:
        if self.held:
            raise trio.BusyResourceError(f"another task is already {self._what} on this NoiseStream")
        self.held = True

    def __exit__(self, *exc: object) -> None:
        self.held = False


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
        self._socket = transport_stream.socket if isinstance(transport_stream, trio.SocketStream) else None
        if self._socket is not None:
            enable_keepalive(self._socket)  # a vanished peer is noticed (keepalive.py)
        # Ciphertext received, not yet decrypted: self._rbuf[self._rstart:self._rend].
        self._rbuf = bytearray(max(_RECV_SMALL, len(leftover)))
        self._rbuf[: len(leftover)] = leftover
        self._rstart = 0
        self._rend = len(leftover)
        self._plain = b""  # decrypted, not yet returned
        self._plain_pos = 0
        self._out = bytearray()  # ciphertext being assembled for one transport write
        self._opos = 0
        self._pending = b""  # ciphertext left over by send_nowait, written first next time
        self._stage = bytearray(MAX_PLAINTEXT)  # small pieces gathered into one message
        self._send_conflict = _Conflict("sending")
        self._recv_conflict = _Conflict("receiving")
        self._closed = False
        self._send_broken = False
        self._recv_broken: BaseException | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- sending ----------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_parts((data,))

    async def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the concatenation of ``parts`` without joining them: small pieces are
        gathered into one Noise message, large ones encrypted straight from their
        memory into a reused output buffer."""
        with self._send_conflict:
            self._check_sendable()
            try:
                if self._pending:
                    await self._send_pending()
                sent = await self._send_parts(parts)
            except BaseException:
                # A partial send (error or cancellation) desynchronises the cipher stream.
                self._send_broken = True
                raise
            if not sent:
                await trio.lowlevel.checkpoint()

    def send_nowait(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        """Try to send a small message (at most one Noise message) right now, without
        waiting: saves a trip through the scheduler on the hot path.

        Returns :data:`NOWAIT_SENT` (all handed to the kernel), :data:`NOWAIT_PENDING`
        (encrypted and partly written, or the socket failed: the caller must
        ``await flush()`` soon, which completes it or raises), or :data:`NOWAIT_REFUSED`
        (nothing done — another send is in progress, the data is large or the transport
        is not a socket: use :meth:`send_parts`)."""
        if (
            self._socket is None
            or self._send_conflict.held
            or self._pending
            or self._closed
            or self._send_broken
        ):
            return NOWAIT_REFUSED
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not 0 < len(data) <= MAX_PLAINTEXT:
            return NOWAIT_REFUSED
        ct = self._send_cipher.encrypt(data)
        frame = NOISE_HEADER.pack(len(ct)) + ct
        self.bytes_sent += len(data)
        try:
            n = os.write(self._socket.fileno(), frame)
        except BlockingIOError:
            n = 0
        except OSError:
            self._send_broken = True
            return NOWAIT_PENDING
        if n == len(frame):
            return NOWAIT_SENT
        self._pending = frame[n:]
        return NOWAIT_PENDING

    async def flush(self) -> None:
        """Finish what :meth:`send_nowait` left pending (raises if the stream broke)."""
        with self._send_conflict:
            self._check_sendable()
            try:
                await self._send_pending()
            except BaseException:
                self._send_broken = True
                raise

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("NoiseStream was closed")
        if self._send_broken:
            raise trio.BrokenResourceError("NoiseStream is broken")

    async def _send_pending(self) -> None:
        pending, self._pending = self._pending, b""
        if pending:
            await self.transport_stream.send_all(pending)
        else:
            await trio.lowlevel.checkpoint()

    async def _send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> int:
        stage = self._stage
        spos = 0
        total = 0
        self._opos = 0
        for part in parts:
            view = memoryview(part).cast("B") if not isinstance(part, bytes) else memoryview(part)
            n = len(view)
            total += n
            pos = 0
            if not spos and len(parts) == 1 and n <= MAX_PLAINTEXT:
                if n:
                    await self._emit(view)
                break
            while pos < n:
                if not spos and n - pos >= MAX_PLAINTEXT:
                    await self._emit(view[pos : pos + MAX_PLAINTEXT])
                    pos += MAX_PLAINTEXT
                    continue
                take = min(MAX_PLAINTEXT - spos, n - pos)
                stage[spos : spos + take] = view[pos : pos + take]
                spos += take
                pos += take
                if spos == MAX_PLAINTEXT:
                    await self._emit(stage)
                    spos = 0
        if spos:
            await self._emit(memoryview(stage)[:spos])
        if self._opos:
            await self._flush()
        self.bytes_sent += total
        return total

    async def _emit(self, plaintext: bytes | bytearray | memoryview) -> None:
        """Append one Noise message to the output buffer; write the buffer when full."""
        size = len(plaintext) + TAG_SIZE
        out = self._out
        need = self._opos + size + NOISE_HEADER.size
        if need > len(out):
            if need > _SEND_BUFFER:
                await self._flush()
                need = size + NOISE_HEADER.size
            if need > len(out):
                out.extend(bytes(max(need, min(2 * len(out), _SEND_BUFFER)) - len(out)))
        pos = self._opos
        NOISE_HEADER.pack_into(out, pos, size)
        with memoryview(out) as mv:
            self._send_cipher.encrypt_into(plaintext, mv[pos + 2 : pos + 2 + size])
        self._opos = pos + 2 + size
        if self._opos >= _SEND_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        with memoryview(self._out) as mv:
            await self.transport_stream.send_all(mv[: self._opos])
        self._opos = 0

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
            self._check_receivable()
            waited: bool | None = False
            if self._plain_pos >= len(self._plain):
                waited = await self._fill()
                if waited is None:
                    return b""
            if not waited:
                await trio.lowlevel.checkpoint()
            start = self._plain_pos
            end = len(self._plain) if max_bytes is None else min(len(self._plain), start + max_bytes)
            self._plain_pos = end
            if start == 0 and end == len(self._plain):
                out = self._plain
                self._plain = b""
                self._plain_pos = 0
                return out
            return self._plain[start:end]

    async def receive_into(self, buffer: memoryview) -> int:
        """Receive up to ``len(buffer)`` plaintext bytes into ``buffer``; 0 at clean EOF.

        Noise messages that fit are decrypted straight into ``buffer``; this is how
        large attachments reach their final place without a copy."""
        with self._recv_conflict:
            self._check_receivable()
            if self._plain_pos < len(self._plain):
                n = min(len(buffer), len(self._plain) - self._plain_pos)
                buffer[:n] = self._plain[self._plain_pos : self._plain_pos + n]
                self._plain_pos += n
                await trio.lowlevel.checkpoint()
                return n
            if len(buffer) >= _RECV_LARGE and len(self._rbuf) < _RECV_LARGE:
                self._rbuf.extend(bytes(_RECV_LARGE - len(self._rbuf)))
            got = 0
            waited = False
            while got < len(buffer):
                frame = self._next_frame()
                if frame is None:
                    if got:
                        break
                    if not await self._read_more():
                        return 0
                    waited = True
                    continue
                size = len(frame) - TAG_SIZE
                try:
                    if size <= len(buffer) - got:
                        self._recv_cipher.decrypt_into(frame, buffer[got : got + size])
                        got += size
                        self.bytes_received += size
                    else:
                        plain = self._recv_cipher.decrypt(frame)
                        take = len(buffer) - got
                        buffer[got:] = plain[:take]
                        got += take
                        self._plain, self._plain_pos = plain, take
                        self.bytes_received += len(plain)
                except ProtocolError as exc:
                    self._recv_broken = exc
                    raise
                finally:
                    del frame
                self._rstart += size + TAG_SIZE + NOISE_HEADER.size
            if not waited:
                await trio.lowlevel.checkpoint()
            return got

    def _check_receivable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("NoiseStream was closed")
        if self._recv_broken is not None:
            raise trio.BrokenResourceError("NoiseStream is broken") from self._recv_broken

    def _next_frame(self) -> memoryview | None:
        """The next complete Noise message in the receive buffer (not yet consumed)."""
        start, avail = self._rstart, self._rend - self._rstart
        if avail < NOISE_HEADER.size:
            return None
        rbuf = self._rbuf
        size = (rbuf[start] << 8) | rbuf[start + 1]
        if size < TAG_SIZE:
            exc = DecryptionError(f"a Noise message of {size} bytes is shorter than its tag")
            self._recv_broken = exc
            raise exc
        if avail < NOISE_HEADER.size + size:
            return None
        return memoryview(rbuf)[start + 2 : start + 2 + size]

    async def _fill(self) -> bool | None:
        """Decrypt the next non-empty Noise message into ``self._plain``. Returns whether
        it waited for the transport, or None at clean EOF."""
        waited = False
        while True:
            frame = self._next_frame()
            if frame is not None:
                try:
                    plain = self._recv_cipher.decrypt(frame)
                except ProtocolError as exc:
                    self._recv_broken = exc
                    raise
                finally:
                    self._rstart += len(frame) + NOISE_HEADER.size
                    del frame
                if not plain:
                    continue
                self._plain = plain
                self._plain_pos = 0
                self.bytes_received += len(plain)
                return waited
            if not await self._read_more():
                return None
            waited = True

    async def _read_more(self) -> bool:
        """Receive more ciphertext; False at a clean EOF (raises on a truncated one)."""
        rbuf = self._rbuf
        if self._rstart == self._rend:
            self._rstart = self._rend = 0
        elif self._rstart and len(rbuf) - self._rend < max(MAX_NOISE_MESSAGE + 2, len(rbuf) // 4):
            keep = self._rend - self._rstart
            rbuf[:keep] = rbuf[self._rstart : self._rend]
            self._rstart, self._rend = 0, keep
        with memoryview(rbuf) as mv:
            free = mv[self._rend :]
            if self._socket is not None:
                try:
                    n = await self._socket.recv_into(free)
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        raise trio.ClosedResourceError("the socket was closed") from None
                    raise trio.BrokenResourceError(f"socket error: {exc}") from exc
            else:
                data = await self.transport_stream.receive_some(len(free))
                n = len(data)
                free[:n] = data
            del free
        if not n:
            if self._rend > self._rstart:
                truncated = TruncatedFrameError(
                    f"stream ended in the middle of a frame ({self._rend - self._rstart} bytes received)"
                )
                self._recv_broken = truncated
                raise truncated
            return False
        self._rend += n
        return True

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
