"""The Noise XX handshake state machine, two of them joined in memory.

:class:`Pair` plays the part of h11's ``ConnectionPair``: an initiator and a responder
:class:`NoiseHandshake`, and methods that hand one side's bytes to the other and return
what it answers. Everything is synchronous; no socket, no clock (``now=`` is fixed).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import p2prt.wire.handshake as handshake_module
from p2prt.errors import (
    BadCertificateSignatureError,
    CertificateError,
    CertificateExpiredError,
    CertificateKeyMismatchError,
    ConnectionRejectedError,
    DecryptionError,
    HandshakeError,
    P2prtError,
    PeerIdMismatchError,
    ProtocolError,
    VersionMismatchError,
)
from p2prt.identity.certificate import CERT_LIFETIME, CLOCK_SKEW, NodeIdentity
from p2prt.identity.keys import SshKey, generate_ed25519
from p2prt.wire.cipher import CipherState
from p2prt.wire.control import Hello, Versions
from p2prt.wire.frames import NOISE_HEADER, encode_frame
from p2prt.wire.handshake import HandshakeState, NoiseHandshake, local_versions
from p2prt.wire.messages import encode_message

NOW = 1_700_000_000.0
VERSIONS_I = Versions("0.1.0", "3.11", "3.0.0")
VERSIONS_R = Versions("0.1.1", "3.11", "3.1.0")


def fixed_now(t: float = NOW + 60) -> Callable[[], float]:
    return lambda: t


class Pair:
    """An initiator and a responder handshake joined in memory."""

    def __init__(
        self,
        initiator: NodeIdentity,
        responder: NodeIdentity,
        *,
        initiator_kwargs: dict[str, Any] | None = None,
        responder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ikw: dict[str, Any] = {"now": fixed_now(), "versions": VERSIONS_I, **(initiator_kwargs or {})}
        rkw: dict[str, Any] = {"now": fixed_now(), "versions": VERSIONS_R, **(responder_kwargs or {})}
        self.initiator = NoiseHandshake(initiator, initiator=True, **ikw)
        self.responder = NoiseHandshake(responder, initiator=False, **rkw)

    @staticmethod
    def deliver(side: NoiseHandshake, data: bytes, chunk: int | None = None) -> bytes:
        """Feed ``data`` to ``side`` (in pieces of ``chunk`` bytes); return all it sends back."""
        if not data:
            return side.receive_data(data)
        size = chunk or len(data)
        return b"".join(side.receive_data(data[i : i + size]) for i in range(0, len(data), size))

    def to_responder(self, data: bytes, chunk: int | None = None) -> bytes:
        return self.deliver(self.responder, data, chunk)

    def to_initiator(self, data: bytes, chunk: int | None = None) -> bytes:
        return self.deliver(self.initiator, data, chunk)

    def messages_1_to_3(self, chunk: int | None = None) -> tuple[bytes, bytes, bytes]:
        """Run up to the responder's decision; return messages 1, 2, 3."""
        m1 = self.initiator.initiate()
        m2 = self.to_responder(m1, chunk)
        m3 = self.to_initiator(m2, chunk)
        assert self.to_responder(m3, chunk) == b""
        assert self.responder.state is HandshakeState.DECIDING
        return m1, m2, m3

    def handshake(self, chunk: int | None = None) -> list[bytes]:
        """The whole handshake, accepted; return the four messages."""
        m1, m2, m3 = self.messages_1_to_3(chunk)
        m4 = self.responder.accept()
        assert self.to_initiator(m4, chunk) == b""
        assert self.initiator.complete and self.responder.complete
        return [m1, m2, m3, m4]


# -- identities -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, SshKey]:
    return {name: generate_ed25519(name) for name in ("alice", "bob", "carol", "mallory")}


@pytest.fixture(scope="module")
def alice(keys: dict[str, SshKey]) -> NodeIdentity:
    return NodeIdentity.create(keys["alice"], "alice", now=NOW)


@pytest.fixture(scope="module")
def bob(keys: dict[str, SshKey]) -> NodeIdentity:
    return NodeIdentity.create(keys["bob"], "bob", now=NOW)


@pytest.fixture(scope="module")
def carol(keys: dict[str, SshKey]) -> NodeIdentity:
    return NodeIdentity.create(keys["carol"], "carol", now=NOW)


def badly_signed(identity: NodeIdentity, signer: SshKey) -> NodeIdentity:
    """``identity``'s certificate (naming its own SSH key) but signed by ``signer``."""
    cert = identity.certificate
    forged = dataclasses.replace(cert, signature=signer.sign(cert.signed_bytes()))
    assert forged.ssh_public_key == cert.ssh_public_key != signer.public.line
    return NodeIdentity(identity.static_private, forged, identity.signing_private)


def wrong_static_key(identity: NodeIdentity, other: NodeIdentity) -> NodeIdentity:
    """``identity``'s static private key presented with ``other``'s (valid) certificate."""
    return NodeIdentity(identity.static_private, other.certificate, identity.signing_private)


def flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << (pos % 8)
    return bytes(out)


def frame(body: bytes) -> bytes:
    return encode_frame(body, NOISE_HEADER)


def is_low_order(point: bytes) -> bool:
    try:
        x25519.X25519PrivateKey.generate().exchange(x25519.X25519PublicKey.from_public_bytes(point))
    except ValueError:
        return True
    return False


# -- success --------------------------------------------------------------------------


def test_success(alice: NodeIdentity, bob: NodeIdentity, keys: dict[str, SshKey]) -> None:
    pair = Pair(alice, bob)
    pair.handshake()
    i, r = pair.initiator, pair.responder
    assert i.state is r.state is HandshakeState.DONE
    assert i.peer is not None and r.peer is not None
    assert i.peer.user == "bob"
    assert r.peer.user == "alice"
    assert i.peer.fingerprint == keys["bob"].public.fingerprint == bob.certificate.fingerprint
    assert r.peer.fingerprint == keys["alice"].public.fingerprint
    assert i.peer.peer_id == bob.peer_id
    assert r.peer.peer_id == alice.peer_id
    assert i.peer.ssh_public_key == keys["bob"].public.line
    assert i.peer.kind == r.peer.kind == "user"
    assert i.peer.versions == VERSIONS_R
    assert r.peer.versions == VERSIONS_I
    assert i.peer.certificate == bob.certificate
    assert "bob" in str(i.peer)
    assert i.leftover == r.leftover == b""


def test_default_versions_are_the_local_ones(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob, initiator_kwargs={"versions": None}, responder_kwargs={"versions": None})
    pair.handshake()
    assert pair.initiator.peer is not None
    assert pair.initiator.peer.versions == local_versions()


def test_ciphers_work_both_ways(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.handshake()
    i_send, i_recv = pair.initiator.ciphers()
    r_send, r_recv = pair.responder.ciphers()
    for n in range(3):
        assert r_recv.decrypt(i_send.encrypt(b"to bob %d" % n)) == b"to bob %d" % n
        assert i_recv.decrypt(r_send.encrypt(b"to alice %d" % n)) == b"to alice %d" % n
    # Each direction has its own key.
    with pytest.raises(DecryptionError):
        i_recv.decrypt(i_send.encrypt(b"loop"))


def test_each_handshake_has_fresh_keys(alice: NodeIdentity, bob: NodeIdentity) -> None:
    first, second = Pair(alice, bob), Pair(alice, bob)
    first.handshake()
    second.handshake()
    with pytest.raises(DecryptionError):
        second.responder.ciphers()[1].decrypt(first.initiator.ciphers()[0].encrypt(b"replayed session"))


def test_messages_have_the_expected_shape(alice: NodeIdentity, bob: NodeIdentity) -> None:
    m1, m2, m3, m4 = Pair(alice, bob).handshake()
    for m in (m1, m2, m3, m4):
        assert NOISE_HEADER.unpack(m[:2])[0] == len(m) - 2
    assert len(m1) == 2 + 32  # a bare ephemeral key: no payload before keys exist
    assert b"alice" not in m3 and b"bob" not in m2  # certificates travel encrypted


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_small_chunks(alice: NodeIdentity, bob: NodeIdentity, chunk: int) -> None:
    pair = Pair(alice, bob)
    pair.handshake(chunk=chunk)
    assert pair.initiator.peer is not None and pair.initiator.peer.user == "bob"


def test_one_byte_chunks_answer_only_on_the_last_byte(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    m1 = pair.initiator.initiate()
    replies = [pair.responder.receive_data(m1[i : i + 1]) for i in range(len(m1))]
    assert all(r == b"" for r in replies[:-1])
    m2 = replies[-1]
    assert m2
    replies = [pair.initiator.receive_data(m2[i : i + 1]) for i in range(len(m2))]
    assert all(r == b"" for r in replies[:-1])
    assert replies[-1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_arbitrary_chunking(alice: NodeIdentity, bob: NodeIdentity, data: st.DataObject) -> None:
    pair = Pair(alice, bob)

    def deliver(side: NoiseHandshake, message: bytes) -> bytes:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
        points = [0, *cuts, len(message)]
        return b"".join(side.receive_data(message[a:b]) for a, b in itertools.pairwise(points))

    m2 = deliver(pair.responder, pair.initiator.initiate())
    m3 = deliver(pair.initiator, m2)
    assert deliver(pair.responder, m3) == b""
    assert deliver(pair.initiator, pair.responder.accept()) == b""
    assert pair.initiator.complete and pair.responder.complete


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_bytes_after_accept_are_leftover(alice: NodeIdentity, bob: NodeIdentity, chunk: int | None) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    accept = pair.responder.accept()
    r_send, _ = pair.responder.ciphers()
    early = frame(r_send.encrypt(b"first transport message")) + b"\x00"  # and a partial header
    assert pair.to_initiator(accept + early, chunk) == b""
    assert pair.initiator.complete
    assert pair.initiator.leftover == early
    _, i_recv = pair.initiator.ciphers()
    assert i_recv.decrypt(early[2:-1]) == b"first transport message"


@pytest.mark.parametrize("chunk", [None, 1])
def test_bytes_after_message_3_are_leftover(alice: NodeIdentity, bob: NodeIdentity, chunk: int | None) -> None:
    pair = Pair(alice, bob)
    m2 = pair.to_responder(pair.initiator.initiate())
    m3 = pair.to_initiator(m2)
    assert pair.to_responder(m3 + b"early", chunk) == b""
    assert pair.responder.state is HandshakeState.DECIDING
    assert pair.to_responder(b" and more") == b""  # while the application decides
    pair.to_initiator(pair.responder.accept())
    assert pair.responder.leftover == b"early and more"
    assert pair.initiator.leftover == b""


def test_expected_peer_id_that_matches(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(
        alice,
        bob,
        initiator_kwargs={"expected_peer_id": bob.peer_id},
        responder_kwargs={"expected_peer_id": alice.peer_id},
    )
    pair.handshake()


# -- the responder's decision ---------------------------------------------------------


def test_reject_reaches_the_initiator(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    reason = "alice is not a member of bob/gpus"
    notice = pair.responder.reject(reason, code="not-member")
    assert pair.responder.state is HandshakeState.CLOSED
    assert not pair.responder.complete
    with pytest.raises(ConnectionRejectedError) as exc:
        pair.to_initiator(notice)
    assert exc.value.reason == reason
    assert exc.value.code == "not-member"
    assert reason in str(exc.value)
    assert pair.initiator.state is HandshakeState.FAILED
    assert not pair.initiator.complete
    with pytest.raises(HandshakeError):
        pair.initiator.ciphers()
    with pytest.raises(HandshakeError):
        pair.responder.ciphers()


def test_reject_default_code(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    with pytest.raises(ConnectionRejectedError) as exc:
        pair.to_initiator(pair.responder.reject("no"))
    assert exc.value.code == "rejected"


def test_initiator_refuses_a_message_other_than_accept_or_reject(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    send = pair.responder._send  # the cipher accept() would use for message 4
    assert isinstance(send, CipherState)
    hello = frame(send.encrypt(encode_message(Hello(1, [], VERSIONS_R))))
    with pytest.raises(HandshakeError, match="Hello"):
        pair.to_initiator(hello)


def test_garbage_decision_is_a_protocol_error(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    send = pair.responder._send  # the cipher accept() would use for message 4
    assert isinstance(send, CipherState)
    with pytest.raises(ProtocolError):
        pair.to_initiator(frame(send.encrypt(b"\xff not cbor")))


# -- certificates ---------------------------------------------------------------------


def _fail_at_initiator(pair: Pair) -> P2prtError:
    """Run to message 2; the initiator's check of the responder must fail."""
    m2 = pair.to_responder(pair.initiator.initiate())
    with pytest.raises(P2prtError) as exc:
        pair.to_initiator(m2)
    assert pair.initiator.state is HandshakeState.FAILED
    return exc.value


def _fail_at_responder(pair: Pair) -> P2prtError:
    """Run to message 3; the responder's check of the initiator must fail."""
    m3 = pair.to_initiator(pair.to_responder(pair.initiator.initiate()))
    with pytest.raises(P2prtError) as exc:
        pair.to_responder(m3)
    assert pair.responder.state is HandshakeState.FAILED
    assert pair.responder.peer is None
    return exc.value


def test_bad_signature_seen_by_initiator(alice: NodeIdentity, bob: NodeIdentity, keys: dict[str, SshKey]) -> None:
    err = _fail_at_initiator(Pair(alice, badly_signed(bob, keys["mallory"])))
    assert isinstance(err, BadCertificateSignatureError)
    assert "bob" in str(err)


def test_bad_signature_seen_by_responder(alice: NodeIdentity, bob: NodeIdentity, keys: dict[str, SshKey]) -> None:
    err = _fail_at_responder(Pair(badly_signed(alice, keys["mallory"]), bob))
    assert isinstance(err, BadCertificateSignatureError)
    assert "alice" in str(err)


def _expired(key: SshKey, user: str) -> NodeIdentity:
    return NodeIdentity.create(key, user, lifetime=60, now=NOW - 3600)


def test_expired_seen_by_initiator(alice: NodeIdentity, keys: dict[str, SshKey]) -> None:
    err = _fail_at_initiator(Pair(alice, _expired(keys["bob"], "bob")))
    assert isinstance(err, CertificateExpiredError)
    assert "expired" in str(err)


def test_expired_seen_by_responder(bob: NodeIdentity, keys: dict[str, SshKey]) -> None:
    err = _fail_at_responder(Pair(_expired(keys["alice"], "alice"), bob))
    assert isinstance(err, CertificateExpiredError)


def test_expiry_follows_the_verifiers_clock(alice: NodeIdentity, bob: NodeIdentity) -> None:
    later = fixed_now(NOW + CERT_LIFETIME + 1)
    err = _fail_at_initiator(Pair(alice, bob, initiator_kwargs={"now": later}))
    assert isinstance(err, CertificateExpiredError)
    err = _fail_at_responder(Pair(alice, bob, responder_kwargs={"now": later}))
    assert isinstance(err, CertificateExpiredError)


def test_not_yet_valid_certificate(alice: NodeIdentity, bob: NodeIdentity) -> None:
    earlier = fixed_now(NOW - CLOCK_SKEW - 10)
    err = _fail_at_initiator(Pair(alice, bob, initiator_kwargs={"now": earlier}))
    assert isinstance(err, CertificateExpiredError)
    assert "not valid yet" in str(err)
    # Within the tolerated clock skew it passes.
    Pair(alice, bob, initiator_kwargs={"now": fixed_now(NOW - CLOCK_SKEW + 10)}).handshake()


def test_certificate_for_another_static_key_seen_by_initiator(
    alice: NodeIdentity, bob: NodeIdentity, carol: NodeIdentity
) -> None:
    err = _fail_at_initiator(Pair(alice, wrong_static_key(bob, carol)))
    assert isinstance(err, CertificateKeyMismatchError)


def test_certificate_for_another_static_key_seen_by_responder(
    alice: NodeIdentity, bob: NodeIdentity, carol: NodeIdentity
) -> None:
    err = _fail_at_responder(Pair(wrong_static_key(alice, carol), bob))
    assert isinstance(err, CertificateKeyMismatchError)


def test_peer_id_mismatch(alice: NodeIdentity, bob: NodeIdentity, carol: NodeIdentity) -> None:
    err = _fail_at_initiator(Pair(alice, bob, initiator_kwargs={"expected_peer_id": carol.peer_id}))
    assert isinstance(err, PeerIdMismatchError)
    assert carol.peer_id.short in str(err)
    assert bob.peer_id.short in str(err)


def test_peer_id_mismatch_at_the_responder(alice: NodeIdentity, bob: NodeIdentity, carol: NodeIdentity) -> None:
    err = _fail_at_responder(Pair(alice, bob, responder_kwargs={"expected_peer_id": carol.peer_id}))
    assert isinstance(err, PeerIdMismatchError)


def test_protocol_version_mismatch(alice: NodeIdentity, bob: NodeIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = Pair(alice, bob)
    m1 = pair.initiator.initiate()
    monkeypatch.setattr(handshake_module, "PROTO_VERSION", 99)  # only while the responder writes
    m2 = pair.to_responder(m1)
    monkeypatch.undo()
    with pytest.raises(VersionMismatchError, match="99"):
        pair.to_initiator(m2)


def _bad_initiators() -> list[Any]:
    return [
        pytest.param(lambda ids, keys: badly_signed(ids["alice"], keys["mallory"]), id="bad-signature"),
        pytest.param(lambda ids, keys: _expired(keys["alice"], "alice"), id="expired"),
        pytest.param(lambda ids, keys: wrong_static_key(ids["alice"], ids["carol"]), id="key-mismatch"),
    ]


@pytest.mark.parametrize("make", _bad_initiators())
def test_failure_notice_after_a_certificate_failure_at_message_3(
    make: Callable[[dict[str, NodeIdentity], dict[str, SshKey]], NodeIdentity],
    alice: NodeIdentity,
    bob: NodeIdentity,
    carol: NodeIdentity,
    keys: dict[str, SshKey],
) -> None:
    pair = Pair(make({"alice": alice, "carol": carol}, keys), bob)
    err = _fail_at_responder(pair)
    assert isinstance(err, CertificateError)
    notice = pair.responder.failure_notice(err)
    assert notice, "the responder has transport keys after message 3 and should tell the initiator"
    with pytest.raises(ConnectionRejectedError) as exc:
        pair.to_initiator(notice)
    assert exc.value.code == "certificate"
    assert "certificate" in exc.value.reason
    assert str(err) in exc.value.reason


def test_failure_notice_is_empty_without_keys(alice: NodeIdentity, bob: NodeIdentity, keys: dict[str, SshKey]) -> None:
    # The initiator never sends one; a responder before message 3 has no keys to send one with.
    pair = Pair(alice, badly_signed(bob, keys["mallory"]))
    err = _fail_at_initiator(pair)
    assert pair.initiator.failure_notice(err) == b""

    pair = Pair(alice, bob)
    with pytest.raises(ProtocolError) as exc:
        pair.to_responder(frame(b"\x01" * 40))
    assert pair.responder.failure_notice(exc.value) == b""

    pair = Pair(alice, bob)
    m3 = pair.to_initiator(pair.to_responder(pair.initiator.initiate()))
    with pytest.raises(DecryptionError) as exc2:
        pair.to_responder(flip(m3, 10))
    assert pair.responder.failure_notice(exc2.value) == b""


# -- tampering ------------------------------------------------------------------------


def _assert_never_completes(pair: Pair) -> None:
    assert not pair.initiator.complete
    assert pair.initiator.state is HandshakeState.FAILED
    with pytest.raises(HandshakeError):
        pair.initiator.ciphers()


def test_every_bit_flip_in_message_2_is_detected(alice: NodeIdentity, bob: NodeIdentity) -> None:
    length = len(Pair(alice, bob).handshake()[1])
    for pos in range(2, length):
        pair = Pair(alice, bob)
        m2 = pair.to_responder(pair.initiator.initiate())
        with pytest.raises(DecryptionError):
            pair.to_initiator(flip(m2, pos))
        assert pair.initiator.state is HandshakeState.FAILED, pos
        assert pair.initiator.peer is None
        _assert_never_completes(pair)


def test_every_bit_flip_in_message_3_is_detected(alice: NodeIdentity, bob: NodeIdentity) -> None:
    length = len(Pair(alice, bob).handshake()[2])
    for pos in range(2, length):
        pair = Pair(alice, bob)
        m3 = pair.to_initiator(pair.to_responder(pair.initiator.initiate()))
        with pytest.raises(DecryptionError):
            pair.to_responder(flip(m3, pos))
        assert pair.responder.state is HandshakeState.FAILED, pos
        assert pair.responder.peer is None
        with pytest.raises(HandshakeError):
            pair.responder.accept()


def test_every_bit_flip_in_message_4_is_detected(alice: NodeIdentity, bob: NodeIdentity) -> None:
    length = len(Pair(alice, bob).handshake()[3])
    for pos in range(2, length):
        pair = Pair(alice, bob)
        pair.messages_1_to_3()
        m4 = pair.responder.accept()
        with pytest.raises(DecryptionError):
            pair.to_initiator(flip(m4, pos))
        assert pair.initiator.state is HandshakeState.FAILED, pos
        _assert_never_completes(pair)


def test_every_bit_flip_in_the_reject_is_detected(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    pair.messages_1_to_3()
    length = len(pair.responder.reject("no"))
    for pos in range(2, length):
        pair = Pair(alice, bob)
        pair.messages_1_to_3()
        with pytest.raises(DecryptionError):
            pair.to_initiator(flip(pair.responder.reject("no"), pos))


def test_every_bit_flip_in_message_1_breaks_the_handshake(alice: NodeIdentity, bob: NodeIdentity) -> None:
    for pos in range(2, 2 + 32):
        pair = Pair(alice, bob)
        m1 = flip(pair.initiator.initiate(), pos)
        try:
            m2 = pair.to_responder(m1)
        except ProtocolError:
            continue  # refused outright: fine
        # The responder cannot tell; the initiator, reading message 2, can.
        with pytest.raises(ProtocolError) as exc:
            pair.to_initiator(m2)
        assert isinstance(exc.value, DecryptionError), (pos, exc.value)
        _assert_never_completes(pair)
        assert pair.responder.state is HandshakeState.SENT_2


# -- wrong use and garbage ------------------------------------------------------------


def test_methods_in_the_wrong_state(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    i, r = pair.initiator, pair.responder
    with pytest.raises(HandshakeError):
        r.initiate()  # responders do not initiate
    with pytest.raises(HandshakeError):
        r.accept()  # nothing to decide yet
    with pytest.raises(HandshakeError):
        r.reject("no")
    with pytest.raises(HandshakeError):
        i.accept()  # initiators never decide
    with pytest.raises(HandshakeError):
        i.ciphers()
    m1 = i.initiate()
    with pytest.raises(HandshakeError):
        i.initiate()  # only once
    m2 = pair.to_responder(m1)
    with pytest.raises(HandshakeError):
        r.accept()  # message 3 has not arrived
    m3 = pair.to_initiator(m2)
    with pytest.raises(HandshakeError):
        i.ciphers()  # waiting for the decision
    pair.to_responder(m3)
    with pytest.raises(HandshakeError):
        r.ciphers()  # deciding is not done
    with pytest.raises(HandshakeError):
        i.reject("no")
    m4 = r.accept()
    with pytest.raises(HandshakeError):
        r.accept()  # only once
    with pytest.raises(HandshakeError):
        r.reject("changed my mind")
    pair.to_initiator(m4)
    with pytest.raises(HandshakeError):
        i.initiate()
    assert i.complete and r.complete


def test_initiator_receiving_before_initiating(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    with pytest.raises(HandshakeError):
        pair.to_initiator(frame(b"\x01" * 32))
    assert pair.initiator.state is HandshakeState.FAILED


def test_message_1_replayed_as_message_3(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    m1 = pair.initiator.initiate()
    pair.to_responder(m1)
    with pytest.raises(ProtocolError):
        pair.to_responder(m1)


def test_message_2_replayed_into_another_handshake(alice: NodeIdentity, bob: NodeIdentity) -> None:
    first = Pair(alice, bob)
    m2 = first.to_responder(first.initiator.initiate())
    second = Pair(alice, bob)
    second.initiator.initiate()
    with pytest.raises(DecryptionError):
        second.to_initiator(m2)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x01" * 33, id="key-plus-payload"),
        pytest.param(b"\x07" * 200, id="long"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" + b"x" * 40, id="http"),
    ],
)
def test_garbage_message_1(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    with pytest.raises(HandshakeError):
        pair.to_responder(frame(body))
    assert pair.responder.state is HandshakeState.FAILED


LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def test_low_order_points_are_low_order() -> None:
    assert all(is_low_order(p) for p in LOW_ORDER_POINTS)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01" * 5, id="short"),
        pytest.param(b"\x01" * 31, id="one-byte-short"),
        *(pytest.param(p, id=f"low-order-{i}") for i, p in enumerate(LOW_ORDER_POINTS)),
    ],
)
def test_short_or_low_order_message_1(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    with pytest.raises(ProtocolError):
        pair.to_responder(frame(body))
    assert pair.responder.state is HandshakeState.FAILED


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x01" * 32, id="key-only"),
        pytest.param(b"\x02" * 80, id="key-and-short-static"),
        pytest.param(b"\x03" * 400, id="long"),
        pytest.param(LOW_ORDER_POINTS[0] + b"\x00" * 100, id="low-order-ephemeral"),
    ],
)
def test_garbage_message_2(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    pair.initiator.initiate()
    with pytest.raises(ProtocolError):
        pair.to_initiator(frame(body))
    assert pair.initiator.state is HandshakeState.FAILED


@pytest.mark.parametrize("body", [b"", b"\x01" * 10, b"\x01" * 31], ids=["empty", "short", "one-byte-short"])
def test_short_message_2(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    pair.initiator.initiate()
    with pytest.raises(ProtocolError):
        pair.to_initiator(frame(body))
    assert pair.initiator.state is HandshakeState.FAILED


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_arbitrary_message_1_raises_only_protocol_errors(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    try:
        m2 = pair.to_responder(frame(body))
    except ProtocolError:
        return
    assert len(body) == 32  # only a bare key is taken for message 1
    with pytest.raises(ProtocolError):
        pair.to_initiator(m2)  # which was not the initiator's key


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400))
def test_arbitrary_message_2_raises_only_protocol_errors(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    pair.initiator.initiate()
    with pytest.raises(ProtocolError):
        pair.to_initiator(frame(body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=300))
def test_arbitrary_message_3_raises_only_protocol_errors(alice: NodeIdentity, bob: NodeIdentity, body: bytes) -> None:
    pair = Pair(alice, bob)
    pair.to_initiator(pair.to_responder(pair.initiator.initiate()))
    with pytest.raises(ProtocolError):
        pair.to_responder(frame(body))


def test_a_failed_handshake_refuses_further_data(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    m2 = pair.to_responder(pair.initiator.initiate())
    with pytest.raises(DecryptionError):
        pair.to_initiator(flip(m2, 40))
    assert pair.initiator.state is HandshakeState.FAILED
    for data in (m2, b"", b"\x00"):
        with pytest.raises(HandshakeError, match="failed"):
            pair.to_initiator(data)
        assert pair.initiator.state is HandshakeState.FAILED
    with pytest.raises(HandshakeError):
        pair.initiator.ciphers()
    with pytest.raises(HandshakeError):
        pair.initiator.initiate()


def test_a_failed_responder_refuses_further_data(alice: NodeIdentity, bob: NodeIdentity) -> None:
    pair = Pair(alice, bob)
    with pytest.raises(HandshakeError):
        pair.to_responder(frame(b"\x01" * 40))
    with pytest.raises(HandshakeError, match="failed"):
        pair.to_responder(pair.initiator.initiate())
    with pytest.raises(HandshakeError):
        pair.responder.accept()


def test_oversized_noise_frame_is_refused(alice: NodeIdentity, bob: NodeIdentity) -> None:
    # The 2-byte header cannot announce more than 65,535 bytes; a stream that stops in
    # the middle of one just waits. Nothing is answered before the frame is complete.
    pair = Pair(alice, bob)
    assert pair.to_responder(b"\xff\xff" + b"\x00" * 1000) == b""
    assert pair.responder.state is HandshakeState.START
