"""Node certificates, peer ids and node identities."""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from p2prt.errors import (
    BadCertificateSignatureError,
    CertificateError,
    CertificateExpiredError,
    CertificateKeyMismatchError,
)
from p2prt.identity.certificate import CERT_LIFETIME, CLOCK_SKEW, NodeCertificate, NodeIdentity, PeerId
from p2prt.identity.keys import SshKey, generate_ed25519

T0 = 1_700_000_000


def _static_key() -> bytes:
    return (
        x25519.X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def _signing_key() -> bytes:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


@functools.cache
def _signer(kind: str) -> SshKey:
    if kind == "rsa":
        return SshKey(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if kind == "ecdsa":
        return SshKey(ec.generate_private_key(ec.SECP256R1()))
    return generate_ed25519()


@pytest.fixture
def signer() -> SshKey:
    return generate_ed25519()


@pytest.fixture
def static() -> bytes:
    return _static_key()


@pytest.fixture
def cert(signer: SshKey, static: bytes) -> NodeCertificate:
    return NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0)


# --- issue and verify -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_issue_and_verify(kind: str, static: bytes) -> None:
    cert = NodeCertificate.issue(_signer(kind), "alice", static, _signing_key(), now=T0)
    cert.verify(static_key=static, now=T0 + 1)
    assert cert.user == "alice"
    assert cert.kind == "user"
    assert cert.node_static_key == static
    assert cert.public_key == _signer(kind).public
    assert cert.fingerprint == _signer(kind).public.fingerprint


def test_issue_sets_validity_period(signer: SshKey, static: bytes) -> None:
    cert = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0 + 0.7)
    assert cert.issued == T0
    assert cert.expires == T0 + int(CERT_LIFETIME)
    short = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0, lifetime=60)
    assert short.expires == T0 + 60


def test_issue_uses_current_time_by_default(signer: SshKey, static: bytes) -> None:
    import time

    before = int(time.time())
    cert = NodeCertificate.issue(signer, "alice", static, _signing_key())
    assert before <= cert.issued <= int(time.time())
    cert.verify(static_key=static, now=time.time())


def test_board_kind(signer: SshKey, static: bytes) -> None:
    cert = NodeCertificate.issue(signer, "board", static, _signing_key(), kind="board", now=T0)
    assert cert.kind == "board"
    cert.verify(static_key=static, now=T0)


def test_unknown_kind_is_refused(signer: SshKey, static: bytes) -> None:
    with pytest.raises(ValueError, match="kind"):
        NodeCertificate.issue(signer, "alice", static, _signing_key(), kind="admin", now=T0)


def test_verify_without_static_key_skips_that_check(cert: NodeCertificate) -> None:
    cert.verify(static_key=None, now=T0)


# --- wire form ------------------------------------------------------------------------------


def test_wire_round_trip(cert: NodeCertificate, static: bytes) -> None:
    again = NodeCertificate.from_wire(cert.to_wire())
    assert again == cert
    again.verify(static_key=static, now=T0)


def test_wire_round_trip_through_cbor(cert: NodeCertificate, static: bytes) -> None:
    again = NodeCertificate.from_wire(cbor2.loads(cbor2.dumps(cert.to_wire())))
    assert again == cert
    again.verify(static_key=static, now=T0)


def _bad_wire_shapes() -> list[tuple[str, Any]]:
    good = NodeCertificate.issue(generate_ed25519(), "alice", _static_key(), _signing_key(), now=T0).to_wire()

    def with_(index: int, value: object) -> list[Any]:
        out = list(good)
        out[index] = value
        return out

    return [
        ("none", None),
        ("int", 7),
        ("str", "certificate"),
        ("bytes", b"certificate"),
        ("dict", {"user": "alice"}),
        ("tuple", tuple(good)),
        ("empty", []),
        ("too-short", good[:-1]),
        ("too-long", [*good, b""]),
        ("kind-int", with_(0, 1)),
        ("kind-unknown", with_(0, "admin")),
        ("user-bytes", with_(1, b"alice")),
        ("user-none", with_(1, None)),
        ("user-too-long", with_(1, "a" * 65)),
        ("sshkey-bytes", with_(2, good[2].encode())),
        ("static-str", with_(3, "x" * 32)),
        ("static-bytearray", with_(3, bytearray(32))),
        ("static-short", with_(3, b"\x00" * 31)),
        ("static-long", with_(3, b"\x00" * 33)),
        ("static-empty", with_(3, b"")),
        ("signing-str", with_(4, "x" * 32)),
        ("signing-short", with_(4, b"\x00" * 31)),
        ("signing-long", with_(4, b"\x00" * 33)),
        ("signing-none", with_(4, None)),
        ("issued-str", with_(5, str(T0))),
        ("issued-float", with_(5, float(T0))),
        ("issued-bool", with_(5, True)),
        ("expires-none", with_(6, None)),
        ("expires-bool", with_(6, False)),
        ("signature-str", with_(7, "sig")),
        ("signature-list", with_(7, [1, 2])),
    ]


_BAD = _bad_wire_shapes()


@pytest.mark.parametrize("obj", [obj for _, obj in _BAD], ids=[name for name, _ in _BAD])
def test_from_wire_rejects_malformed(obj: object) -> None:
    with pytest.raises(CertificateError):
        NodeCertificate.from_wire(obj)


def test_unusable_ssh_key_is_certificate_error_on_verify(cert: NodeCertificate, static: bytes) -> None:
    wire = cert.to_wire()
    wire[2] = "ssh-ed25519 not-a-key"
    bad = NodeCertificate.from_wire(wire)
    with pytest.raises(CertificateError):
        bad.verify(static_key=static, now=T0)


# --- tampering ------------------------------------------------------------------------------


_TAMPER: dict[str, Any] = {
    "user": lambda c: dataclasses.replace(c, user="mallory"),
    "kind": lambda c: dataclasses.replace(c, kind="board"),
    "expires": lambda c: dataclasses.replace(c, expires=c.expires + 3600),
    "issued": lambda c: dataclasses.replace(c, issued=c.issued - 1),
    "static-key": lambda c: dataclasses.replace(c, node_static_key=_static_key()),
    "signing-key": lambda c: dataclasses.replace(c, node_signing_key=_signing_key()),
    "ssh-key": lambda c: dataclasses.replace(c, ssh_public_key=generate_ed25519().public.line),
    "signature-bit": lambda c: dataclasses.replace(c, signature=bytes([c.signature[0] ^ 1]) + c.signature[1:]),
    "signature-empty": lambda c: dataclasses.replace(c, signature=b""),
}


@pytest.mark.parametrize("field", sorted(_TAMPER))
def test_tampered_certificate_has_bad_signature(cert: NodeCertificate, field: str) -> None:
    tampered: NodeCertificate = _TAMPER[field](cert)
    with pytest.raises(BadCertificateSignatureError):
        tampered.verify(static_key=None, now=T0)


def test_tampered_static_key_fails_signature_before_key_check(cert: NodeCertificate) -> None:
    other = _static_key()
    tampered = dataclasses.replace(cert, node_static_key=other)
    # Even when the attacker's static key is the one used in the handshake.
    with pytest.raises(BadCertificateSignatureError):
        tampered.verify(static_key=other, now=T0)


def test_certificate_signed_by_other_key_than_named(signer: SshKey, static: bytes) -> None:
    mallory = generate_ed25519()
    forged = NodeCertificate.issue(mallory, "alice", static, _signing_key(), now=T0)
    forged = dataclasses.replace(forged, ssh_public_key=signer.public.line)
    with pytest.raises(BadCertificateSignatureError):
        forged.verify(static_key=static, now=T0)


def test_signature_is_domain_separated(cert: NodeCertificate, signer: SshKey) -> None:
    # A signature over the bare CBOR body (without the domain prefix) must not verify.
    body = cbor2.dumps(
        [cert.kind, cert.user, cert.ssh_public_key, cert.node_static_key, cert.node_signing_key, cert.issued, cert.expires]
    )
    forged = dataclasses.replace(cert, signature=signer.sign(body))
    with pytest.raises(BadCertificateSignatureError):
        forged.verify(static_key=None, now=T0)


# --- validity period and static key ---------------------------------------------------------


def test_expired_certificate(signer: SshKey, static: bytes) -> None:
    cert = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0, lifetime=60)
    cert.verify(static_key=static, now=T0 + 59)
    with pytest.raises(CertificateExpiredError):
        cert.verify(static_key=static, now=T0 + 60)
    with pytest.raises(CertificateExpiredError, match="expired"):
        cert.verify(static_key=static, now=T0 + 10 * CERT_LIFETIME)


def test_certificate_issued_far_in_the_future(signer: SshKey, static: bytes) -> None:
    cert = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0 + 24 * 3600)
    with pytest.raises(CertificateExpiredError, match="not valid yet"):
        cert.verify(static_key=static, now=T0)


def test_small_clock_skew_is_tolerated(signer: SshKey, static: bytes) -> None:
    cert = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0 + CLOCK_SKEW - 1)
    cert.verify(static_key=static, now=T0)
    late = NodeCertificate.issue(signer, "alice", static, _signing_key(), now=T0 + CLOCK_SKEW + 1)
    with pytest.raises(CertificateExpiredError):
        late.verify(static_key=static, now=T0)


def test_wrong_static_key(cert: NodeCertificate) -> None:
    with pytest.raises(CertificateKeyMismatchError):
        cert.verify(static_key=_static_key(), now=T0)


def test_static_key_compared_as_bytes(cert: NodeCertificate, static: bytes) -> None:
    cert.verify(static_key=bytearray(static), now=T0)  # type: ignore[arg-type]


def test_certificate_errors_are_handshake_errors() -> None:
    for cls in (BadCertificateSignatureError, CertificateExpiredError, CertificateKeyMismatchError):
        assert issubclass(cls, CertificateError)


# --- PeerId ---------------------------------------------------------------------------------


def test_peer_id_is_sha256_of_static_key(cert: NodeCertificate, static: bytes) -> None:
    assert cert.peer_id == hashlib.sha256(static).digest()
    assert PeerId.from_static_key(static) == cert.peer_id
    assert len(cert.peer_id) == 32


def test_peer_id_str_parse_round_trip(static: bytes) -> None:
    pid = PeerId.from_static_key(static)
    text = str(pid)
    assert text == text.lower()
    assert "=" not in text
    assert base64.b32decode(text.upper() + "=" * (-len(text) % 8)) == pid
    parsed = PeerId.parse(text)
    assert parsed == pid
    assert isinstance(parsed, PeerId)
    assert PeerId.parse(text.upper()) == pid


def test_peer_id_short_and_repr(static: bytes) -> None:
    pid = PeerId.from_static_key(static)
    assert pid.short == str(pid)[:12]
    assert pid.short in repr(pid)


@pytest.mark.parametrize("text", ["", "aaaa", "not base32!", str(PeerId(bytes(32))) + "aaaaaaaa"])
def test_peer_id_parse_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        PeerId.parse(text)


def test_different_static_keys_give_different_peer_ids() -> None:
    assert PeerId.from_static_key(_static_key()) != PeerId.from_static_key(_static_key())


# --- NodeIdentity ---------------------------------------------------------------------------


def test_node_identity_is_consistent(signer: SshKey) -> None:
    ident = NodeIdentity.create(signer, "alice", now=T0)
    derived_public = (
        x25519.X25519PrivateKey.from_private_bytes(ident.static_private)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    assert ident.static_public == derived_public
    assert ident.peer_id == PeerId.from_static_key(derived_public)
    assert ident.peer_id == ident.certificate.peer_id
    assert ident.user == "alice"
    assert ident.certificate.public_key == signer.public
    ident.certificate.verify(static_key=derived_public, now=T0)
    assert ident.peer_id.short in repr(ident)


def test_node_identities_are_fresh_each_time(signer: SshKey) -> None:
    a = NodeIdentity.create(signer, "alice", now=T0)
    b = NodeIdentity.create(signer, "alice", now=T0)
    assert a.static_private != b.static_private
    assert a.peer_id != b.peer_id


def test_board_node_identity(signer: SshKey) -> None:
    ident = NodeIdentity.create(signer, "board", kind="board", lifetime=60, now=T0)
    assert ident.certificate.kind == "board"
    assert ident.certificate.expires == T0 + 60
    ident.certificate.verify(static_key=ident.static_public, now=T0)


# --- node signing key -----------------------------------------------------------------------


def test_node_identity_signs_with_the_certified_key(signer: SshKey) -> None:
    ident = NodeIdentity.create(signer, "alice", now=T0)
    sig = ident.sign(b"record")
    assert len(sig) == 64
    assert ident.certificate.verify_node_signature(sig, b"record")
    assert not ident.certificate.verify_node_signature(sig, b"recorD")
    assert not ident.certificate.verify_node_signature(sig[:-1], b"record")
    assert not ident.certificate.verify_node_signature(b"", b"record")


def test_signature_of_another_node_does_not_verify(signer: SshKey) -> None:
    a = NodeIdentity.create(signer, "alice", now=T0)
    b = NodeIdentity.create(signer, "alice", now=T0)
    assert a.certificate.node_signing_key != b.certificate.node_signing_key
    assert not a.certificate.verify_node_signature(b.sign(b"record"), b"record")


def test_unusable_signing_key_verifies_nothing(cert: NodeCertificate) -> None:
    bad = dataclasses.replace(cert, node_signing_key=bytes(31))
    assert not bad.verify_node_signature(bytes(64), b"record")


def test_issue_refuses_a_signing_key_of_wrong_length(signer: SshKey, static: bytes) -> None:
    with pytest.raises(ValueError, match="Ed25519"):
        NodeCertificate.issue(signer, "alice", static, b"short", now=T0)
