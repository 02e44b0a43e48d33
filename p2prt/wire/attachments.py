"""Message frames with attachments: large buffers sent raw after their message.

A plain message frame is ``>I length`` + CBOR (:mod:`p2prt.wire.frames`). When the
top bit of the length word is set, the frame carries attachments::

    >I  0x8000_0000 | cbor_length
    >H  count                      1 .. MAX_ATTACHMENTS
    >Q  size, count times
    CBOR body                      buffer fields name attachments by index (CBOR tag)
    attachment bytes, in order

The receiver learns every attachment's size before its first byte, so it can put each
one where it belongs — a buffer of exactly that size, or shared memory handed on to
another process — and the transport can decrypt straight into it
(:meth:`MessageDecoder.attachment_view`). Nothing large is ever copied into a growing
buffer or a CBOR document. A connection that allows no attachments
(``max_attachment_bytes=0``, e.g. the board's) rejects such frames at the header.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable
from typing import Any

from ..errors import FrameTooLargeError, MalformedFrameError, TruncatedFrameError
from .frames import FRAME_HEADER

__all__ = ["MessageDecoder", "encode_parts", "MAX_ATTACHMENTS", "ATTACHED_FLAG", "Allocator", "AttachmentSink"]

ATTACHED_FLAG = 0x8000_0000
MAX_ATTACHMENTS = 4096
_COUNT = struct.Struct(">H")
_SIZE = struct.Struct(">Q")



class AttachmentSink(abc.ABC):
    """Where an attachment goes when not into memory of this process: bytes arrive in
    order through :meth:`write`; :meth:`finish` returns what the message will hold."""

    __slots__ = ()

    @abc.abstractmethod
    def write(self, data: memoryview) -> None: ...

    @abc.abstractmethod
    def finish(self) -> Any: ...


Allocator = Callable[[int], Any]
"""For an incoming attachment of the given size: a writable buffer of exactly that size,
or an :class:`AttachmentSink`."""

_STAGING = 1 << 20  # bytes handed to a sink at a time

_HEADER, _COUNT_STATE, _SIZES, _BODY = range(4)


def encode_parts(body: bytes, attachments: list[bytes | bytearray | memoryview]) -> list[Any]:
    """The frame for ``body`` and its attachments, as buffers to write in order (the
    attachments themselves are not copied)."""
    if not attachments:
        return [FRAME_HEADER.pack(len(body)) + body]
    if len(attachments) > MAX_ATTACHMENTS:
        raise ValueError(f"a message may carry at most {MAX_ATTACHMENTS} attachments")
    if len(body) >= ATTACHED_FLAG:
        raise ValueError("message body too large")
    head = [FRAME_HEADER.pack(ATTACHED_FLAG | len(body)), _COUNT.pack(len(attachments))]
    head += [_SIZE.pack(memoryview(a).nbytes) for a in attachments]
    head.append(body)
    return [b"".join(head), *attachments]


class MessageDecoder:
    """Feed decrypted bytes; take ``(body, attachments)`` pairs out.

    While an attachment is being received, :meth:`attachment_view` returns the part of
    its buffer still to be filled: write received bytes there and call :meth:`advance`
    (or simply :meth:`feed` them, which copies). Limits: a CBOR body of at most
    ``max_frame_size`` bytes; attachments of at most ``max_attachment_bytes`` in total
    per message (0: none allowed).
    """

    def __init__(
        self,
        max_frame_size: int,
        max_attachment_bytes: int = 0,
        allocate: Allocator = bytearray,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_attachment_bytes = max_attachment_bytes
        self._allocate = allocate
        self._state = _HEADER
        self._want = FRAME_HEADER.size
        self._buf = bytearray()  # a partial header, size table or body
        self._body_size = 0
        self._count = 0
        self._sizes: tuple[int, ...] = ()
        self._body = b""
        self._attachments: list[Any] = []
        # The attachment being received: its size (0: none), how much arrived, and where
        # it goes — a buffer (``_dest``) or a sink.
        self._size = 0
        self._filled = 0
        self._dest: memoryview | None = None
        self._sink: AttachmentSink | None = None
        self._staging: bytearray | None = None
        self._ready: list[tuple[bytes, list[Any]]] = []

    # -- input ------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (any chunking). Raises a :class:`ProtocolError` on a
        bad header as soon as it is complete."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._size:
                take = min(end - pos, self._size - self._filled)
                if self._sink is not None:
                    self._sink.write(view[pos : pos + take])
                else:
                    assert self._dest is not None
                    self._dest[self._filled : self._filled + take] = view[pos : pos + take]
                pos += take
                self._advance(take, written=True)
                continue
            want = self._want
            if self._buf:
                take = min(want - len(self._buf), end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) == want:
                    chunk = bytes(self._buf)
                    self._buf.clear()
                    self._step(chunk)
            elif end - pos >= want:
                self._step(view[pos : pos + want])
                pos += want
            else:
                self._buf += view[pos:end]
                pos = end

    def attachment_view(self) -> memoryview | None:
        """Where the next received bytes belong, when an attachment is being received
        (for a sink: a staging buffer, passed on by :meth:`advance`)."""
        if not self._size:
            return None
        if self._sink is not None:
            if self._staging is None:
                self._staging = bytearray(_STAGING)
            return memoryview(self._staging)[: min(_STAGING, self._size - self._filled)]
        assert self._dest is not None
        return self._dest[self._filled :]

    def advance(self, n: int) -> None:
        """``n`` bytes were written into :meth:`attachment_view`."""
        self._advance(n, written=False)

    def _advance(self, n: int, *, written: bool) -> None:
        assert self._size and 0 <= n <= self._size - self._filled
        if self._sink is not None and not written:
            assert self._staging is not None
            with memoryview(self._staging) as staged:
                self._sink.write(staged[:n])
        self._filled += n
        if self._filled == self._size:
            if self._sink is not None:
                self._attachments[-1] = self._sink.finish()
                self._sink = None
            self._dest = None
            self._size = 0
            self._next_attachment()

    # -- output -----------------------------------------------------------------------

    def frames(self) -> list[tuple[bytes, list[Any]]]:
        """Every complete ``(body, attachments)`` received so far."""
        out, self._ready = self._ready, []
        return out

    def check_eof(self) -> None:
        """At end of stream: raises :class:`TruncatedFrameError` if a frame is partial."""
        if self._state != _HEADER or self._buf or self._size or self._attachments:
            raise TruncatedFrameError("stream ended in the middle of a message frame")

    # -- the state machine -----------------------------------------------------------

    def _step(self, chunk: bytes | memoryview) -> None:
        state = self._state
        if state == _HEADER:
            (word,) = FRAME_HEADER.unpack(chunk)
            size = word & ~ATTACHED_FLAG
            if size > self.max_frame_size:
                raise FrameTooLargeError(f"frame of {size} bytes exceeds the limit of {self.max_frame_size} bytes")
            self._body_size = size
            if word & ATTACHED_FLAG:
                if not self.max_attachment_bytes:
                    raise FrameTooLargeError("this connection accepts no attachments")
                self._set(_COUNT_STATE, _COUNT.size)
            else:
                self._sizes = ()
                self._set(_BODY, size)
        elif state == _COUNT_STATE:
            (count,) = _COUNT.unpack(chunk)
            if not 1 <= count <= MAX_ATTACHMENTS:
                raise MalformedFrameError(f"a frame announces {count} attachments (1..{MAX_ATTACHMENTS} allowed)")
            self._count = count
            self._set(_SIZES, _SIZE.size * count)
        elif state == _SIZES:
            self._sizes = struct.unpack(f">{self._count}Q", chunk)
            total = sum(self._sizes)
            if total > self.max_attachment_bytes:
                raise FrameTooLargeError(
                    f"attachments of {total} bytes exceed the limit of {self.max_attachment_bytes} bytes"
                )
            self._set(_BODY, self._body_size)
        else:
            self._body = bytes(chunk)
            self._attachments = []
            self._state = _HEADER
            self._want = FRAME_HEADER.size
            self._next_attachment()

    def _set(self, state: int, want: int) -> None:
        self._state = state
        self._want = want
        if want == 0:
            self._step(b"")

    def _next_attachment(self) -> None:
        """Start receiving the next attachment, or finish the frame."""
        while len(self._attachments) < len(self._sizes):
            size = self._sizes[len(self._attachments)]
            buf = self._allocate(size)
            self._attachments.append(buf)
            if isinstance(buf, AttachmentSink):
                if not size:
                    self._attachments[-1] = buf.finish()
                    continue
                self._sink = buf
            else:
                if not size:
                    continue
                self._dest = memoryview(buf).cast("B")
            self._size = size
            self._filled = 0
            return
        self._ready.append((self._body, self._attachments))
        self._body = b""
        self._sizes = ()
        self._attachments = []
