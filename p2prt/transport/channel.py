"""A framed message channel over a :class:`NoiseStream`.

Each message is one frame: a 4-byte length and its CBOR encoding
(:mod:`p2prt.wire.messages`), optionally followed by attachments — large buffers sent
raw (:mod:`p2prt.wire.attachments`). ``send_many`` writes a batch in one
``send_parts``; attachments are encrypted straight from their memory, and received ones
are decrypted straight into buffers from ``allocate``. A channel accepts attachments
only when built with ``max_attachment_bytes`` > 0 (peer connections; never the board).
Errors are p2prt errors only: protocol errors from the decoder, transport errors mapped
from trio and the OS.
"""

from __future__ import annotations

import mmap
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import trio

from ..errors import ConnectionClosedError
from ..wire.attachments import Allocator, MessageDecoder, encode_parts
from ..wire.frames import DEFAULT_MAX_FRAME_SIZE
from ..wire.handshake import PeerInfo
from ..wire.messages import Message, decode_message, encode_message_parts
from ._errors import map_exceptions
from .noise_stream import NOWAIT_PENDING, NOWAIT_REFUSED, NOWAIT_SENT, NoiseStream

__all__ = ["MessageChannel", "Outbox", "ATTACH_MIN", "DEFAULT_MAX_ATTACHMENT_BYTES", "allocate_local"]

ATTACH_MIN = 64 * 1024
"""Buffers of at least this size travel as attachments (when the channel allows them)."""

DEFAULT_MAX_ATTACHMENT_BYTES = 1 << 40
"""Attachments per message on peer connections: no practical limit (memory is)."""

_MAP_MIN = 1 << 20
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def allocate_local(size: int) -> bytearray | memoryview:
    """Memory for a received attachment: a large one gets fresh pages mapped in one go
    (a ``bytearray`` would zero them first, then fault them in one by one — together
    slower than the decryption that fills them)."""
    if size < _MAP_MIN:
        return bytearray(size)
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE))


class MessageChannel:
    """Send and receive typed messages; ``async for msg in channel`` until the peer closes."""

    def __init__(
        self,
        stream: NoiseStream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_attachment_bytes: int = 0,
        allocate: Allocator = allocate_local,
    ) -> None:
        self.stream = stream
        self._decoder = MessageDecoder(max_frame_size, max_attachment_bytes, allocate)
        self._attach_min = ATTACH_MIN if max_attachment_bytes else 1 << 62
        self._ready: deque[Message] = deque()
        self._send_lock = trio.Lock()

    @property
    def peer(self) -> PeerInfo:
        return self.stream.peer

    def accept_attachments(self, max_bytes: int) -> None:
        """How many attachment bytes one incoming message may carry from now on (0: none;
        a frame that announces any is then a protocol error). E.g. a worker accepts large
        payloads only on connections that attached a lease."""
        self._decoder.max_attachment_bytes = max_bytes

    async def send(self, msg: Message) -> None:
        """Send one message. Concurrent senders are serialised."""
        await self.send_many((msg,))

    async def send_many(self, msgs: Iterable[Message]) -> None:
        """Send several messages in one write."""
        parts: list[Any] = []
        small: list[bytes] = []
        for m in msgs:
            body, attachments = encode_message_parts(m, self._attach_min)
            frame = encode_parts(body, attachments)
            if len(frame) == 1:
                small.append(frame[0])
                continue
            if small:
                parts.append(b"".join(small))
                small = []
            parts.extend(frame)
        if small:
            parts.append(small[0] if len(small) == 1 else b"".join(small))
        async with self._send_lock:
            with map_exceptions(f"connection to {self.peer.user}"):
                await self.stream.send_parts(parts)

    def send_nowait(self, msg: Message) -> int:
        """Send a small message now if nothing else is being sent (see
        :meth:`NoiseStream.send_nowait` for the outcomes)."""
        if self._send_lock.locked():
            return NOWAIT_REFUSED
        body, attachments = encode_message_parts(msg, self._attach_min)
        if attachments:
            return NOWAIT_REFUSED
        return self.stream.send_nowait(encode_parts(body, attachments))

    async def flush(self) -> None:
        """Complete a send that :meth:`send_nowait` left pending."""
        async with self._send_lock:
            with map_exceptions(f"connection to {self.peer.user}"):
                await self.stream.flush()

    async def receive(self) -> Message:
        """The next message. Raises :class:`ConnectionClosedError` when the peer closed
        cleanly, a :class:`ProtocolError` on bad input, or a transport error."""
        decoder = self._decoder
        while not self._ready:
            for body, attachments in decoder.frames():
                self._ready.append(decode_message(body, attachments))
            if self._ready:
                break
            view = decoder.attachment_view()
            with map_exceptions(f"connection to {self.peer.user}"):
                if view is not None:
                    n = await self.stream.receive_into(view)
                    del view
                    if n:
                        decoder.advance(n)
                        continue
                    data = b""
                else:
                    data = await self.stream.receive_some()
            if not data:
                decoder.check_eof()
                raise ConnectionClosedError(f"{self.peer.user} closed the connection")
            decoder.feed(data)
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
    previous write was in flight goes out in one ``send_all``. When nothing is queued or
    being written, a small message is written at once by :meth:`put` itself (the
    writer task is not woken: one trip through the scheduler less per message)."""

    def __init__(self, channel: MessageChannel) -> None:
        self.channel = channel
        self._items: list[Message] = []
        self._has_data = trio.Event()
        self._writing = False
        self._flush = False

    def put(self, msg: Message) -> None:
        if not self._items and not self._writing and not self._flush:
            try:
                outcome = self.channel.send_nowait(msg)
            except Exception:  # the writer task meets the same problem and reports it
                outcome = NOWAIT_REFUSED
            if outcome == NOWAIT_SENT:
                return
            if outcome == NOWAIT_PENDING:
                self._flush = True
                self._has_data.set()
                return
        self._items.append(msg)
        self._has_data.set()

    async def run(self) -> None:
        while True:
            await self._has_data.wait()
            self._has_data = trio.Event()
            self._writing = True
            try:
                if self._flush:
                    await self.channel.flush()
                    self._flush = False
                batch, self._items = self._items, []
                if batch:
                    await self.channel.send_many(batch)
            finally:
                self._writing = False
