"""Length-prefixed frames, decoded incrementally with bounded memory.

Two framings are used on a connection:

- *Noise framing* (:data:`NOISE_HEADER`): a 2-byte big-endian length, then one Noise
  message of at most 65,535 bytes — the Noise specification's own limit.
- *Message framing* (:data:`FRAME_HEADER`): inside the decrypted stream, a 4-byte
  big-endian length, then one CBOR-encoded message (:mod:`p2prt.wire.messages`).

:class:`FrameDecoder` serves both. It never buffers more than one frame plus one read:
a header announcing more than ``max_frame_size`` raises :class:`FrameTooLargeError`
before the body arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from ..errors import FrameTooLargeError, TruncatedFrameError

__all__ = [
    "FrameDecoder",
    "encode_frame",
    "encode_frames",
    "FRAME_HEADER",
    "NOISE_HEADER",
    "DEFAULT_MAX_FRAME_SIZE",
]

FRAME_HEADER = struct.Struct(">I")
NOISE_HEADER = struct.Struct(">H")
DEFAULT_MAX_FRAME_SIZE = 256 * 1024 * 1024
LARGE_FRAME = 1 << 20
"""Frames above this size are received into a preallocated buffer."""
"""Default ceiling for one message frame (256 MiB); boards use far less."""


def encode_frame(body: bytes, header: struct.Struct = FRAME_HEADER) -> bytes:
    """``header(len(body)) + body``."""
    return header.pack(len(body)) + body


def encode_frames(bodies: Iterable[bytes], header: struct.Struct = FRAME_HEADER) -> bytes:
    """Several frames as one bytes object (one write for a batch)."""
    parts: list[bytes] = []
    for body in bodies:
        parts.append(header.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


class FrameDecoder:
    """Feed bytes in any chunks; take complete frame bodies out.

    >>> d = FrameDecoder(max_frame_size=100)
    >>> d.feed(encode_frame(b"hello")[:3]); d.next_frame() is None
    True
    >>> d.feed(encode_frame(b"hello")[3:]); d.next_frame()
    b'hello'
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, header: struct.Struct = FRAME_HEADER) -> None:
        if max_frame_size < 0 or max_frame_size >= 1 << (8 * header.size):
            max_frame_size = min(max(max_frame_size, 0), (1 << (8 * header.size)) - 1)
        self.max_frame_size = max_frame_size
        self._header = header
        self._buf = bytearray()
        self._pos = 0
        self._need: int | None = None  # body length of the frame being read, once known
        # A large body is received straight into a buffer of its final size (one copy
        # in, one out) instead of growing the general buffer and slicing it.
        self._body: bytearray | None = None
        self._filled = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos + self._filled

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        if self._body is not None:
            room = len(self._body) - self._filled
            view = memoryview(data)
            take = min(room, len(view))
            self._body[self._filled : self._filled + take] = view[:take]
            self._filled += take
            data = view[take:]
            if not data:
                return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or ``None`` until more bytes arrive.

        Raises :class:`FrameTooLargeError` as soon as a header exceeds the limit.
        """
        if self._body is not None:
            if self._filled < len(self._body):
                return None
            out = bytes(self._body)
            self._body = None
            self._filled = 0
            self._need = None
            return out
        hsize = self._header.size
        if self._need is None:
            if len(self._buf) - self._pos < hsize:
                self._compact()
                return None
            (self._need,) = self._header.unpack_from(self._buf, self._pos)
            if self._need > self.max_frame_size:
                raise FrameTooLargeError(
                    f"frame of {self._need} bytes exceeds the limit of {self.max_frame_size} bytes"
                )
            self._pos += hsize
            if self._need > LARGE_FRAME:
                have = memoryview(self._buf)[self._pos : self._pos + self._need]
                self._body = bytearray(self._need)
                self._body[: len(have)] = have
                self._filled = len(have)
                self._pos += len(have)
                del have
                self._compact()
                return self.next_frame()
        need = self._need
        if len(self._buf) - self._pos < need:
            self._compact()
            return None
        body = bytes(self._buf[self._pos : self._pos + need])
        self._pos += need
        self._need = None
        return body

    def frames(self) -> list[bytes]:
        """Every complete frame available now."""
        out: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def take_remaining(self) -> bytes:
        """Hand back the undecoded bytes (e.g. after a handshake) and reset."""
        if self._need is not None or self._body is not None:
            raise RuntimeError("a frame is half read")
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest

    def check_eof(self) -> None:
        """Call at end of stream: raises :class:`TruncatedFrameError` if a frame is partial."""
        if self._need is not None or self.buffered:
            expected = "a header" if self._need is None else f"{self._need} bytes"
            raise TruncatedFrameError(
                f"stream ended in the middle of a frame ({self.buffered} bytes of {expected} received)"
            )

    def _compact(self) -> None:
        # Drop consumed bytes once they dominate the buffer, keeping copies amortised.
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
