"""The Noise XX handshake as a bytes-in/bytes-out state machine.

Theory of operation
-------------------
Pattern ``Noise_XX_25519_ChaChaPoly_BLAKE2b`` with prologue ``p2prt/1``. Every handshake
message travels in Noise framing (2-byte length). The three XX messages::

    initiator                                   responder
    1  -> e                          (no payload: nothing is secret yet)
    2  <- e, ee, s, es               Hello{proto, certificate, versions}  (encrypted)
    3  -> s, se                      Hello{...}                            (encrypted)
    4  <- first transport message:   Accept{}  or  Reject{code, reason}

Each side checks the other's node certificate as soon as it can read it: signature by
the SSH key it names, validity period, and that it names the static key ``rs`` that the
handshake itself authenticated — only the holder of that key's private half could have
completed the DH operations, so a copied certificate is useless. Message 4 lets the
responder's application refuse an authenticated peer with a reason (unknown key, not a
member) that the initiator can show its user; the initiator's connect returns only after
it. Bytes that arrive after the last handshake message belong to the transport phase and
are kept (:attr:`NoiseHandshake.leftover`).

States::

    initiator: START -initiate()-> SENT_1 -msg2-> SENT_3 -Accept-> DONE
                                                        -Reject-> raises ConnectionRejectedError
    responder: START -msg1-> SENT_2 -msg3-> DECIDING -accept()-> DONE
                                                     -reject()-> CLOSED
    any error -> FAILED (the error is raised; :meth:`failure_notice` may still tell the peer)
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from ..errors import (
    CertificateError,
    ConnectionRejectedError,
    DecryptionError,
    HandshakeError,
    P2prtError,
    PeerIdMismatchError,
    ProtocolError,
    VersionMismatchError,
)
from ..identity.certificate import NodeCertificate, NodeIdentity, PeerId
from .cipher import MAX_NOISE_MESSAGE, CipherState
from .control import Accept, Hello, Reject, Versions
from .frames import NOISE_HEADER, FrameDecoder, encode_frame
from .messages import decode_message, encode_message

__all__ = ["NoiseHandshake", "PeerInfo", "HandshakeState", "PROTOCOL_NAME", "PROTO_VERSION", "local_versions"]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"p2prt/1"
PROTO_VERSION = 2


def local_versions() -> Versions:
    """The versions this process announces in its handshake."""
    import importlib.metadata  # imported here: it pulls in ``socket``, not wanted at import

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return Versions(
        p2prt=dist("p2prt"),
        python=f"{sys.version_info.major}.{sys.version_info.minor}",
        cloudpickle=dist("cloudpickle"),
    )


@dataclass(frozen=True)
class PeerInfo:
    """The other side of a connection, as verified by the handshake."""

    certificate: NodeCertificate
    versions: Versions

    @property
    def user(self) -> str:
        return self.certificate.user

    @property
    def kind(self) -> str:
        return self.certificate.kind

    @property
    def peer_id(self) -> PeerId:
        return self.certificate.peer_id

    @property
    def ssh_public_key(self) -> str:
        return self.certificate.ssh_public_key

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint

    def __str__(self) -> str:
        return f"{self.user} ({self.fingerprint}, peer {self.peer_id.short})"


class HandshakeState(enum.Enum):
    START = "start"
    SENT_1 = "sent message 1"
    SENT_2 = "sent message 2"
    SENT_3 = "sent message 3"
    DECIDING = "deciding"
    DONE = "done"
    CLOSED = "closed"
    FAILED = "failed"


class NoiseHandshake:
    """One side of a handshake. Feed received bytes to :meth:`receive_data`; send what it
    returns. When :attr:`state` is ``DONE``, take :meth:`ciphers` and :attr:`leftover`."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        initiator: bool,
        expected_peer_id: PeerId | None = None,
        now: Callable[[], float] = time.time,
        versions: Versions | None = None,
    ) -> None:
        self.identity = identity
        self.initiator = initiator
        self.expected_peer_id = expected_peer_id
        self._now = now
        self._versions = versions or local_versions()
        self.state = HandshakeState.START
        self.peer: PeerInfo | None = None
        self.leftover = b""
        self._frames = FrameDecoder(MAX_NOISE_MESSAGE, NOISE_HEADER)
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._noise = NoiseConnection.from_name(PROTOCOL_NAME)
        if initiator:
            self._noise.set_as_initiator()
        else:
            self._noise.set_as_responder()
        self._noise.set_prologue(PROLOGUE)
        self._noise.set_keypair_from_private_bytes(Keypair.STATIC, identity.static_private)
        self._noise.start_handshake()
        # noiseprotocol drops the handshake state (and with it ``rs``) once it finishes.
        self._hs = self._noise.noise_protocol.handshake_state

    # -- public API -------------------------------------------------------------------

    def initiate(self) -> bytes:
        """Initiator only: message 1."""
        self._expect(HandshakeState.START, initiator=True)
        self.state = HandshakeState.SENT_1
        return encode_frame(bytes(self._noise.write_message(b"")), NOISE_HEADER)

    def receive_data(self, data: bytes) -> bytes:
        """Consume bytes from the peer; return bytes to send (possibly empty).

        Raises a :class:`~p2prt.errors.HandshakeError` subclass, :class:`DecryptionError`,
        or :class:`ConnectionRejectedError`; the state is then ``FAILED``.
        """
        if self.state in (HandshakeState.DONE, HandshakeState.DECIDING, HandshakeState.CLOSED):
            self.leftover += data
            return b""
        if self.state is HandshakeState.FAILED:
            raise HandshakeError("handshake already failed")
        try:
            self._frames.feed(data)
            out = bytearray()
            while self.state not in (HandshakeState.DONE, HandshakeState.DECIDING):
                frame = self._frames.next_frame()
                if frame is None:
                    break
                try:
                    out += self._step(frame)
                except P2prtError:
                    raise
                except Exception as exc:
                    # noiseprotocol and cryptography raise many types on hostile input
                    # (wrong lengths, invalid curve points); none may escape as-is.
                    raise HandshakeError(f"invalid handshake message ({self.state.value}): {exc!r}") from None
            if self.state in (HandshakeState.DONE, HandshakeState.DECIDING):
                self.leftover += self._frames.take_remaining()
            return bytes(out)
        except P2prtError:
            self.state = HandshakeState.FAILED
            raise

    def accept(self) -> bytes:
        """Responder only, in ``DECIDING``: accept the peer; returns the Accept message."""
        self._expect(HandshakeState.DECIDING, initiator=False)
        self.state = HandshakeState.DONE
        return self._transport_frame(encode_message(Accept()))

    def reject(self, reason: str, code: str = "rejected") -> bytes:
        """Responder only, in ``DECIDING``: refuse the peer with a reason it will see."""
        self._expect(HandshakeState.DECIDING, initiator=False)
        self.state = HandshakeState.CLOSED
        return self._transport_frame(encode_message(Reject(code, reason)))

    def failure_notice(self, error: BaseException) -> bytes:
        """After a failure, bytes that tell the peer why — when keys exist to encrypt them."""
        if self.initiator or self._send is None:
            return b""
        code = "certificate" if isinstance(error, CertificateError) else "handshake"
        return self._transport_frame(encode_message(Reject(code, f"handshake refused: {error}")))

    def ciphers(self) -> tuple[CipherState, CipherState]:
        """``(send, receive)`` transport ciphers; only once the state is ``DONE``."""
        if self.state is not HandshakeState.DONE or self._send is None or self._recv is None:
            raise HandshakeError(f"handshake is not complete (state: {self.state.value})")
        return self._send, self._recv

    @property
    def complete(self) -> bool:
        return self.state is HandshakeState.DONE

    # -- internals --------------------------------------------------------------------

    def _expect(self, state: HandshakeState, *, initiator: bool) -> None:
        if self.initiator != initiator or self.state is not state:
            role = "initiator" if self.initiator else "responder"
            raise HandshakeError(f"not allowed for the {role} in state {self.state.value}")

    def _step(self, frame: bytes) -> bytes:
        s = self.state
        if self.initiator and s is HandshakeState.SENT_1:
            self.peer = self._read_hello(frame, 2)
            msg3 = bytes(self._noise.write_message(encode_message(self._hello())))
            self._take_ciphers()  # writing message 3 finished the handshake
            self.state = HandshakeState.SENT_3
            return encode_frame(msg3, NOISE_HEADER)
        if self.initiator and s is HandshakeState.SENT_3:
            assert self._recv is not None
            reply = decode_message(self._recv.decrypt(frame))
            if isinstance(reply, Accept):
                self.state = HandshakeState.DONE
                return b""
            if isinstance(reply, Reject):
                raise ConnectionRejectedError(reply.reason, reply.code)
            raise HandshakeError(f"expected accept or reject, got {type(reply).__name__}")
        if not self.initiator and s is HandshakeState.START:
            try:
                payload = self._noise.read_message(frame)
            except (NoiseInvalidMessage, InvalidTag, ValueError) as exc:
                raise HandshakeError(f"invalid handshake message 1: {exc}") from None
            if payload:
                raise HandshakeError("handshake message 1 must not carry a payload")
            self.state = HandshakeState.SENT_2
            return encode_frame(bytes(self._noise.write_message(encode_message(self._hello()))), NOISE_HEADER)
        if not self.initiator and s is HandshakeState.SENT_2:
            self.peer = self._read_hello(frame, 3)
            self.state = HandshakeState.DECIDING
            return b""
        raise HandshakeError(f"unexpected handshake message in state {s.value}")

    def _hello(self) -> Hello:
        return Hello(PROTO_VERSION, self.identity.certificate.to_wire(), self._versions)

    def _read_hello(self, frame: bytes, number: int) -> PeerInfo:
        try:
            payload = bytes(self._noise.read_message(frame))
        except (NoiseInvalidMessage, InvalidTag) as exc:
            raise DecryptionError(f"handshake message {number} failed authentication (tampered or corrupted)") from exc
        except ValueError as exc:
            raise HandshakeError(f"invalid handshake message {number}: {exc}") from None
        if self._noise.handshake_finished:
            # Keys exist from here on, so even a refusal below can be sent encrypted.
            self._take_ciphers()
        try:
            hello = decode_message(payload)
        except ProtocolError as exc:
            raise HandshakeError(f"invalid handshake payload in message {number}: {exc}") from None
        if not isinstance(hello, Hello):
            raise HandshakeError(f"handshake message {number} carries {type(hello).__name__}, not Hello")
        if hello.proto != PROTO_VERSION:
            raise VersionMismatchError(
                f"peer speaks p2prt wire protocol {hello.proto}, this side {PROTO_VERSION} "
                f"(peer runs p2prt {hello.versions.p2prt}); upgrade the older side"
            )
        cert = NodeCertificate.from_wire(hello.certificate)
        cert.verify(static_key=bytes(self._hs.rs.public_bytes), now=self._now())
        if self.expected_peer_id is not None and cert.peer_id != self.expected_peer_id:
            raise PeerIdMismatchError(
                f"reached peer {cert.peer_id.short} ({cert.user}) but expected {self.expected_peer_id.short}"
            )
        return PeerInfo(cert, hello.versions)

    def _take_ciphers(self) -> None:
        proto = self._noise.noise_protocol
        enc, dec = proto.cipher_state_encrypt, proto.cipher_state_decrypt
        self._send = CipherState(enc.k, enc.n)
        self._recv = CipherState(dec.k, dec.n)

    def _transport_frame(self, plaintext: bytes) -> bytes:
        assert self._send is not None
        return encode_frame(self._send.encrypt(plaintext), NOISE_HEADER)
