"""A framed message channel over a :class:`NoiseStream`.

Each message is one frame: a 4-byte length and its CBOR encoding
(:mod:`p2prt.wire.messages`). ``send_many`` writes a batch in one ``send_all``.
Errors are p2prt errors only: protocol errors from the decoder, transport errors mapped
from trio and the OS.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterable

import trio

from ..errors import ConnectionClosedError
from ..wire.frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, encode_frame, encode_frames
from ..wire.handshake import PeerInfo
from ..wire.messages import Message, decode_message, encode_message
from ._errors import map_exceptions
from .noise_stream import NoiseStream

__all__ = ["MessageChannel", "Outbox"]


class MessageChannel:
    """Send and receive typed messages; ``async for msg in channel`` until the peer closes."""

    def __init__(self, stream: NoiseStream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        self._ready: deque[Message] = deque()
        self._send_lock = trio.Lock()

    @property
    def peer(self) -> PeerInfo:
        return self.stream.peer

    async def send(self, msg: Message) -> None:
        """Send one message. Concurrent senders are serialised."""
        data = encode_frame(encode_message(msg))
        async with self._send_lock:
            with map_exceptions(f"connection to {self.peer.user}"):
                await self.stream.send_all(data)

    async def send_many(self, msgs: Iterable[Message]) -> None:
        """Send several messages in one write."""
        data = encode_frames(encode_message(m) for m in msgs)
        async with self._send_lock:
            with map_exceptions(f"connection to {self.peer.user}"):
                await self.stream.send_all(data)

    async def receive(self) -> Message:
        """The next message. Raises :class:`ConnectionClosedError` when the peer closed
        cleanly, a :class:`ProtocolError` on bad input, or a transport error."""
        while not self._ready:
            for frame in self._decoder.frames():
                self._ready.append(decode_message(frame))
            if self._ready:
                break
            with map_exceptions(f"connection to {self.peer.user}"):
                data = await self.stream.receive_some()
            if not data:
                self._decoder.check_eof()
                raise ConnectionClosedError(f"{self.peer.user} closed the connection")
            self._decoder.feed(data)
        return self._ready.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosedError:
                return

    async def aclose(self) -> None:
        with map_exceptions():
            await self.stream.aclose()

    async def __aenter__(self) -> MessageChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Outbox:
    """Messages queued synchronously (:meth:`put`, callable from any code in the trio
    thread) and written by one task (:meth:`run`): whatever accumulated while the
    previous write was in flight goes out in one ``send_all``."""

    def __init__(self, channel: MessageChannel) -> None:
        self.channel = channel
        self._items: list[Message] = []
        self._has_data = trio.Event()

    def put(self, msg: Message) -> None:
        self._items.append(msg)
        self._has_data.set()

    async def run(self) -> None:
        while True:
            await self._has_data.wait()
            self._has_data = trio.Event()
            batch, self._items = self._items, []
            if batch:
                await self.channel.send_many(batch)
