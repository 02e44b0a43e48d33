"""Signed DHT records: signing, verification, every forgery refused, hostile bytes."""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2prt.dht._storage import check_value
from p2prt.errors import (
    BadCertificateSignatureError,
    BadRecordSignatureError,
    CertificateError,
    CertificateExpiredError,
    InvalidRecordError,
    ProtocolError,
    RecordExpiredError,
    RecordOwnerError,
)
from p2prt.identity import NodeCertificate, NodeIdentity, SshKey, generate_ed25519
from p2prt.wire.board import Address
from p2prt.wire.control import Ping
from p2prt.wire.messages import encode_message
from p2prt.wire.records import (
    KEY_SIZE,
    MAX_ADDRS,
    MAX_RECORD_BYTES,
    DhtRecord,
    ObjectLocation,
    PeerRecord,
    decode_record,
    encode_record,
    is_newer,
    location_key,
    next_seq,
    peer_key,
    verify_record,
)

T0 = 1_700_000_000
ADDRS = [Address("192.0.2.7", 7000), Address("2001:db8::1", 7001)]


@pytest.fixture(scope="module")
def keys() -> dict[str, SshKey]:
    return {name: generate_ed25519(name) for name in ("alice", "mallory")}


@pytest.fixture(scope="module")
def alice(keys: dict[str, SshKey]) -> NodeIdentity:
    return NodeIdentity.create(keys["alice"], "alice", now=T0)


@pytest.fixture(scope="module")
def mallory(keys: dict[str, SshKey]) -> NodeIdentity:
    return NodeIdentity.create(keys["mallory"], "mallory", now=T0)


@pytest.fixture(scope="module")
def peer(alice: NodeIdentity) -> PeerRecord:
    return PeerRecord.create(alice, ADDRS, Address("203.0.113.5", 40000), seq=5, ttl=3600, now=T0)


@pytest.fixture(scope="module")
def location(alice: NodeIdentity) -> ObjectLocation:
    return ObjectLocation.create(alice, b"\x01" * 16, 64 << 20, seq=5, ttl=3600, now=T0)


def round_trip(rec: DhtRecord) -> DhtRecord:
    return decode_record(encode_record(rec))


# -- sign and verify ------------------------------------------------------------------


def test_peer_record_round_trip_and_verify(peer: PeerRecord, alice: NodeIdentity) -> None:
    again = round_trip(peer)
    assert again == peer
    assert isinstance(again, PeerRecord)
    cert = verify_record(again, now=T0 + 1)
    assert cert == alice.certificate
    assert again.author == alice.peer_id
    assert again.key == peer_key(alice.peer_id)
    assert again.listen_addrs == ADDRS
    assert again.expires == T0 + 3600


def test_location_round_trip_and_verify(location: ObjectLocation, alice: NodeIdentity) -> None:
    again = round_trip(location)
    assert again == location
    assert verify_record(again, now=T0 + 1) == alice.certificate
    assert again.author == alice.peer_id
    assert again.key == location_key(b"\x01" * 16)
    assert not again.removed


def test_record_fits_well_under_the_limit(peer: PeerRecord, location: ObjectLocation) -> None:
    assert len(encode_record(peer)) < 1024
    assert len(encode_record(location)) < 1024


def test_record_never_outlives_its_certificate(keys: dict[str, SshKey]) -> None:
    short = NodeIdentity.create(keys["alice"], "alice", lifetime=60, now=T0)
    rec = PeerRecord.create(short, ADDRS, None, seq=1, ttl=3600, now=T0)
    assert rec.expires == T0 + 60


def test_allowed_predicate(peer: PeerRecord) -> None:
    verify_record(peer, now=T0, allowed=lambda cert: cert.user == "alice")
    with pytest.raises(RecordOwnerError, match="not allowed"):
        verify_record(peer, now=T0, allowed=lambda cert: cert.user == "bob")


def test_allowed_checks_the_key_not_just_the_user_name(peer: PeerRecord, keys: dict[str, SshKey]) -> None:
    # Mallory certifies a node for the user name "alice" with her own SSH key.
    impostor = NodeIdentity.create(keys["mallory"], "alice", now=T0)
    rec = PeerRecord.create(impostor, ADDRS, None, seq=1, ttl=60, now=T0)
    members = {"alice": {keys["alice"].public.fingerprint}}

    def allowed(cert: NodeCertificate) -> bool:
        return cert.fingerprint in members.get(cert.user, set())

    verify_record(peer, now=T0, allowed=allowed)
    verify_record(rec, now=T0)  # a valid record on its own ...
    with pytest.raises(RecordOwnerError, match="not allowed"):
        verify_record(rec, now=T0, allowed=allowed)  # ... but not from a member's key


# -- forgeries ------------------------------------------------------------------------


def test_bad_signature_bit(peer: PeerRecord) -> None:
    sig = bytes([peer.signature[0] ^ 1]) + peer.signature[1:]
    with pytest.raises(BadRecordSignatureError):
        verify_record(round_trip(dataclasses.replace(peer, signature=sig)), now=T0)


@pytest.mark.parametrize(
    "change",
    [
        {"listen_addrs": [Address("198.51.100.66", 7000)]},
        {"observed_addr": None},
        {"seq": 6},
        {"expires": T0 + 7200},
    ],
    ids=["addrs", "observed", "seq", "expires"],
)
def test_tampered_field_fails_the_signature(peer: PeerRecord, change: dict[str, Any]) -> None:
    with pytest.raises(BadRecordSignatureError):
        verify_record(round_trip(dataclasses.replace(peer, **change)), now=T0)


def test_tampered_location_fails_the_signature(location: ObjectLocation) -> None:
    for change in ({"size": 1}, {"removed": True}, {"object_id": b"\x02" * 16}):
        with pytest.raises(BadRecordSignatureError):
            verify_record(dataclasses.replace(location, **change), now=T0)  # type: ignore[arg-type]


def test_signed_by_another_node_key(peer: PeerRecord, mallory: NodeIdentity) -> None:
    forged = dataclasses.replace(peer, signature=mallory.sign(peer.signed_bytes()))
    with pytest.raises(BadRecordSignatureError):
        verify_record(forged, now=T0)


def test_certificate_of_another_user(peer: PeerRecord, mallory: NodeIdentity) -> None:
    # Mallory signs a record for Alice's peer id with her own (valid) certificate.
    forged = dataclasses.replace(peer, certificate=mallory.certificate.to_wire())
    forged = dataclasses.replace(forged, signature=mallory.sign(forged.signed_bytes()))
    with pytest.raises(RecordOwnerError, match="certificate of peer"):
        verify_record(forged, now=T0)


def test_certificate_not_matching_the_holder(location: ObjectLocation, mallory: NodeIdentity) -> None:
    forged = dataclasses.replace(location, holder=bytes(mallory.peer_id))
    with pytest.raises(RecordOwnerError):
        verify_record(forged, now=T0)


def test_another_certificate_of_the_same_user(keys: dict[str, SshKey], peer: PeerRecord) -> None:
    # Same user, same SSH key, but another process: its certificate names another peer.
    other = NodeIdentity.create(keys["alice"], "alice", now=T0)
    forged = dataclasses.replace(peer, certificate=other.certificate.to_wire())
    forged = dataclasses.replace(forged, signature=other.sign(forged.signed_bytes()))
    with pytest.raises(RecordOwnerError):
        verify_record(forged, now=T0)


def test_certificate_with_bad_ssh_signature(alice: NodeIdentity, keys: dict[str, SshKey]) -> None:
    cert = alice.certificate
    bad_cert = dataclasses.replace(cert, signature=keys["mallory"].sign(cert.signed_bytes()))
    ident = NodeIdentity(alice.static_private, bad_cert, alice.signing_private)
    rec = PeerRecord.create(ident, ADDRS, None, seq=1, ttl=60, now=T0)
    with pytest.raises(BadCertificateSignatureError):
        verify_record(rec, now=T0)


def test_certificate_naming_an_unusable_ssh_key(alice: NodeIdentity) -> None:
    # Regression (found by fuzzing): an ECDSA key with a compressed point made verification
    # raise NotImplementedError, which lookups do not catch: a hostile node's answer
    # could end a worker's fetch of an argument. Now it is a CertificateError.
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ecdsa-sha2-nistp256", b"nistp256", point))
    cert = dataclasses.replace(alice.certificate, ssh_public_key="ecdsa-sha2-nistp256 " + base64.b64encode(blob).decode())
    rec = PeerRecord.create(NodeIdentity(alice.static_private, cert, alice.signing_private), ADDRS, None, seq=1, ttl=60, now=T0)
    with pytest.raises(CertificateError, match="unusable SSH key"):
        verify_record(rec, now=T0)
    with pytest.raises(CertificateError):
        check_value(rec.key, encode_record(rec), now=T0)


def test_malformed_certificate(peer: PeerRecord) -> None:
    with pytest.raises(CertificateError, match="malformed"):
        verify_record(dataclasses.replace(peer, certificate=["user", "alice"]), now=T0)


def test_expired_record(alice: NodeIdentity) -> None:
    rec = PeerRecord.create(alice, ADDRS, None, seq=1, ttl=10, now=T0)
    verify_record(rec, now=T0 + 9)
    with pytest.raises(RecordExpiredError):
        verify_record(rec, now=T0 + 10)


def test_expired_certificate(keys: dict[str, SshKey]) -> None:
    short = NodeIdentity.create(keys["alice"], "alice", lifetime=60, now=T0)
    rec = PeerRecord.create(short, ADDRS, None, seq=1, ttl=60, now=T0)
    with pytest.raises(CertificateExpiredError):
        verify_record(rec, now=T0 + 61)


def test_stale_seq_is_not_newer(alice: NodeIdentity) -> None:
    old = PeerRecord.create(alice, ADDRS, None, seq=1, ttl=60, now=T0)
    new = PeerRecord.create(alice, ADDRS[:1], None, seq=2, ttl=60, now=T0)
    assert is_newer(new, old)
    assert is_newer(new, None)
    assert not is_newer(old, new)
    assert not is_newer(new, new)


def test_next_seq_increases_strictly() -> None:
    a = next_seq(0)
    assert a >= time.time_ns() - 10**9
    assert next_seq(a) > a
    assert next_seq(2**62) == 2**62 + 1


# -- size and shape ----------------------------------------------------------------------


def test_oversize_record_is_refused_on_create(alice: NodeIdentity) -> None:
    addrs = [Address("h" * 600, 1) for _ in range(MAX_ADDRS)]
    with pytest.raises(InvalidRecordError, match="over the limit"):
        PeerRecord.create(alice, addrs, None, seq=1, ttl=60, now=T0)


def test_oversize_bytes_are_refused_before_decoding() -> None:
    with pytest.raises(InvalidRecordError, match="over the limit"):
        decode_record(b"\x00" * (MAX_RECORD_BYTES + 1))


def test_oversize_record_fails_verify(peer: PeerRecord) -> None:
    big = dataclasses.replace(peer, listen_addrs=[Address("h" * 600, 1)] * MAX_ADDRS)
    with pytest.raises(InvalidRecordError, match="over the limit"):
        verify_record(big, now=T0)
    with pytest.raises(InvalidRecordError):
        encode_record(big)


def test_too_many_addresses(peer: PeerRecord) -> None:
    many = dataclasses.replace(peer, listen_addrs=[Address("h", 1)] * (MAX_ADDRS + 1))
    with pytest.raises(InvalidRecordError, match="listen addresses"):
        decode_record(encode_message(many))


@pytest.mark.parametrize(
    "change",
    [{"holder": b"\x00" * 31}, {"object_id": b""}, {"object_id": b"x" * 65}, {"size": -1}],
    ids=["holder", "empty-id", "long-id", "negative-size"],
)
def test_location_shape(location: ObjectLocation, change: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecordError):
        decode_record(encode_message(dataclasses.replace(location, **change)))


def test_other_message_types_are_not_records() -> None:
    with pytest.raises(InvalidRecordError, match="Ping"):
        decode_record(encode_message(Ping(1)))


def test_keys_are_domain_separated() -> None:
    ident = b"\x07" * 32
    assert len(peer_key(ident)) == len(location_key(ident)) == KEY_SIZE
    assert peer_key(ident) != location_key(ident)
    assert peer_key(ident) != peer_key(b"\x08" * 32)


def test_signatures_are_domain_separated(alice: NodeIdentity, peer: PeerRecord) -> None:
    # A location signature cannot be replayed as a peer record signature and vice versa.
    assert not peer.signed_bytes().startswith(b"p2prt object location")
    loc = ObjectLocation.create(alice, b"\x01" * 16, 1, seq=1, ttl=60, now=T0)
    assert loc.signed_bytes()[:20] != peer.signed_bytes()[:20]


# -- hostile bytes -----------------------------------------------------------------------


def _decode_and_verify(raw: bytes) -> None:
    try:
        rec = decode_record(raw)
    except ProtocolError:
        return
    assert decode_record(encode_message(rec)) == rec
    try:
        verify_record(rec, now=T0)
    except ProtocolError:
        return


@settings(max_examples=1000)
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(raw: bytes) -> None:
    _decode_and_verify(raw)


ANY_CBOR: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=20,
)


@settings(max_examples=300)
@given(tag=st.sampled_from(["dht.peer", "dht.location"]), fields=st.lists(ANY_CBOR, max_size=9))
def test_record_tag_with_arbitrary_fields(tag: str, fields: list[Any]) -> None:
    _decode_and_verify(cbor2.dumps([tag, *fields]))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_raise_only_protocol_errors(
    data: st.DataObject, peer: PeerRecord, location: ObjectLocation
) -> None:
    raw = bytearray(encode_record(data.draw(st.sampled_from([peer, location]))))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        pos = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            raw.insert(pos, data.draw(st.integers(min_value=0, max_value=255)))
        elif raw:
            del raw[pos]
    _decode_and_verify(bytes(raw))


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    addrs=st.lists(st.builds(Address, st.text(max_size=40), st.integers(0, 65535)), max_size=MAX_ADDRS),
    seq=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_any_valid_peer_record_round_trips(alice: NodeIdentity, addrs: list[Address], seq: int) -> None:
    rec = PeerRecord.create(alice, addrs, None, seq=seq, ttl=60, now=T0)
    again = round_trip(rec)
    assert again == rec
    verify_record(again, now=T0)
