"""Message frames with attachments: round trips under any chunking, limits, hostile frames."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2prt.errors import FrameTooLargeError, MalformedFrameError, ProtocolError, TruncatedFrameError
from p2prt.wire import peer as pm
from p2prt.wire.attachments import ATTACHED_FLAG, MAX_ATTACHMENTS, MessageDecoder, encode_parts
from p2prt.wire.messages import ATTACHMENT_TAG, decode_message, encode_message, encode_message_parts

LIMIT = 1 << 30


def frame_of(msg: pm.TaskResults | pm.SubmitTasks, attach_min: int) -> bytes:
    body, attachments = encode_message_parts(msg, attach_min)
    return b"".join(bytes(p) for p in encode_parts(body, attachments))


def decode_all(data: bytes, cuts: list[int], *, direct: bool) -> list[object]:
    """Feed ``data`` cut at ``cuts``; with ``direct``, attachment bytes are written
    straight into :meth:`attachment_view` as a transport would."""
    decoder = MessageDecoder(1 << 20, LIMIT)
    pos = 0
    out = []
    for cut in [*sorted(cuts), len(data)]:
        chunk = memoryview(data)[pos:cut]
        while chunk:
            view = decoder.attachment_view() if direct else None
            if view is not None:
                n = min(len(view), len(chunk))
                view[:n] = chunk[:n]
                decoder.advance(n)
                chunk = chunk[n:]
            else:
                decoder.feed(chunk)
                chunk = chunk[len(chunk) :]
            for body, attachments in decoder.frames():
                out.append(decode_message(body, attachments))
        pos = cut
    decoder.check_eof()
    return out


payloads = st.lists(st.binary(min_size=0, max_size=300), min_size=0, max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), payloads), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
    st.booleans(),
)
def test_round_trip_under_any_chunking(results: list[tuple[bytes, list[bytes]]], cuts: list[int], direct: bool) -> None:
    msgs = [pm.TaskResults([pm.TaskResult(i, "ok", data, bufs) for i, (data, bufs) in enumerate(results)])]
    msgs.append(pm.SubmitTasks([pm.TaskSpec(7, "lease", b"fn", b"x" * 100, [b"y" * 50], "t")]))
    data = b"".join(frame_of(m, attach_min=50) for m in msgs)
    cuts = [c for c in cuts if c <= len(data)]
    assert decode_all(data, cuts, direct=direct) == msgs


def test_large_buffers_travel_outside_the_cbor() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    msg = pm.TaskResults([pm.TaskResult(1, "ok", b"small", [big, memoryview(big)])])
    body, attachments = encode_message_parts(msg, 64 * 1024)
    assert len(body) < 100 and len(attachments) == 2
    assert attachments[0] is big  # not copied
    parts = encode_parts(body, attachments)
    assert parts[1] is big
    (word,) = struct.unpack(">I", parts[0][:4])
    assert word & ATTACHED_FLAG
    got = decode_all(b"".join(bytes(p) for p in parts), [3, 70_000], direct=True)
    assert got == [msg]


def test_attachments_go_to_the_allocator() -> None:
    seen: list[int] = []

    def allocate(n: int) -> bytearray:
        seen.append(n)
        return bytearray(n)

    msg = pm.TaskResults([pm.TaskResult(1, "ok", b"a" * 1000, [b"b" * 2000])])
    decoder = MessageDecoder(1 << 20, LIMIT, allocate)
    decoder.feed(frame_of(msg, attach_min=500))
    ((body, attachments),) = decoder.frames()
    assert seen == [1000, 2000]
    assert decode_message(body, attachments) == msg


def test_a_connection_without_attachments_refuses_them_at_the_header() -> None:
    msg = pm.TaskResults([pm.TaskResult(1, "ok", b"a" * 1000, [])])
    decoder = MessageDecoder(1 << 20, 0)
    with pytest.raises(FrameTooLargeError, match="no attachments"):
        decoder.feed(frame_of(msg, attach_min=500)[:4])


def test_announced_attachments_over_the_limit_are_refused_before_allocation() -> None:
    allocated: list[int] = []
    decoder = MessageDecoder(1 << 20, 1000, lambda n: allocated.append(n) or bytearray(n))
    head = struct.pack(">IHQQ", ATTACHED_FLAG | 5, 2, 600, 600)
    with pytest.raises(FrameTooLargeError, match="exceed the limit"):
        decoder.feed(head)
    assert allocated == []


@pytest.mark.parametrize("count", [0, MAX_ATTACHMENTS + 1])
def test_bad_attachment_counts_are_refused(count: int) -> None:
    decoder = MessageDecoder(1 << 20, LIMIT)
    with pytest.raises(MalformedFrameError, match="attachments"):
        decoder.feed(struct.pack(">IH", ATTACHED_FLAG | 5, count))


def test_truncated_attachment_is_reported_at_eof() -> None:
    msg = pm.TaskResults([pm.TaskResult(1, "ok", b"a" * 1000, [])])
    data = frame_of(msg, attach_min=500)
    decoder = MessageDecoder(1 << 20, LIMIT)
    decoder.feed(data[:-1])
    assert decoder.frames() == []
    with pytest.raises(TruncatedFrameError):
        decoder.check_eof()


def _tagged(index: object) -> bytes:
    return cbor2.dumps(["peer.results", [[1, "ok", cbor2.CBORTag(ATTACHMENT_TAG, index), []]]])


@pytest.mark.parametrize(
    ("body", "attachments", "match"),
    [
        (_tagged(1), [b"x"], "not a valid attachment"),
        (_tagged(-1), [b"x"], "not a valid attachment"),
        (_tagged("0"), [b"x"], "not a valid attachment"),
        (_tagged(0), [b"x", b"y"], "not referenced"),
        (
            cbor2.dumps(["peer.results", [[1, "ok", cbor2.CBORTag(ATTACHMENT_TAG, 0), [cbor2.CBORTag(ATTACHMENT_TAG, 0)]]]]),
            [b"x"],
            "referenced twice",
        ),
        (_tagged(0), None, "not allowed"),
    ],
)
def test_hostile_attachment_references(body: bytes, attachments: list[bytes] | None, match: str) -> None:
    with pytest.raises(MalformedFrameError, match=match):
        decode_message(body, attachments)


def test_an_attachment_in_a_plain_field_is_refused() -> None:
    # Only buffer fields may hold attachments: plain CBOR (Any) fields may not.
    from p2prt.wire import board

    assert board.Ok  # registers board.* messages
    body = cbor2.dumps(["board.ok", 1, cbor2.CBORTag(ATTACHMENT_TAG, 0)])
    with pytest.raises(ProtocolError, match="not plain CBOR"):
        decode_message(body, [bytearray(b"x")])


def test_without_attachments_the_encoding_is_unchanged() -> None:
    msg = pm.TaskResults([pm.TaskResult(1, "ok", bytearray(b"abc"), [memoryview(b"de")])])
    body, attachments = encode_message_parts(msg, 1 << 62)
    assert attachments == [] and body == encode_message(msg)
    assert decode_message(body) == msg
