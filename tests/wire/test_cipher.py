"""Our transport CipherState against noiseprotocol's own, after a real Noise handshake.

Two noiseprotocol ``NoiseConnection`` objects complete a handshake; then one of them keeps
talking through noiseprotocol while the other side's traffic goes through our
:class:`CipherState`, built from the keys that side's ``Split()`` produced.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from noise.connection import NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from p2prt.errors import DecryptionError
from p2prt.wire.cipher import MAX_NOISE_MESSAGE, MAX_PLAINTEXT, TAG_SIZE, CipherState

PROTOCOLS = pytest.mark.parametrize(
    "name", [b"Noise_NN_25519_ChaChaPoly_BLAKE2b", b"Noise_NN_25519_ChaChaPoly_SHA256"], ids=["blake2b", "sha256"]
)


class Endpoints:
    """``theirs``: a noiseprotocol connection in transport mode. ``send``/``recv``: our
    ciphers for the other end of that connection."""

    def __init__(self, name: bytes = b"Noise_NN_25519_ChaChaPoly_BLAKE2b") -> None:
        initiator = NoiseConnection.from_name(name)
        initiator.set_as_initiator()
        initiator.start_handshake()
        responder = NoiseConnection.from_name(name)
        responder.set_as_responder()
        responder.start_handshake()
        responder.read_message(initiator.write_message())
        initiator.read_message(responder.write_message())
        assert initiator.handshake_finished and responder.handshake_finished
        self.theirs = responder
        ours = initiator.noise_protocol
        self.send = CipherState(ours.cipher_state_encrypt.k)
        self.recv = CipherState(ours.cipher_state_decrypt.k)
        assert ours.cipher_state_encrypt.k != ours.cipher_state_decrypt.k

    @property
    def their_send_nonce(self) -> int:
        return int(self.theirs.noise_protocol.cipher_state_encrypt.n)

    @property
    def their_recv_nonce(self) -> int:
        return int(self.theirs.noise_protocol.cipher_state_decrypt.n)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@PROTOCOLS
def test_noiseprotocol_decrypts_ours(name: bytes) -> None:
    e = Endpoints(name)
    for i in range(5):
        plaintext = f"message {i}".encode()
        ciphertext = e.send.encrypt(plaintext)
        assert len(ciphertext) == len(plaintext) + TAG_SIZE
        assert e.theirs.decrypt(ciphertext) == plaintext
    assert e.their_recv_nonce == 5


@PROTOCOLS
def test_we_decrypt_noiseprotocol(name: bytes) -> None:
    e = Endpoints(name)
    for i in range(5):
        plaintext = f"reply {i}".encode()
        assert e.recv.decrypt(e.theirs.encrypt(plaintext)) == plaintext
    assert e.their_send_nonce == 5


def test_interleaved_both_directions() -> None:
    e = Endpoints()
    for i in range(20):
        if i % 3:
            assert e.theirs.decrypt(e.send.encrypt(bytes([i]) * i)) == bytes([i]) * i
        else:
            assert e.recv.decrypt(e.theirs.encrypt(bytes([i]) * i)) == bytes([i]) * i


@given(messages=st.lists(st.binary(max_size=2000), max_size=10))
def test_interoperates_on_arbitrary_messages(messages: list[bytes]) -> None:
    e = Endpoints()
    for m in messages:
        assert e.theirs.decrypt(e.send.encrypt(m)) == m
        assert e.recv.decrypt(e.theirs.encrypt(m)) == m


@pytest.mark.parametrize("nonce", [1, 255, 256, 2**32 + 5, 2**63 + 7])
def test_nonce_encoding_matches_at_large_counters(nonce: int) -> None:
    # Catches byte-order or width mistakes in the 4-zero-bytes + 64-bit little-endian nonce.
    e = Endpoints()
    e.theirs.noise_protocol.cipher_state_decrypt.n = nonce
    e.theirs.noise_protocol.cipher_state_encrypt.n = nonce
    send = CipherState(e.theirs.noise_protocol.cipher_state_decrypt.k, nonce)
    recv = CipherState(e.theirs.noise_protocol.cipher_state_encrypt.k, nonce)
    assert e.theirs.decrypt(send.encrypt(b"far along")) == b"far along"
    assert recv.decrypt(e.theirs.encrypt(b"far along too")) == b"far along too"


def test_nonces_advance() -> None:
    e = Endpoints()
    first = e.send.encrypt(b"same")
    second = e.send.encrypt(b"same")
    assert first != second  # a fresh nonce each time
    # Out of order fails: the receiver expects nonce 0 first.
    with pytest.raises(NoiseInvalidMessage):
        e.theirs.decrypt(second)
    assert e.theirs.decrypt(first) == b"same"
    assert e.theirs.decrypt(second) == b"same"


def test_replay_is_refused() -> None:
    e = Endpoints()
    ciphertext = e.theirs.encrypt(b"once")
    assert e.recv.decrypt(ciphertext) == b"once"
    with pytest.raises(DecryptionError):
        e.recv.decrypt(ciphertext)


def test_out_of_order_is_refused_and_recoverable() -> None:
    e = Endpoints()
    first = e.theirs.encrypt(b"first")
    second = e.theirs.encrypt(b"second")
    with pytest.raises(DecryptionError):
        e.recv.decrypt(second)
    assert e.recv.decrypt(first) == b"first"
    assert e.recv.decrypt(second) == b"second"


def test_every_single_bit_flip_is_detected_and_the_nonce_stays() -> None:
    e = Endpoints()
    ciphertext = e.theirs.encrypt(b"tamper-proof")
    for bit in range(len(ciphertext) * 8):
        with pytest.raises(DecryptionError):
            e.recv.decrypt(flip(ciphertext, bit))
    # None of the failures advanced the nonce: the genuine message still decrypts.
    assert e.recv.decrypt(ciphertext) == b"tamper-proof"
    assert e.recv.decrypt(e.theirs.encrypt(b"next")) == b"next"


@pytest.mark.parametrize(
    "mangle",
    [lambda c: c[:-1], lambda c: c[: TAG_SIZE - 1], lambda c: b"", lambda c: c + b"\x00"],
    ids=["short-by-one", "shorter-than-tag", "empty", "extra-byte"],
)
def test_truncated_or_extended_ciphertext_is_refused(mangle: Callable[[bytes], bytes]) -> None:
    e = Endpoints()
    ciphertext = e.theirs.encrypt(b"length matters")
    with pytest.raises(DecryptionError):
        e.recv.decrypt(mangle(ciphertext))
    assert e.recv.decrypt(ciphertext) == b"length matters"


def test_wrong_key_is_refused() -> None:
    a, b = Endpoints(), Endpoints()
    with pytest.raises(DecryptionError):
        a.recv.decrypt(b.theirs.encrypt(b"not for you"))


def test_largest_plaintext() -> None:
    assert MAX_PLAINTEXT == 65_519
    assert MAX_NOISE_MESSAGE == 65_535
    e = Endpoints()
    plaintext = bytes(range(256)) * 255 + bytes(range(239))
    assert len(plaintext) == 65_519
    ciphertext = e.send.encrypt(plaintext)
    assert len(ciphertext) == 65_535
    assert e.theirs.decrypt(ciphertext) == plaintext
    assert e.recv.decrypt(e.theirs.encrypt(plaintext)) == plaintext


def test_oversized_plaintext_is_refused_without_using_a_nonce() -> None:
    e = Endpoints()
    with pytest.raises(ValueError, match="65519"):
        e.send.encrypt(b"\x00" * 65_520)
    # The failed call did not consume nonce 0.
    assert e.theirs.decrypt(e.send.encrypt(b"ok")) == b"ok"


def test_accepts_any_buffer() -> None:
    e = Endpoints()
    assert e.theirs.decrypt(e.send.encrypt(bytearray(b"bytearray"))) == b"bytearray"
    assert e.theirs.decrypt(e.send.encrypt(memoryview(b"__memoryview__")[2:-2])) == b"memoryview"
    ciphertext = e.theirs.encrypt(b"view")
    assert e.recv.decrypt(memoryview(bytearray(ciphertext))) == b"view"


def test_empty_plaintext() -> None:
    e = Endpoints()
    ciphertext = e.send.encrypt(b"")
    assert len(ciphertext) == TAG_SIZE
    assert e.theirs.decrypt(ciphertext) == b""
