"""FrameDecoder and the frame encoders, for both framings (4-byte and 2-byte headers)."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prt.errors import FrameTooLargeError, ProtocolError, TruncatedFrameError
from p2prt.wire.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEADER,
    NOISE_HEADER,
    FrameDecoder,
    encode_frame,
    encode_frames,
)

HEADERS = pytest.mark.parametrize("header", [FRAME_HEADER, NOISE_HEADER], ids=["frame-header", "noise-header"])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (any order, duplicates allowed: empty chunks)."""
    points = [0, *sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        decoder.feed(chunk)
        out.extend(decoder.frames())
    return out


# -- encoding -------------------------------------------------------------------------


def test_header_sizes() -> None:
    assert FRAME_HEADER.size == 4
    assert NOISE_HEADER.size == 2


def test_encode_frame_is_big_endian_length_then_body() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"abc", NOISE_HEADER) == b"\x00\x03abc"
    assert encode_frame(b"x" * 0x0102, NOISE_HEADER)[:2] == b"\x01\x02"


@HEADERS
def test_encode_frames_is_the_concatenation(header: struct.Struct) -> None:
    bodies = [b"", b"a", b"bc" * 100, b""]
    assert encode_frames(bodies, header) == b"".join(encode_frame(b, header) for b in bodies)
    assert encode_frames(iter(bodies), header) == encode_frames(bodies, header)  # any iterable
    assert encode_frames([], header) == b""


# -- decoding -------------------------------------------------------------------------


@HEADERS
def test_round_trip(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(encode_frames([b"hello", b"world"], header))
    assert d.next_frame() == b"hello"
    assert d.next_frame() == b"world"
    assert d.next_frame() is None
    assert d.buffered == 0
    d.check_eof()


@HEADERS
def test_byte_by_byte(header: struct.Struct) -> None:
    bodies = [b"first", b"", b"x" * 300, b"last"]
    data = encode_frames(bodies, header)
    d = FrameDecoder(header=header)
    got: list[bytes] = []
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        got.extend(d.frames())
    assert got == bodies
    d.check_eof()


@HEADERS
def test_frame_is_returned_only_when_its_last_byte_arrives(header: struct.Struct) -> None:
    data = encode_frame(b"payload", header)
    d = FrameDecoder(header=header)
    for i in range(len(data) - 1):
        d.feed(data[i : i + 1])
        assert d.next_frame() is None
    d.feed(data[-1:])
    assert d.next_frame() == b"payload"


@HEADERS
def test_zero_length_frames(header: struct.Struct) -> None:
    d = FrameDecoder(max_frame_size=0, header=header)
    d.feed(encode_frames([b"", b"", b""], header))
    assert d.frames() == [b"", b"", b""]  # b"" is a frame, not "no frame yet"
    assert d.next_frame() is None
    d.check_eof()


def test_accepts_any_buffer_type() -> None:
    data = encode_frame(b"buffer")
    d = FrameDecoder()
    d.feed(bytearray(data[:3]))
    d.feed(memoryview(data)[3:])
    frame = d.next_frame()
    assert frame == b"buffer"
    assert type(frame) is bytes


def test_frames_survive_interleaved_feeding_and_compaction() -> None:
    # Many frames through one decoder, fed in odd-sized chunks, exercise buffer reuse.
    bodies = [bytes([i % 256]) * (i % 37) for i in range(500)]
    data = encode_frames(bodies)
    d = FrameDecoder()
    assert feed_all(d, [data[i : i + 13] for i in range(0, len(data), 13)]) == bodies


# -- limits ---------------------------------------------------------------------------


@HEADERS
def test_too_large_is_raised_from_the_header_alone(header: struct.Struct) -> None:
    d = FrameDecoder(max_frame_size=1000, header=header)
    head = header.pack(1001)
    d.feed(head[:-1])
    assert d.next_frame() is None  # an incomplete header says nothing yet
    d.feed(head[-1:])
    with pytest.raises(FrameTooLargeError) as exc:
        d.next_frame()  # not a single body byte fed
    assert "1001" in str(exc.value)
    assert "1000" in str(exc.value)


@HEADERS
def test_frame_at_the_limit_is_fine(header: struct.Struct) -> None:
    d = FrameDecoder(max_frame_size=1000, header=header)
    d.feed(encode_frame(b"y" * 1000, header))
    assert d.next_frame() == b"y" * 1000


def test_huge_announced_size_is_refused_without_buffering() -> None:
    d = FrameDecoder(max_frame_size=1 << 20)
    d.feed(FRAME_HEADER.pack(0xFFFFFFFF))
    with pytest.raises(FrameTooLargeError, match=str(0xFFFFFFFF)):
        d.next_frame()


def test_default_limit() -> None:
    assert FrameDecoder().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("header", "asked", "expected"),
    [
        (NOISE_HEADER, 10**9, 65535),  # a 2-byte header cannot announce more anyway
        (NOISE_HEADER, 65535, 65535),
        (FRAME_HEADER, 1 << 40, (1 << 32) - 1),
        (FRAME_HEADER, -5, 0),
    ],
)
def test_limit_is_clamped_to_what_the_header_can_express(header: struct.Struct, asked: int, expected: int) -> None:
    assert FrameDecoder(max_frame_size=asked, header=header).max_frame_size == expected


# -- end of stream and hand-over ------------------------------------------------------


@HEADERS
def test_check_eof_mid_header(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(encode_frame(b"abc", header)[:1])
    assert d.next_frame() is None
    with pytest.raises(TruncatedFrameError):
        d.check_eof()


@HEADERS
def test_check_eof_mid_body(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(encode_frame(b"abcdef", header)[:-2])
    assert d.next_frame() is None
    with pytest.raises(TruncatedFrameError) as exc:
        d.check_eof()
    assert "6 bytes" in str(exc.value)  # says how long the cut frame was


@HEADERS
def test_check_eof_mid_body_with_no_body_byte_yet(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(header.pack(5))
    assert d.next_frame() is None
    with pytest.raises(TruncatedFrameError):
        d.check_eof()


@HEADERS
def test_check_eof_at_a_boundary_is_quiet(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.check_eof()  # nothing received at all
    d.feed(encode_frames([b"a", b"bc"], header))
    assert d.frames() == [b"a", b"bc"]
    d.check_eof()


@HEADERS
def test_take_remaining_hands_back_the_undecoded_bytes(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(encode_frame(b"handshake", header) + b"transport bytes")
    assert d.next_frame() == b"handshake"
    assert d.take_remaining() == b"transport bytes"
    assert d.buffered == 0
    assert d.take_remaining() == b""
    d.check_eof()
    # The decoder is usable again afterwards.
    d.feed(encode_frame(b"again", header))
    assert d.next_frame() == b"again"


@HEADERS
def test_take_remaining_includes_a_partial_header(header: struct.Struct) -> None:
    d = FrameDecoder(header=header)
    d.feed(encode_frame(b"x", header) + b"\x00")
    assert d.frames() == [b"x"]
    assert d.take_remaining() == b"\x00"


def test_take_remaining_refuses_a_half_read_frame() -> None:
    d = FrameDecoder()
    d.feed(encode_frame(b"abcdef")[:-1])
    assert d.next_frame() is None
    with pytest.raises(RuntimeError):
        d.take_remaining()


# -- properties -----------------------------------------------------------------------


@HEADERS
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=20),
)
def test_any_split_decodes_to_the_same_frames(header: struct.Struct, bodies: list[bytes], cuts: list[int]) -> None:
    data = encode_frames(bodies, header)
    d = FrameDecoder(max_frame_size=300, header=header)
    assert feed_all(d, split_at(data, cuts)) == bodies
    d.check_eof()
    assert d.take_remaining() == b""


@HEADERS
@settings(max_examples=300)
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    limit=st.integers(min_value=0, max_value=64),
)
def test_arbitrary_bytes_raise_only_protocol_errors(
    header: struct.Struct, data: bytes, cuts: list[int], limit: int
) -> None:
    d = FrameDecoder(max_frame_size=limit, header=header)
    try:
        for chunk in split_at(data, cuts):
            d.feed(chunk)
            for frame in d.frames():
                assert len(frame) <= limit
            # Memory stays bounded: at most one partial frame (or header) is held.
            assert d.buffered < max(header.size, limit)
        d.check_eof()
    except ProtocolError:
        pass


@HEADERS
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_chunking_does_not_change_the_outcome(header: struct.Struct, data: bytes, cuts: list[int]) -> None:
    """Whole or in pieces, the same bytes give the same frames and the same error."""

    def outcome(chunks: list[bytes]) -> tuple[list[bytes], type[Exception] | None]:
        d = FrameDecoder(max_frame_size=50, header=header)
        got: list[bytes] = []
        try:
            for chunk in chunks:
                d.feed(chunk)
                got.extend(d.frames())
            d.check_eof()
        except ProtocolError as exc:
            return got, type(exc)
        return got, None

    whole = outcome([data])
    pieces = outcome(split_at(data, cuts))
    assert pieces[1] == whole[1]
    if whole[1] is not FrameTooLargeError:
        # Up to an oversize header both see the same frames; past it, neither goes on.
        assert pieces[0] == whole[0]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=40))
def test_large_frames_arrive_intact_in_any_chunks(cuts: list[int]) -> None:
    from p2prt.wire.frames import LARGE_FRAME

    bodies = [os.urandom(LARGE_FRAME + 17), b"small", b"", os.urandom(LARGE_FRAME * 2)]
    stream = encode_frames(bodies)
    decoder = FrameDecoder(max_frame_size=LARGE_FRAME * 3)
    out: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[pos : pos + cut])
        pos += cut
        out.extend(decoder.frames())
        if pos >= len(stream):
            break
    assert out == bodies
    decoder.check_eof()
