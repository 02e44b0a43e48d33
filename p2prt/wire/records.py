"""Signed DHT records: where a peer listens, and where a large object is held.

Theory of operation
-------------------
A record is a :class:`~p2prt.wire.messages.Message` (so it encodes to a tagged CBOR array
and decodes with every check of :func:`~p2prt.wire.messages.decode_message`) that carries
its author's node certificate and a signature by the author's *node signing key*
(the Ed25519 key that certificate binds; :meth:`NodeIdentity.sign`). Anyone can check a
record on its own, with no connection to its author:

1. its encoding is at most :data:`MAX_RECORD_BYTES` (a Kademlia value travels in one UDP
   datagram, and ``rpcudp`` refuses requests over 8 KiB);
2. the certificate is well-formed and names the peer the record speaks for (the
   record's ``peer_id`` or ``holder``); optionally, the caller accepts its user and key;
3. the signature verifies with the certificate's node signing key over
   :meth:`signed_bytes` (a domain string, then the CBOR of every field but the signature);
4. the certificate verifies (its SSH signature, its validity period);
5. the record has not expired.

:func:`verify_record` does all of it. Records for the same DHT key are ordered by
``seq``: a higher ``seq`` replaces a lower one (:func:`is_newer`); writers use the time in
nanoseconds, kept strictly increasing (:func:`next_seq`), so a record published later
wins even when another node publishes it (an object rebuilt elsewhere).

DHT keys are 20 bytes (Kademlia's id space): the first 20 bytes of SHA-256 over a domain
string and the peer id (:func:`peer_key`) or the object id (:func:`location_key`). One
key holds exactly one record; nothing is ever split over several values.

Example::

    rec = PeerRecord.create(identity, [Address("192.0.2.7", 7000)], None, seq=next_seq(0), ttl=3600)
    data = encode_record(rec)                     # bytes for the DHT
    again = decode_record(data)                   # ProtocolError subclasses only
    verify_record(again, now=time.time())         # raises if forged, stale or expired
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import cbor2

from ..errors import (
    BadRecordSignatureError,
    InvalidRecordError,
    RecordExpiredError,
    RecordOwnerError,
)
from ..identity.certificate import NodeCertificate, NodeIdentity, PeerId
from .board import Address
from .messages import Message, decode_message, encode_message, message

__all__ = [
    "PeerRecord",
    "ObjectLocation",
    "DhtRecord",
    "MAX_RECORD_BYTES",
    "MAX_ADDRS",
    "MAX_OBJECT_ID",
    "KEY_SIZE",
    "peer_key",
    "location_key",
    "record_key",
    "check_shape",
    "encode_record",
    "decode_record",
    "verify_record",
    "is_newer",
    "next_seq",
]

MAX_RECORD_BYTES = 7 * 1024
"""Largest encoded record: leaves room under rpcudp's 8 KiB request limit for the RPC
name, the sender's node id and the key."""
MAX_ADDRS = 16
"""Most listen addresses a peer record may carry."""
MAX_OBJECT_ID = 64
"""Longest object id (bytes) a location record may name."""
KEY_SIZE = 20
"""Bytes in a DHT key (Kademlia's 160-bit id space)."""

_PEER_KEY_DOMAIN = b"p2prt dht peer v1\x00"
_LOCATION_KEY_DOMAIN = b"p2prt dht location v1\x00"
_PEER_SIG_DOMAIN = b"p2prt peer record v1\x00"
_LOCATION_SIG_DOMAIN = b"p2prt object location v1\x00"


def peer_key(peer_id: bytes) -> bytes:
    """The DHT key under which ``peer_id``'s :class:`PeerRecord` is stored."""
    return hashlib.sha256(_PEER_KEY_DOMAIN + bytes(peer_id)).digest()[:KEY_SIZE]


def location_key(object_id: bytes) -> bytes:
    """The DHT key under which ``object_id``'s :class:`ObjectLocation` is stored."""
    return hashlib.sha256(_LOCATION_KEY_DOMAIN + bytes(object_id)).digest()[:KEY_SIZE]


@message("dht.peer")
class PeerRecord(Message):
    """Where peer ``peer_id`` can be reached, signed by that peer's node signing key.

    ``listen_addrs`` are the addresses it accepts connections on (dial them in order);
    ``observed_addr`` is where the board saw it connect from (its NAT's public side), if
    known. ``seq`` orders records of the same peer; ``expires`` is Unix seconds.
    """

    peer_id: bytes
    certificate: list[Any]
    listen_addrs: list[Address]
    observed_addr: Address | None
    seq: int
    expires: int
    signature: bytes = b""

    @classmethod
    def create(
        cls,
        identity: NodeIdentity,
        listen_addrs: list[Address],
        observed_addr: Address | None,
        *,
        seq: int,
        ttl: float,
        now: float | None = None,
    ) -> PeerRecord:
        """A record for ``identity``, signed, valid for ``ttl`` seconds (never past the
        certificate's own expiry). :class:`InvalidRecordError` when it would not fit."""
        unsigned = cls(
            identity.peer_id,
            identity.certificate.to_wire(),
            list(listen_addrs),
            observed_addr,
            seq,
            _expiry(identity, ttl, now),
        )
        return _signed(unsigned, identity)

    def signed_bytes(self) -> bytes:
        return _PEER_SIG_DOMAIN + cbor2.dumps(self.to_wire()[:-1])

    @property
    def key(self) -> bytes:
        return peer_key(self.peer_id)

    @property
    def author(self) -> PeerId:
        return PeerId(self.peer_id)


@message("dht.location")
class ObjectLocation(Message):
    """Object ``object_id`` (``size`` bytes) is held by peer ``holder``, which signed this.

    ``removed`` marks a tombstone: the holder no longer has it (Kademlia cannot delete, so
    removal is a newer record saying so).
    """

    object_id: bytes
    holder: bytes
    certificate: list[Any]
    size: int
    seq: int
    expires: int
    removed: bool = False
    signature: bytes = b""

    @classmethod
    def create(
        cls,
        identity: NodeIdentity,
        object_id: bytes,
        size: int,
        *,
        seq: int,
        ttl: float,
        removed: bool = False,
        now: float | None = None,
    ) -> ObjectLocation:
        """A location record naming ``identity`` as holder, signed, valid for ``ttl`` s."""
        unsigned = cls(
            bytes(object_id),
            identity.peer_id,
            identity.certificate.to_wire(),
            size,
            seq,
            _expiry(identity, ttl, now),
            removed,
        )
        return _signed(unsigned, identity)

    def signed_bytes(self) -> bytes:
        return _LOCATION_SIG_DOMAIN + cbor2.dumps(self.to_wire()[:-1])

    @property
    def key(self) -> bytes:
        return location_key(self.object_id)

    @property
    def author(self) -> PeerId:
        return PeerId(self.holder)


DhtRecord: TypeAlias = PeerRecord | ObjectLocation


_R = TypeVar("_R", PeerRecord, ObjectLocation)


def _signed(unsigned: _R, identity: NodeIdentity) -> _R:
    rec = dataclasses.replace(unsigned, signature=identity.sign(unsigned.signed_bytes()))
    check_shape(rec)
    encode_record(rec)  # the size check
    return rec


def _expiry(identity: NodeIdentity, ttl: float, now: float | None) -> int:
    t = time.time() if now is None else now
    return min(int(t + ttl), identity.certificate.expires)


def check_shape(rec: DhtRecord) -> None:
    """The checks beyond field types: id lengths, counts, signs.
    :class:`InvalidRecordError` when one fails."""
    name = type(rec).__name__
    if len(rec.author) != 32:
        raise InvalidRecordError(f"{name}: a peer id is 32 bytes, got {len(rec.author)}")
    if isinstance(rec, PeerRecord):
        if len(rec.listen_addrs) > MAX_ADDRS:
            raise InvalidRecordError(f"{name}: more than {MAX_ADDRS} listen addresses")
        return
    if not 0 < len(rec.object_id) <= MAX_OBJECT_ID:
        raise InvalidRecordError(f"{name}: object id of 1..{MAX_OBJECT_ID} bytes, got {len(rec.object_id)}")
    if rec.size < 0:
        raise InvalidRecordError(f"{name}: negative size")


def record_key(rec: DhtRecord) -> bytes:
    """The DHT key ``rec`` belongs under."""
    return rec.key


def encode_record(rec: DhtRecord) -> bytes:
    """CBOR bytes of ``rec``; :class:`InvalidRecordError` when over :data:`MAX_RECORD_BYTES`."""
    data = encode_message(rec)
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidRecordError(f"record is {len(data)} bytes, over the limit of {MAX_RECORD_BYTES}")
    return data


def decode_record(data: bytes | bytearray | memoryview) -> DhtRecord:
    """Decode one record (its shape checked, not yet verified). Raises only
    :class:`ProtocolError` subclasses: :class:`InvalidRecordError` when too large, of
    another message type, or of a wrong shape (:func:`check_shape`)."""
    if len(data) > MAX_RECORD_BYTES:
        raise InvalidRecordError(f"record is {len(data)} bytes, over the limit of {MAX_RECORD_BYTES}")
    msg = decode_message(data)
    if not isinstance(msg, (PeerRecord, ObjectLocation)):
        raise InvalidRecordError(f"expected a DHT record, got {type(msg).__name__}")
    check_shape(msg)
    return msg


def verify_record(
    rec: DhtRecord,
    *,
    now: float,
    allowed: Callable[[NodeCertificate], bool] | None = None,
) -> NodeCertificate:
    """Check ``rec`` completely and return its (verified) certificate.

    ``allowed`` is called with the verified certificate and says whether its author may
    publish here: check the user *and* the SSH key (``cert.user``, ``cert.fingerprint``)
    against the cluster's members, since anyone can certify a node for any user name
    with their own key.

    Raises :class:`InvalidRecordError` (too large), a :class:`CertificateError` subclass
    (ill-formed, badly signed or expired certificate), :class:`RecordOwnerError` (the
    certificate is another peer's, or ``allowed`` refuses it),
    :class:`BadRecordSignatureError` or :class:`RecordExpiredError` — all
    :class:`ProtocolError` subclasses.
    """
    check_shape(rec)
    encode_record(rec)  # the size check
    cert = NodeCertificate.from_wire(rec.certificate)
    if cert.peer_id != rec.author:
        raise RecordOwnerError(
            f"record for peer {rec.author.short} carries the certificate of peer {cert.peer_id.short} ({cert.user})"
        )
    if not cert.verify_node_signature(rec.signature, rec.signed_bytes()):
        raise BadRecordSignatureError(f"record for peer {rec.author.short} ({cert.user}) has a bad signature")
    cert.verify(static_key=None, now=now)
    if now >= rec.expires:
        raise RecordExpiredError(f"record for peer {rec.author.short} expired {int(now - rec.expires)} s ago")
    if allowed is not None and not allowed(cert):
        raise RecordOwnerError(
            f"record for peer {rec.author.short} is signed for user {cert.user!r} ({cert.fingerprint}), not allowed here"
        )
    return cert


def is_newer(candidate: DhtRecord, current: DhtRecord | None) -> bool:
    """True when ``candidate`` should replace ``current`` under the same key."""
    return current is None or candidate.seq > current.seq


def next_seq(previous: int) -> int:
    """A sequence number above ``previous``: the time in nanoseconds when that is larger,
    so records published later win across restarts and across holders."""
    return max(previous + 1, time.time_ns())
