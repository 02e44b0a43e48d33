"""Hostile input for every decoder and sans-IO state machine that reads peer bytes.

One property per decoder: garbage — arbitrary bytes or CBOR, mutated or reshaped valid
encodings, truncations, announced sizes far beyond the data — is refused with the
decoder's documented error (a :class:`~p2prt.errors.ProtocolError` subclass for
everything a peer sends), never another exception type; memory stays bounded by the
limits and the bytes received; valid input round-trips. Hangs are caught by the test
timeout.

Each test runs through the ``fuzz`` fixture (tests/conftest.py): a few derandomized
examples in the default run, and a ``[slow]`` variant with many more (``-m slow``).
"""

from __future__ import annotations

import functools
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import strategies as st

from p2prt.dht._storage import check_value
from p2prt.errors import (
    CertificateError,
    DecryptionError,
    FrameTooLargeError,
    HandshakeError,
    KeyLoadError,
    MalformedFrameError,
    ProtocolError,
    TruncatedFrameError,
)
from p2prt.identity.certificate import NodeCertificate, NodeIdentity
from p2prt.identity.keys import SshKey, SshPublicKey, generate_ed25519
from p2prt.wire import peer as pm
from p2prt.wire.attachments import ATTACHED_FLAG, AttachmentSink, MessageDecoder, encode_parts
from p2prt.wire.board import Address, LeaseTicket
from p2prt.wire.cipher import TAG_SIZE, CipherState
from p2prt.wire.control import Versions
from p2prt.wire.frames import DEFAULT_MAX_FRAME_SIZE, FRAME_HEADER, LARGE_FRAME, NOISE_HEADER, FrameDecoder
from p2prt.wire.handshake import HandshakeState, NoiseHandshake
from p2prt.wire.messages import Message, decode_message, encode_message, encode_message_parts
from p2prt.wire.records import ObjectLocation, PeerRecord, decode_record, encode_record, verify_record
from p2prt.worker import _execproto as ep

from .strategies import ANY_CBOR, MESSAGE_TYPES, chunked, mutated, reshaped, strategy_for

pytestmark = pytest.mark.timeout(120)

CUTS = st.lists(st.integers(min_value=0, max_value=2000), max_size=12)
"""Where a byte stream is cut into the reads that deliver it."""


def messages() -> st.SearchStrategy[Message]:
    """A valid message of any registered type."""
    return st.sampled_from(MESSAGE_TYPES).flatmap(strategy_for)


def refixed(msg: Message) -> None:
    """A decoded message is a fixpoint of encode/decode (compared as bytes: NaN != NaN)."""
    encoded = encode_message(msg)
    assert encode_message(decode_message(encoded)) == encoded


def only_protocol_errors(decode: Callable[[], Any]) -> Any:
    """``decode()``, or None when it raised a ProtocolError (anything else propagates)."""
    try:
        return decode()
    except ProtocolError:
        return None


# -- frames ---------------------------------------------------------------------------


def reference_frames(data: bytes, header: struct.Struct, limit: int) -> tuple[list[bytes], type[ProtocolError] | None]:
    """What any frame decoder must make of the whole stream ``data``: its frames, then
    FrameTooLargeError at a header over ``limit``, or TruncatedFrameError at a partial
    frame at the end, or nothing."""
    pos, out = 0, []
    while len(data) - pos >= header.size:
        (size,) = header.unpack_from(data, pos)
        if size > limit:
            return out, FrameTooLargeError
        if len(data) - pos - header.size < size:
            break
        out.append(data[pos + header.size : pos + header.size + size])
        pos += header.size + size
    return out, TruncatedFrameError if pos < len(data) else None


def frame_pieces(header: struct.Struct) -> st.SearchStrategy[bytes]:
    valid = st.binary(max_size=300).map(lambda b: header.pack(len(b)) + b)
    large = st.integers(min_value=LARGE_FRAME + 1, max_value=LARGE_FRAME + 4000).map(
        lambda n: header.pack(n) + bytes(n)
    )
    bare_header = st.integers(min_value=0, max_value=(1 << (8 * header.size)) - 1).map(header.pack)
    pieces = [valid, valid, bare_header, st.binary(max_size=40)]
    return st.one_of(*pieces, large) if header is FRAME_HEADER else st.one_of(*pieces)


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[struct.Struct, int, bytes, list[int]]:
    header = draw(st.sampled_from([FRAME_HEADER, NOISE_HEADER]))
    # A body over LARGE_FRAME is received into a buffer of its announced size, allocated
    # when its header arrives: bounded by the limit, which therefore stays small here.
    limit = draw(st.sampled_from([0, 1, 17, 300, 65535, LARGE_FRAME + 2000, -5]))
    if header is NOISE_HEADER:
        limit = draw(st.sampled_from([limit, DEFAULT_MAX_FRAME_SIZE, 1 << 40]))  # clamped to 65,535
    data = b"".join(draw(st.lists(frame_pieces(header), max_size=6)))
    return header, limit, data, draw(CUTS)


def test_frame_decoder_matches_the_reference_under_any_chunking(fuzz: Any) -> None:
    def check(case: tuple[struct.Struct, int, bytes, list[int]]) -> None:
        header, limit, data, cuts = case
        decoder = FrameDecoder(limit, header)
        expected, error = reference_frames(data, header, decoder.max_frame_size)
        got: list[bytes] = []
        raised: ProtocolError | None = None
        try:
            for chunk in chunked(data, cuts):
                decoder.feed(chunk)
                while (frame := decoder.next_frame()) is not None:
                    got.append(frame)
                # Memory: at most one partial frame waits after the complete ones are taken.
                assert decoder.buffered <= header.size + decoder.max_frame_size
            decoder.check_eof()
        except ProtocolError as exc:
            raised = exc
        assert got == expected
        assert (None if raised is None else type(raised)) is error, (raised, error)

    fuzz(frame_streams(), check, default=150, slow=10_000)


# -- frames with attachments ---------------------------------------------------------


class _Sink(AttachmentSink):
    """Collects what arrives (memory = bytes received, as a memory file's would be)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data = bytearray()

    def write(self, data: memoryview) -> None:
        assert len(self.data) + len(data) <= self.size
        self.data += data

    def finish(self) -> bytes:
        assert len(self.data) == self.size
        return bytes(self.data)


@dataclass
class _Feeder:
    """Feeds a MessageDecoder and checks each allocation it asks for: within the limit,
    and only once everything allocated before has arrived (no allocation ahead of data)."""

    limit: int
    fed: int = 0
    allocated: int = 0

    def allocate(self, size: int) -> bytearray | _Sink:
        assert 0 <= size <= self.limit
        assert self.allocated <= self.fed, "allocated ahead of the bytes received"
        self.allocated += size
        return bytearray(size) if size < 4096 else _Sink(size)


def attachment_pieces() -> st.SearchStrategy[bytes]:
    bodies = st.one_of(st.binary(max_size=60), messages().map(encode_message))
    valid = st.tuples(bodies, st.lists(st.binary(max_size=200), max_size=3)).map(
        lambda t: b"".join(bytes(p) for p in encode_parts(t[0], list(t[1])))
    )
    big = st.integers(min_value=4096, max_value=20_000).map(lambda n: b"".join(encode_parts(b"\x80", [bytes(n)])))
    hostile_header = st.tuples(
        st.integers(min_value=0, max_value=(1 << 31) - 1),
        st.integers(min_value=0, max_value=0xFFFF),
        st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), max_size=4),
    ).map(lambda t: FRAME_HEADER.pack(ATTACHED_FLAG | t[0]) + struct.pack(">H", t[1]) + b"".join(struct.pack(">Q", s) for s in t[2]))
    return st.one_of(valid, valid, big, hostile_header, st.binary(max_size=40))


@st.composite
def attachment_streams(draw: st.DrawFn) -> tuple[int, int, bytes, list[int], bool]:
    max_frame = draw(st.sampled_from([0, 10, 300, 1 << 20]))
    limit = draw(st.sampled_from([0, 1, 500, 1 << 20, 1 << 40]))
    data = b"".join(draw(st.lists(attachment_pieces(), max_size=5)))
    return max_frame, limit, data, draw(CUTS), draw(st.booleans())


def test_attachment_decoder_refuses_garbage_and_allocates_only_what_arrives(fuzz: Any) -> None:
    def check(case: tuple[int, int, bytes, list[int], bool]) -> None:
        max_frame, limit, data, cuts, direct = case
        feeder = _Feeder(limit)
        decoder = MessageDecoder(max_frame, limit, feeder.allocate)
        frames: list[tuple[bytes, list[Any]]] = []
        try:
            for chunk in chunked(data, cuts):
                view = memoryview(chunk)
                while view:
                    target = decoder.attachment_view() if direct else None
                    n = len(view) if target is None else min(len(target), len(view))
                    feeder.fed += n
                    if target is None:
                        decoder.feed(view)
                    else:
                        target[:n] = view[:n]
                        decoder.advance(n)
                    view = view[n:]
                    frames += decoder.frames()
            decoder.check_eof()
        except ProtocolError:
            pass
        for body, attachments in frames:
            assert len(body) <= max_frame and sum(len(a) for a in attachments) <= limit
            msg = only_protocol_errors(lambda: decode_message(body, attachments))  # noqa: B023
            if msg is not None:
                refixed(msg)

    fuzz(attachment_streams(), check, default=150, slow=10_000)


def test_valid_attachment_frames_round_trip_under_any_chunking(fuzz: Any) -> None:
    """The same decoder on valid input only: everything comes out as it went in."""

    @st.composite
    def case(draw: st.DrawFn) -> tuple[list[tuple[bytes, list[bytes]]], list[int], bool]:
        frames = draw(st.lists(st.tuples(st.binary(max_size=80), st.lists(st.binary(max_size=5000), max_size=3)), max_size=4))
        return frames, draw(CUTS), draw(st.booleans())

    def check(value: tuple[list[tuple[bytes, list[bytes]]], list[int], bool]) -> None:
        frames, cuts, direct = value
        data = b"".join(bytes(p) for body, atts in frames for p in encode_parts(body, list(atts)))
        feeder = _Feeder(1 << 20, fed=len(data))
        decoder = MessageDecoder(1 << 20, 1 << 20, feeder.allocate)
        got: list[tuple[bytes, list[Any]]] = []
        for chunk in chunked(data, cuts):
            view = memoryview(chunk)
            while view:
                target = decoder.attachment_view() if direct else None
                n = len(view) if target is None else min(len(target), len(view))
                if target is None:
                    decoder.feed(view)
                else:
                    target[:n] = view[:n]
                    decoder.advance(n)
                view = view[n:]
                got += decoder.frames()
        decoder.check_eof()
        assert [(b, [bytes(a) for a in atts]) for b, atts in got] == [(b, list(atts)) for b, atts in frames]

    fuzz(case(), check, default=100, slow=4_000)


# -- messages -------------------------------------------------------------------------


def test_truncated_or_extended_messages_are_malformed(fuzz: Any) -> None:
    @st.composite
    def case(draw: st.DrawFn) -> tuple[bytes, int, bytes]:
        encoded = encode_message(draw(messages()))
        return encoded, draw(st.integers(min_value=0, max_value=len(encoded) - 1)), draw(st.binary(min_size=1, max_size=8))

    def check(value: tuple[bytes, int, bytes]) -> None:
        encoded, cut, junk = value
        with pytest.raises(MalformedFrameError):
            decode_message(encoded[:cut])
        with pytest.raises(MalformedFrameError):
            decode_message(encoded + junk)

    fuzz(case(), check, default=150, slow=8_000)


def test_reshaped_messages_raise_only_protocol_errors(fuzz: Any) -> None:
    """Valid messages with one node of their CBOR tree replaced, removed, wrapped or
    given a sibling: reaches the field checks that byte flips rarely get past."""
    structures = messages().map(lambda m: cbor2.loads(encode_message(m)))

    def check(structure: Any) -> None:
        msg = only_protocol_errors(lambda: decode_message(cbor2.dumps(structure)))
        if msg is not None:
            refixed(msg)

    fuzz(reshaped(structures), check, default=200, slow=10_000)


def test_mutated_messages_raise_only_protocol_errors(fuzz: Any) -> None:
    def check(data: bytes) -> None:
        msg = only_protocol_errors(lambda: decode_message(data))
        if msg is not None:
            refixed(msg)

    fuzz(mutated(messages().map(encode_message), max_edits=6), check, default=150, slow=8_000)


_MAJOR = st.sampled_from([2, 3, 4, 5])  # byte string, text, array, map
_HUGE_HEADS = st.one_of(
    st.tuples(_MAJOR, st.integers(min_value=1 << 16, max_value=(1 << 32) - 1)).map(
        lambda t: bytes([t[0] << 5 | 26]) + t[1].to_bytes(4, "big")
    ),
    st.tuples(_MAJOR, st.integers(min_value=1 << 32, max_value=(1 << 64) - 1)).map(
        lambda t: bytes([t[0] << 5 | 27]) + t[1].to_bytes(8, "big")
    ),
)
"""CBOR heads announcing 65,536 to 2^64 - 1 bytes or items."""


def test_announced_sizes_far_beyond_the_data_allocate_nothing(fuzz: Any) -> None:
    """A byte string, text, array or map announcing up to 2^64 items, anywhere in a
    message: refused at once, with memory bounded by the input (traced)."""

    @st.composite
    def case(draw: st.DrawFn) -> bytes:
        encoded = encode_message(draw(messages()))
        pos = draw(st.integers(min_value=0, max_value=len(encoded)))
        return encoded[:pos] + draw(_HUGE_HEADS) + draw(st.binary(max_size=30))

    def check(data: bytes) -> None:
        tracemalloc.start()
        try:
            only_protocol_errors(lambda: decode_message(data))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024 + 64 * len(data), f"decoding {len(data)} bytes used {peak} bytes"

    fuzz(case(), check, default=60, slow=4_000)


def _with_buffers() -> list[type[Message]]:
    return [pm.SubmitTasks, pm.TaskResults, pm.NestedValues, pm.FetchedObjects]


def test_attachments_round_trip_and_a_missing_or_extra_one_is_malformed(fuzz: Any) -> None:
    @st.composite
    def case(draw: st.DrawFn) -> tuple[Message, int, str]:
        msg = draw(st.sampled_from(_with_buffers()).flatmap(strategy_for))
        return msg, draw(st.sampled_from([0, 1, 8, 40])), draw(st.sampled_from(["keep", "drop", "extra"]))

    def check(value: tuple[Message, int, str]) -> None:
        msg, attach_min, change = value
        body, attachments = encode_message_parts(msg, attach_min)
        attachments = [bytes(a) for a in attachments]
        if change == "keep":
            assert decode_message(body, attachments) == msg
        elif change == "drop" and attachments:
            with pytest.raises(MalformedFrameError):
                decode_message(body, attachments[:-1])
        elif change == "extra":
            with pytest.raises(MalformedFrameError):
                decode_message(body, [*attachments, b"extra"])

    fuzz(case(), check, default=100, slow=4_000)


# -- the Noise handshake --------------------------------------------------------------

VERSIONS = Versions("0.1.0", "3.11", "3.0.0")


@functools.cache
def _identity(user: str) -> NodeIdentity:
    return NodeIdentity.create(generate_ed25519(comment=user), user)


_LEG_ACTIONS = st.sampled_from(["deliver", "deliver", "chunks", "mutate", "junk_before", "junk_after", "replace"])


_JUNK = st.one_of(st.binary(max_size=80), st.binary(max_size=200).map(lambda b: NOISE_HEADER.pack(len(b)) + b))


def _transmit(hs: NoiseHandshake, data: bytes, action: str, draw: st.DataObject) -> tuple[bytes, bytes]:
    """Deliver ``data`` as ``action`` says; returns (reply, the bytes delivered).
    (The message depends on fresh ephemeral keys, so changes to it are drawn on the spot.)"""
    if action == "chunks":
        return b"".join(hs.receive_data(c) for c in chunked(data, draw.draw(CUTS))), data
    if action == "mutate":
        data = draw.draw(mutated(st.just(data)))
    elif action == "junk_before":
        data = draw.draw(_JUNK) + data
    elif action == "junk_after":
        data = data + draw.draw(_JUNK)
    elif action == "replace":
        data = draw.draw(_JUNK)
    return hs.receive_data(data), data


def test_handshake_under_a_hostile_network(fuzz: Any) -> None:
    """Both sides of a handshake while the network mutates, splits, prefixes, extends or
    replaces each of its messages: every failure is a ProtocolError and leaves the side
    FAILED for good; a side that completes knows the genuine other side; an untouched
    handshake completes with working ciphers."""
    alice, bob = _identity("alice"), _identity("bob")

    def check(draw: st.DataObject) -> None:
        script = [draw.draw(_LEG_ACTIONS) for _ in range(4)]
        init = NoiseHandshake(alice, initiator=True, versions=VERSIONS)
        resp = NoiseHandshake(bob, initiator=False, versions=VERSIONS)
        data = init.initiate()
        receivers = [resp, init, resp, init]
        sent, delivered = [b""] * 4, [b""] * 4
        for leg, (action, hs) in enumerate(zip(script, receivers, strict=True)):
            sent[leg] = data
            try:
                data, delivered[leg] = _transmit(hs, data, action, draw)
            except ProtocolError:
                assert hs.state is HandshakeState.FAILED
                with pytest.raises(HandshakeError):
                    hs.receive_data(b"\x00\x00")
                break
            if leg == 2 and resp.state is HandshakeState.DECIDING:
                data = resp.accept()
            if not data and leg < 3:
                break  # waiting for more bytes that will never come
        # A side that completed read the genuine last message, intact; whatever came
        # after it is kept for the transport.
        for hs, other, leg in ((resp, alice, 2), (init, bob, 3)):
            if hs.state is HandshakeState.DONE:
                assert hs.peer is not None and hs.peer.certificate == other.certificate
                assert delivered[leg].startswith(sent[leg])
                assert hs.leftover == delivered[leg][len(sent[leg]) :]
        if all(action in ("deliver", "chunks") for action in script):
            assert init.complete and resp.complete
            (i_send, i_recv), (r_send, r_recv) = init.ciphers(), resp.ciphers()
            assert r_recv.decrypt(i_send.encrypt(b"ping")) == b"ping"
            assert i_recv.decrypt(r_send.encrypt(b"pong")) == b"pong"

    fuzz(st.data(), check, default=40, slow=4_000)


def test_a_responder_refuses_arbitrary_first_messages(fuzz: Any) -> None:
    bob = _identity("bob")

    def check(value: tuple[bytes, list[int]]) -> None:
        data, cuts = value
        resp = NoiseHandshake(bob, initiator=False, versions=VERSIONS)
        try:
            for chunk in chunked(data, cuts):
                reply = resp.receive_data(chunk)
                assert not reply or resp.state is HandshakeState.SENT_2
        except ProtocolError:
            assert resp.state is HandshakeState.FAILED

    framed = st.binary(max_size=120).map(lambda b: NOISE_HEADER.pack(len(b)) + b)
    stream = st.lists(st.one_of(framed, st.binary(max_size=70)), max_size=4).map(b"".join)
    fuzz(st.tuples(stream, CUTS), check, default=100, slow=5_000)


# -- transport cipher -----------------------------------------------------------------


@st.composite
def cipher_cases(draw: st.DrawFn) -> tuple[list[bytes], int, bytes, bool]:
    plaintexts = draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    index = draw(st.integers(min_value=0, max_value=len(plaintexts) - 1))
    key = draw(st.binary(min_size=32, max_size=32))
    sender = CipherState(key)
    genuine = [sender.encrypt(p) for p in plaintexts]
    how = draw(st.sampled_from(["mutate", "random", "replay", "next", "swap_key"]))
    if how == "mutate":
        bad = draw(mutated(st.just(genuine[index])))
    elif how == "random":
        bad = draw(st.binary(max_size=250))
    elif how == "replay":
        bad = genuine[index - 1] if index else CipherState(key, 1).encrypt(plaintexts[0])
    elif how == "next":
        bad = CipherState(key, index + 1).encrypt(plaintexts[index])
    else:
        bad = CipherState(bytes(32) if key != bytes(32) else b"\x01" * 32, index).encrypt(plaintexts[index])
    return [key, *plaintexts], index, bad, draw(st.booleans())


def test_tampered_ciphertext_is_a_decryption_error_and_the_nonce_stays(fuzz: Any) -> None:
    def check(case: tuple[list[bytes], int, bytes, bool]) -> None:
        (key, *plaintexts), index, bad, into = case
        sender, receiver = CipherState(key), CipherState(key)
        genuine = [sender.encrypt(p) for p in plaintexts]
        for p, c in zip(plaintexts[:index], genuine[:index], strict=True):
            assert receiver.decrypt(c) == p
        if bad != genuine[index]:
            with pytest.raises(DecryptionError):
                if into and len(bad) >= TAG_SIZE:
                    receiver.decrypt_into(bad, memoryview(bytearray(len(bad) - TAG_SIZE)))
                else:
                    receiver.decrypt(bad)
        for p, c in zip(plaintexts[index:], genuine[index:], strict=True):
            assert receiver.decrypt(c) == p

    fuzz(cipher_cases(), check, default=100, slow=8_000)


# -- DHT records ----------------------------------------------------------------------


@functools.cache
def _records() -> tuple[float, list[PeerRecord | ObjectLocation]]:
    now = time.time()
    ident = _identity("alice")
    return now, [
        PeerRecord.create(ident, [Address("192.0.2.7", 7000), Address("::1", 1)], Address("198.51.100.1", 9), seq=5, ttl=3600, now=now),
        PeerRecord.create(ident, [], None, seq=1, ttl=60, now=now),
        ObjectLocation.create(ident, b"\x01" * 20, 1 << 30, seq=7, ttl=3600, now=now),
        ObjectLocation.create(ident, b"o", 0, seq=8, ttl=3600, removed=True, now=now),
    ]


def test_records_from_hostile_nodes_raise_only_protocol_errors(fuzz: Any) -> None:
    """Mutated or reshaped records: decoding and verification raise ProtocolError
    subclasses only, and whatever verifies is the record its author signed."""
    now, records = _records()
    originals = {encode_record(rec) for rec in records}
    encoded = st.sampled_from(records).map(encode_record)
    data = st.one_of(
        mutated(encoded),
        reshaped(encoded.map(cbor2.loads)).map(cbor2.dumps),
        st.binary(max_size=200),
    )

    def check(value: bytes) -> None:
        rec = only_protocol_errors(lambda: decode_record(value))
        if rec is None:
            return
        if only_protocol_errors(lambda: verify_record(rec, now=now + 1)) is not None:
            assert encode_record(rec) in originals

    fuzz(data, check, default=100, slow=6_000)


def test_dht_values_of_any_shape_raise_only_protocol_errors(fuzz: Any) -> None:
    now, records = _records()
    keys = st.sampled_from([rec.key for rec in records] + [bytes(20)])
    values = st.one_of(ANY_CBOR, st.sampled_from(records).map(encode_record))

    def check(case: tuple[bytes, Any]) -> None:
        key, value = case
        only_protocol_errors(lambda: check_value(key, value, now=now + 1))

    fuzz(st.tuples(keys, values), check, default=100, slow=4_000)


# -- lease tickets ----------------------------------------------------------------------


@functools.cache
def _ticket() -> tuple[SshKey, LeaseTicket]:
    board = generate_ed25519(comment="board")
    ticket = LeaseTicket(
        "L1", "alice/friends", bytes(_identity("alice").peer_id), "alice", bytes(_identity("bob").peer_id), 2, {"gpu": 1.0}, 1e10
    )
    return board, ticket.signed(board)


def test_lease_tickets_decode_or_fail_cleanly_and_only_genuine_ones_verify(fuzz: Any) -> None:
    """An Attach with a mutated or reshaped ticket (as a worker receives it): decoding
    raises ProtocolError only; verifying never raises; only the board's ticket verifies."""
    board, ticket = _ticket()
    encoded = encode_message(pm.Attach(7, ticket))
    data = st.one_of(mutated(st.just(encoded)), reshaped(st.just(cbor2.loads(encoded))).map(cbor2.dumps))

    def check(value: bytes) -> None:
        msg = only_protocol_errors(lambda: decode_message(value))
        if not isinstance(msg, pm.Attach):
            return
        if msg.ticket.verify(board.public):
            assert msg.ticket.signed_bytes() == ticket.signed_bytes() and msg.ticket.signature == ticket.signature

    fuzz(data, check, default=100, slow=6_000)


# -- certificates and SSH keys -----------------------------------------------------------


@functools.cache
def _signers() -> list[SshKey]:
    return [
        generate_ed25519(comment="ed"),
        SshKey(ec.generate_private_key(ec.SECP256R1()), "p256"),
        SshKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa"),
    ]


@functools.cache
def _certified() -> list[NodeIdentity]:
    return [NodeIdentity.create(key, f"user{i}") for i, key in enumerate(_signers())]


def test_node_certificates_fail_only_with_certificate_errors(fuzz: Any) -> None:
    """The certificate in a handshake's Hello, reshaped or with mutated fields: parsing
    and verifying raise CertificateError subclasses only; what verifies is genuine."""
    idents = _certified()
    now = time.time()
    wires = st.sampled_from(idents).map(lambda i: i.certificate.to_wire())

    @st.composite
    def field_mutated(draw: st.DrawFn) -> list[Any]:
        wire = list(draw(wires))
        index = draw(st.integers(min_value=0, max_value=len(wire) - 1))
        if isinstance(wire[index], bytes):
            wire[index] = draw(mutated(st.just(wire[index])))
        elif isinstance(wire[index], str):
            wire[index] = draw(mutated(st.just(wire[index].encode()))).decode("utf-8", "replace")
        else:
            wire[index] = draw(st.integers(min_value=-(2**63), max_value=2**64 - 1))
        return wire

    def check(wire: Any) -> None:
        try:
            cert = NodeCertificate.from_wire(wire)
            fingerprint = cert.fingerprint
            static = next((i.static_public for i in idents if i.certificate.fingerprint == fingerprint), None)
            cert.verify(static_key=static, now=now)
        except CertificateError:
            return
        assert any(cert == i.certificate for i in idents)

    fuzz(st.one_of(field_mutated(), reshaped(wires)), check, default=60, slow=4_000)


_KEY_TYPES = ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-dss"]


@st.composite
def key_lines(draw: st.DrawFn) -> str | bytes:
    """OpenSSH public key lines: mutated genuine ones, a genuine blob under another type
    name, a mutated blob re-encoded, or arbitrary text."""
    import base64

    key = draw(st.sampled_from(_signers())).public
    how = draw(st.sampled_from(["text", "blob", "type", "raw"]))
    if how == "text":
        return draw(mutated(st.just(key.line.encode()))).decode("latin-1")
    if how == "blob":
        return f"{key.key_type} {base64.b64encode(draw(mutated(st.just(key.blob)))).decode()}"
    if how == "type":
        return f"{draw(st.sampled_from(_KEY_TYPES))} {base64.b64encode(key.blob).decode()} comment"
    return draw(st.one_of(st.text(max_size=80), st.binary(max_size=80)))


def test_ssh_public_keys_fail_only_with_key_load_errors(fuzz: Any) -> None:
    def check(line: str | bytes) -> None:
        try:
            key = SshPublicKey.parse(line)
        except KeyLoadError:
            return
        assert key.fingerprint.startswith("SHA256:")
        assert key.verify(b"\x00" * 64, b"data") is False

    fuzz(key_lines(), check, default=150, slow=6_000)


# -- the executor pipe ----------------------------------------------------------------

# The pipe joins a worker and its own executors (same user, same machine): it carries
# pickles by design, trusted like the code the executors run. Garbage frames still must
# not break the reader; the opcodes that build objects or import names, and the memo
# stores (which size the unpickler's memo by their index), are left out of them.
_PICKLE_OPCODES_LEFT_OUT = b"cipr\x93\x81\x92Rbo\x94"

_EXEC_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.lists(children, max_size=3).map(tuple),
    max_leaves=8,
)


@st.composite
def exec_streams(draw: st.DrawFn) -> tuple[list[tuple[Any, bytes]], list[int]]:
    """Frames, each with what the reader must return for it (None: anything but raise)."""
    frames: list[tuple[Any, bytes]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        kind = draw(st.sampled_from(["valid", "valid", "garbage", "shared"]))
        if kind == "valid":
            message = (draw(st.sampled_from(["res", "out", "ready", "req", "back"])), *draw(st.lists(_EXEC_VALUES, max_size=3)))
            frames.append((message, ep.encode(message)))
        else:
            body = draw(st.binary(max_size=60)).translate(None, _PICKLE_OPCODES_LEFT_OUT)
            flag = 1 << 31 if kind == "shared" else 0
            frames.append((None, (len(body) | flag).to_bytes(4, "big") + body))
    return frames, draw(CUTS)


def test_executor_pipe_reader_survives_garbage_frames(fuzz: Any) -> None:
    def check(case: tuple[list[tuple[Any, bytes]], list[int]]) -> None:
        frames, cuts = case
        reader = ep.FrameReader()
        got: list[Any] = []
        for chunk in chunked(b"".join(f for _, f in frames), cuts):
            reader.feed(chunk)
            got += reader.messages()
            assert reader.wanted >= 1
        assert len(got) == len(frames)
        for (expected, _), value in zip(frames, got, strict=True):
            if expected is not None:
                assert value == expected
        reader.close()

    fuzz(exec_streams(), check, default=100, slow=6_000)


def test_executor_pipe_reader_takes_any_bytes(fuzz: Any) -> None:
    def check(case: tuple[bytes, list[int]]) -> None:
        data, cuts = case
        reader = ep.FrameReader()
        for chunk in chunked(data, cuts):
            reader.feed(chunk)
            assert isinstance(reader.messages(), list)
            assert reader.wanted >= 1
        reader.close()

    data = st.binary(max_size=300).map(lambda b: b.translate(None, _PICKLE_OPCODES_LEFT_OUT))
    fuzz(st.tuples(data, CUTS), check, default=100, slow=4_000)
