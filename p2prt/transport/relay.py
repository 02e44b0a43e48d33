"""Relayed connections: an end-to-end Noise session inside two connections to the board.

When a script cannot dial a worker, both open a connection to the board's *relay port*
(a Noise session with the board, like any board connection), present the same one-time
token (``board.relay_attach``) and, once the board answers ``board.relay_ready`` on
both, every further byte is the other end's: the board splices the two streams. The
script and the worker then run their own Noise handshake over that — the board sees
only ciphertext of a session it has no key for (and checks who may relay: the token is
issued to one script for one worker).

Sans-IO framing is reused: one message frame out, one in, without read-ahead past it
(:func:`read_message`), so the first bytes of the inner session are never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from ..errors import ConnectError, ProtocolError
from ..identity.certificate import NodeIdentity, PeerId
from ..wire.board import RelayAttach, RelayReady
from ..wire.frames import FRAME_HEADER, encode_frame
from ..wire.messages import Message, decode_message, encode_message
from ._errors import map_exceptions
from .noise_stream import Authorizer, NoiseStream, noise_accept, noise_connect
from .tcp import open_secure_stream

__all__ = ["PrefixedStream", "read_message", "write_message", "open_relay", "RELAY_TIMEOUT"]

RELAY_TIMEOUT = 15.0
"""Seconds for the other end to attach, and for the inner handshake."""

_MAX_CONTROL_FRAME = 64 * 1024


class PrefixedStream(trio.abc.Stream):
    """``stream``, with ``prefix`` (bytes already read from it) returned first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            out, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return out
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_message(stream: trio.abc.Stream) -> tuple[Message, bytes]:
    """One message frame from ``stream``, and the bytes that came after it."""
    buf = bytearray()
    need = FRAME_HEADER.size
    while True:
        if len(buf) >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(buf)
            if size > _MAX_CONTROL_FRAME:
                raise ProtocolError(f"relay control frame of {size} bytes")
            need = FRAME_HEADER.size + size
        if len(buf) >= need and len(buf) >= FRAME_HEADER.size:
            return decode_message(bytes(buf[FRAME_HEADER.size : need])), bytes(buf[need:])
        chunk = await stream.receive_some()
        if not chunk:
            raise ConnectError("the relay connection closed")
        buf += chunk


async def write_message(stream: trio.abc.Stream, msg: Message) -> None:
    await stream.send_all(encode_frame(encode_message(msg)))


async def open_relay(
    host: str,
    port: int,
    identity: NodeIdentity,
    token: bytes,
    *,
    board_peer_id: PeerId | None,
    peer_id: PeerId | None = None,
    authorize: Authorizer | None = None,
    initiator: bool,
    now: Callable[[], float] = time.time,
) -> NoiseStream:
    """Attach to the board's relay at ``host:port`` with ``token`` and run the end-to-end
    handshake inside: as initiator (a script; ``peer_id`` is the worker it expects) or as
    responder (a worker; ``authorize`` decides on the script)."""
    outer = await open_secure_stream(host, port, identity, expected_peer_id=board_peer_id, now=now)
    try:
        with trio.fail_after(RELAY_TIMEOUT), map_exceptions("relay through the board"):
            await write_message(outer, RelayAttach(token))
            ready, rest = await read_message(outer)
            if not isinstance(ready, RelayReady):
                raise ProtocolError(f"the board answered a relay attach with {type(ready).__name__}")
            inner = PrefixedStream(outer, rest)
            if initiator:
                return await noise_connect(inner, identity, expected_peer_id=peer_id, now=now)
            return await noise_accept(inner, identity, authorize=authorize, now=now)
    except trio.TooSlowError:
        await trio.aclose_forcefully(outer)
        raise ConnectError(f"the relay through {host}:{port} did not open within {RELAY_TIMEOUT:g} s") from None
    except BaseException:
        await trio.aclose_forcefully(outer)
        raise
