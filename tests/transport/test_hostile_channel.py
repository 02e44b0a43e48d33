"""Hostile bytes into a message channel after the handshake, and into the relay's reader.

A :class:`MessageChannel` over a :class:`NoiseStream` over an in-memory stream, fed by a
peer that holds the session keys (an authenticated but hostile peer) and by the network
(tampered or unencrypted bytes, truncation). Whatever arrives, ``receive`` returns the
messages sent before the bad bytes, in order, and then raises p2prt errors only — a
:class:`~p2prt.errors.ProtocolError` or a :class:`~p2prt.errors.TransportError`, never a
trio error, an assertion or anything else — on that call and on every later one.

Runs through the ``fuzz`` fixture (tests/conftest.py): few examples by default, many in
the ``[slow]`` variant.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import strategies as st

from p2prt.errors import ConnectionClosedError, P2prtError, ProtocolError
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.transport import MessageChannel, NoiseStream
from p2prt.transport.relay import read_message
from p2prt.wire import peer as pm
from p2prt.wire.attachments import encode_parts
from p2prt.wire.board import RelayAttach
from p2prt.wire.cipher import MAX_PLAINTEXT, CipherState
from p2prt.wire.control import Goodbye, Ping, Versions
from p2prt.wire.frames import FRAME_HEADER, NOISE_HEADER, encode_frame
from p2prt.wire.handshake import PeerInfo
from p2prt.wire.messages import Message, encode_message, encode_message_parts

pytestmark = pytest.mark.timeout(120)

KEY_IN, KEY_OUT = b"\x11" * 32, b"\x22" * 32
RECEIVE_TIMEOUT = 5.0


@functools.cache
def _peer() -> PeerInfo:
    return PeerInfo(NodeIdentity.create(generate_ed25519(), "mallory").certificate, Versions("0.1.0", "3.11", "3.0"))


MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1).map(Ping),
    st.text(max_size=20).map(Goodbye),
    st.lists(st.binary(max_size=3000), max_size=3).map(
        lambda bufs: pm.TaskResults([pm.TaskResult(i, "ok", b, bufs) for i, b in enumerate(bufs)])
    ),
)


def _plaintext(msg: Message, attach_min: int) -> bytes:
    body, attachments = encode_message_parts(msg, attach_min)
    return b"".join(bytes(p) for p in encode_parts(body, attachments))


@st.composite
def _noise(draw: st.DrawFn, sender: CipherState, plaintext: bytes) -> bytes:
    """``plaintext`` as Noise messages cut where the sender likes (each at most the limit)."""
    out = []
    pos = 0
    while pos < len(plaintext):
        piece = plaintext[pos : pos + draw(st.sampled_from([1, 7, 100, 4000, MAX_PLAINTEXT]))]
        out.append(NOISE_HEADER.pack(len(piece) + 16) + sender.encrypt(piece))
        pos += len(piece)
    return b"".join(out)


@st.composite
def wires(draw: st.DrawFn) -> tuple[bytes, list[Message], bool, int, int]:
    """(bytes on the wire, the messages before the first bad piece, whether all is good,
    the channel's frame limit, its attachment limit)."""
    max_frame = draw(st.sampled_from([64, 1 << 20]))
    limit = draw(st.sampled_from([0, 1 << 20]))
    attach_min = 64 if limit else 1 << 62
    sender = CipherState(KEY_IN)
    wire, sent, clean = [], [], True
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = draw(
            st.sampled_from(["message", "message", "garbage", "cbor", "tampered", "raw", "empty", "short", "truncate"])
        )
        if kind == "message":
            msg = draw(MESSAGES)
            plaintext = _plaintext(msg, attach_min)
            wire.append(draw(_noise(sender, plaintext)))
            if clean and len(encode_message_parts(msg, attach_min)[0]) <= max_frame:
                sent.append(msg)
                continue
        elif kind == "empty":
            wire.append(NOISE_HEADER.pack(16) + sender.encrypt(b""))
            continue  # an empty Noise message is allowed and carries nothing
        elif kind == "garbage":
            wire.append(draw(_noise(sender, draw(st.binary(min_size=1, max_size=200)))))
        elif kind == "cbor":
            wire.append(draw(_noise(sender, encode_frame(draw(st.binary(max_size=60))))))
        elif kind == "tampered":
            genuine = bytearray(draw(_noise(sender, _plaintext(draw(MESSAGES), attach_min))))
            pos = draw(st.integers(min_value=0, max_value=len(genuine) - 1))
            genuine[pos] ^= 1 << draw(st.integers(min_value=0, max_value=7))
            wire.append(bytes(genuine))
        elif kind == "raw":
            wire.append(draw(st.binary(min_size=1, max_size=100)))
        elif kind == "short":
            n = draw(st.integers(min_value=0, max_value=15))
            wire.append(NOISE_HEADER.pack(n) + bytes(n))
        else:
            genuine = draw(_noise(sender, _plaintext(draw(MESSAGES), attach_min)))
            wire.append(genuine[: draw(st.integers(min_value=1, max_value=len(genuine) - 1))])
        clean = False
    return b"".join(wire), sent, clean, max_frame, limit


async def _receive_all(data: bytes, max_frame: int, limit: int, cuts: list[int]) -> tuple[list[Message], BaseException | None]:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = NoiseStream(ours, CipherState(KEY_OUT), CipherState(KEY_IN), _peer())
    channel = MessageChannel(stream, max_frame_size=max_frame, max_attachment_bytes=limit)
    got: list[Message] = []
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            pos = 0
            for cut in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
                if cut > pos:
                    await theirs.send_all(data[pos:cut])
                    pos = cut
            await theirs.aclose()

        nursery.start_soon(send)
        with trio.fail_after(RECEIVE_TIMEOUT):
            try:
                async for msg in channel:
                    got.append(msg)
            except P2prtError as exc:
                error = exc
            # Later calls, too, give messages or p2prt errors, until the channel is closed.
            for _ in range(3):
                try:
                    await channel.receive()
                except ConnectionClosedError:
                    break
                except P2prtError:
                    continue
    return got, error


def test_a_channel_delivers_what_came_before_bad_bytes_then_raises_only_p2prt_errors(fuzz: Any) -> None:
    def check(case: tuple[tuple[bytes, list[Message], bool, int, int], list[int]]) -> None:
        (data, sent, clean, max_frame, limit), cuts = case
        got, error = trio.run(_receive_all, data, max_frame, limit, cuts)
        assert got[: len(sent)] == sent
        if clean:
            assert error is None and got == sent

    fuzz(st.tuples(wires(), st.lists(st.integers(min_value=0, max_value=20_000), max_size=6)), check, default=60, slow=5_000)


async def _relay_read(data: bytes) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(data)
    await theirs.aclose()
    with trio.fail_after(RECEIVE_TIMEOUT):
        try:
            msg, rest = await read_message(ours)
        except P2prtError:
            return
    assert isinstance(msg, Message)
    assert data.endswith(rest) and len(rest) <= len(data) - FRAME_HEADER.size


def test_the_relay_reader_raises_only_p2prt_errors(fuzz: Any) -> None:
    attach = encode_frame(encode_message(RelayAttach(b"\x01" * 16)))
    data = st.one_of(
        st.binary(max_size=100),
        st.binary(max_size=100).map(lambda b: attach + b),
        st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: FRAME_HEADER.pack(n) + b"\xa0"),
        st.binary(max_size=60).map(encode_frame),
    )
    fuzz(data, lambda value: trio.run(_relay_read, value), default=50, slow=3_000)


def test_protocol_errors_name_what_was_wrong() -> None:
    """A sanity check of the harness: a bad frame really is a ProtocolError here."""
    sender = CipherState(KEY_IN)
    data = NOISE_HEADER.pack(16 + 5) + sender.encrypt(encode_frame(b"\xff"))
    got, error = trio.run(_receive_all, data, 1 << 20, 0, [])
    assert got == [] and isinstance(error, ProtocolError)
