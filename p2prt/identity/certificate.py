"""Node certificates and peer ids.

Every process makes a fresh X25519 static key for Noise, a fresh Ed25519 *node signing
key*, and a *node certificate* ``{kind, user, ssh_public_key, node_static_key,
node_signing_key, issued, expires}`` signed by the user's SSH key (or, for a board, by the
board's identity key). The certificate travels in the Noise handshake; the receiver
checks the signature, the expiry, and that it names the static key actually used in the
handshake. The peer id is the SHA-256 of the static key.

The SSH key signs once, at start-up (it may sit behind a passphrase or in an agent).
Everything the node signs later — DHT records (:mod:`p2prt.wire.records`) — is signed
with the node signing key (:meth:`NodeIdentity.sign`) and checked with
:meth:`NodeCertificate.verify_node_signature`; X25519 cannot sign.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from ..errors import (
    BadCertificateSignatureError,
    CertificateError,
    CertificateExpiredError,
    CertificateKeyMismatchError,
    KeyLoadError,
)
from .keys import SshKey, SshPublicKey

__all__ = ["PeerId", "NodeCertificate", "NodeIdentity", "CERT_LIFETIME", "CLOCK_SKEW"]

_CERT_DOMAIN = b"p2prt node certificate v2\x00"
CERT_LIFETIME = 7 * 24 * 3600.0
"""Default certificate lifetime in seconds (a week; a process renews on restart)."""
CLOCK_SKEW = 300.0
"""Seconds of clock difference tolerated before a certificate counts as not yet valid."""
KINDS = ("user", "board")


class PeerId(bytes):
    """32 bytes: SHA-256 of a node's Noise static public key. ``str()`` is base32."""

    @classmethod
    def from_static_key(cls, static_public: bytes) -> PeerId:
        return cls(hashlib.sha256(static_public).digest())

    @classmethod
    def parse(cls, text: str) -> PeerId:
        pad = "=" * (-len(text) % 8)
        raw = base64.b32decode(text.upper() + pad)
        if len(raw) != 32:
            raise ValueError("a peer id is 32 bytes")
        return cls(raw)

    def __str__(self) -> str:
        return base64.b32encode(self).decode().rstrip("=").lower()

    def __repr__(self) -> str:
        return f"PeerId({str(self)[:12]}…)"

    @property
    def short(self) -> str:
        return str(self)[:12]


@dataclass(frozen=True)
class NodeCertificate:
    """A statement by an SSH key: "this Noise static key and this Ed25519 signing key
    speak for ``user``"."""

    kind: str
    user: str
    ssh_public_key: str
    node_static_key: bytes
    node_signing_key: bytes
    issued: int
    expires: int
    signature: bytes

    def signed_bytes(self) -> bytes:
        """What the SSH signature covers: every wire field but the signature itself."""
        return _CERT_DOMAIN + cbor2.dumps(self.to_wire()[:-1])

    @property
    def peer_id(self) -> PeerId:
        return PeerId.from_static_key(self.node_static_key)

    @property
    def public_key(self) -> SshPublicKey:
        try:
            return SshPublicKey.parse(self.ssh_public_key)
        except KeyLoadError as exc:
            raise CertificateError(f"certificate carries an unusable SSH key: {exc}") from None

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    @classmethod
    def issue(
        cls,
        signer: SshKey,
        user: str,
        node_static_key: bytes,
        node_signing_key: bytes,
        *,
        kind: str = "user",
        lifetime: float = CERT_LIFETIME,
        now: float | None = None,
    ) -> NodeCertificate:
        """Sign a certificate binding ``node_static_key`` (X25519, Noise) and
        ``node_signing_key`` (Ed25519, raw 32 bytes) to ``user`` with ``signer``."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if len(node_signing_key) != 32:
            raise ValueError("node_signing_key is a raw 32-byte Ed25519 public key")
        t = time.time() if now is None else now
        unsigned = cls(
            kind,
            user,
            signer.public.line,
            bytes(node_static_key),
            bytes(node_signing_key),
            int(t),
            int(t + lifetime),
            b"",
        )
        return cls(**{**unsigned.__dict__, "signature": signer.sign(unsigned.signed_bytes())})

    def verify(self, *, static_key: bytes | None, now: float) -> None:
        """Check signature, validity period and (when given) the static key.

        Raises :class:`BadCertificateSignatureError`, :class:`CertificateExpiredError`
        or :class:`CertificateKeyMismatchError`.
        """
        if not self.public_key.verify(self.signature, self.signed_bytes()):
            raise BadCertificateSignatureError(
                f"certificate for {self.user!r} is not signed by the key it names ({self.fingerprint})"
            )
        if now >= self.expires:
            raise CertificateExpiredError(f"certificate for {self.user!r} expired {int(now - self.expires)} s ago")
        if now + CLOCK_SKEW < self.issued:
            raise CertificateExpiredError(
                f"certificate for {self.user!r} is not valid yet (issued {int(self.issued - now)} s in the future; check the clocks)"
            )
        if static_key is not None and bytes(static_key) != self.node_static_key:
            raise CertificateKeyMismatchError(
                f"certificate for {self.user!r} names another Noise static key than the one used in the handshake"
            )

    def verify_node_signature(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is the node signing key's Ed25519 signature of ``data``.

        Only the key is checked here; call :meth:`verify` for the certificate itself.
        """
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.node_signing_key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_wire(self) -> list[Any]:
        return [
            self.kind,
            self.user,
            self.ssh_public_key,
            self.node_static_key,
            self.node_signing_key,
            self.issued,
            self.expires,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, obj: object) -> NodeCertificate:
        """Rebuild from :meth:`to_wire` output; :class:`CertificateError` when ill-formed."""
        types = (str, str, str, bytes, bytes, int, int, bytes)
        if (
            not isinstance(obj, list)
            or len(obj) != len(types)
            or not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(obj, types, strict=False))
        ):
            raise CertificateError("malformed node certificate")
        cert = cls(*obj)
        if (
            cert.kind not in KINDS
            or len(cert.node_static_key) != 32
            or len(cert.node_signing_key) != 32
            or len(cert.user) > 64
        ):
            raise CertificateError("malformed node certificate")
        return cert


class NodeIdentity:
    """This process's Noise static key pair and node signing key, plus the certificate
    that vouches for both."""

    def __init__(self, static_private: bytes, certificate: NodeCertificate, signing_private: bytes) -> None:
        self.static_private = static_private
        self.certificate = certificate
        self.signing_private = signing_private
        self._signer = ed25519.Ed25519PrivateKey.from_private_bytes(signing_private)

    @classmethod
    def create(
        cls,
        signer: SshKey,
        user: str,
        *,
        kind: str = "user",
        lifetime: float = CERT_LIFETIME,
        now: float | None = None,
    ) -> NodeIdentity:
        """A fresh X25519 static key and Ed25519 signing key certified by ``signer`` for
        ``user`` (the only use of ``signer``)."""
        raw = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        pub = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        static = x25519.X25519PrivateKey.generate()
        signing = ed25519.Ed25519PrivateKey.generate()
        cert = NodeCertificate.issue(
            signer,
            user,
            static.public_key().public_bytes(*pub),
            signing.public_key().public_bytes(*pub),
            kind=kind,
            lifetime=lifetime,
            now=now,
        )
        return cls(static.private_bytes(*raw), cert, signing.private_bytes(*raw))

    def sign(self, data: bytes) -> bytes:
        """The node signing key's Ed25519 signature of ``data`` (64 bytes); anyone holding
        the certificate checks it with :meth:`NodeCertificate.verify_node_signature`."""
        return self._signer.sign(data)

    @property
    def static_public(self) -> bytes:
        return self.certificate.node_static_key

    @property
    def peer_id(self) -> PeerId:
        return self.certificate.peer_id

    @property
    def user(self) -> str:
        return self.certificate.user

    def __repr__(self) -> str:
        return f"<NodeIdentity {self.user} {self.peer_id.short}>"
