"""Noise transport ciphers (ChaChaPoly), one per direction.

After the handshake's ``Split()``, noiseprotocol holds a key and nonce per direction. We
take them over into :class:`CipherState`, which calls ``cryptography``'s AEAD directly:
it accepts any buffer (no copy to ``bytes``) and keeps the object and nonce in local
attributes. Nonces follow the Noise specification for ChaChaPoly: 4 zero bytes then the
64-bit counter little-endian. A test checks interoperability with noiseprotocol itself.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import DecryptionError

__all__ = ["CipherState", "MAX_NOISE_MESSAGE", "MAX_PLAINTEXT", "TAG_SIZE"]

MAX_NOISE_MESSAGE = 65535
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - TAG_SIZE  # 65,519
_NONCE_PREFIX = b"\x00\x00\x00\x00"


class CipherState:
    """Encrypts or decrypts the messages of one direction, counting nonces."""

    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes, nonce: int = 0) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = nonce

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"Noise plaintext is limited to {MAX_PLAINTEXT} bytes")
        nonce = _NONCE_PREFIX + self._n.to_bytes(8, "little")
        self._n += 1
        return self._aead.encrypt(nonce, plaintext, None)

    def encrypt_into(self, plaintext: bytes | bytearray | memoryview, out: memoryview) -> int:
        """Encrypt into ``out`` (exactly ``len(plaintext) + TAG_SIZE`` bytes); returns that size."""
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"Noise plaintext is limited to {MAX_PLAINTEXT} bytes")
        nonce = _NONCE_PREFIX + self._n.to_bytes(8, "little")
        self._n += 1
        return self._aead.encrypt_into(nonce, plaintext, None, out)

    def decrypt_into(self, ciphertext: bytes | bytearray | memoryview, out: memoryview) -> int:
        """Decrypt into ``out`` (exactly ``len(ciphertext) - TAG_SIZE`` bytes)."""
        nonce = _NONCE_PREFIX + self._n.to_bytes(8, "little")
        try:
            n = self._aead.decrypt_into(nonce, ciphertext, None, out)
        except InvalidTag:
            raise DecryptionError("a Noise message failed authentication (tampered or corrupted)") from None
        self._n += 1
        return n

    def decrypt(self, ciphertext: bytes | bytearray | memoryview) -> bytes:
        nonce = _NONCE_PREFIX + self._n.to_bytes(8, "little")
        try:
            out = self._aead.decrypt(nonce, ciphertext, None)
        except InvalidTag:
            raise DecryptionError("a Noise message failed authentication (tampered or corrupted)") from None
        self._n += 1
        return out
