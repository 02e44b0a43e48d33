"""SSH keys: a user's identity is the OpenSSH key pair they already have.

Loading, generating, signing and verifying with ``cryptography``. Ed25519 is the
default; RSA (signatures ``rsa-sha2-256``) and ECDSA (NIST P-256/384/521) work too.
Fingerprints use the ``SHA256:<base64>`` form that ``ssh-keygen -l`` prints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ..errors import KeyExistsError, KeyLoadError

__all__ = [
    "SshPublicKey",
    "SshKey",
    "load_private_key",
    "generate_ed25519",
    "write_private_key",
    "PASSPHRASE_ENV",
]

PASSPHRASE_ENV = "P2PRT_KEY_PASSPHRASE"

_PrivateKey = Union[ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
_PublicKey = Union[ed25519.Ed25519PublicKey, rsa.RSAPublicKey, ec.EllipticCurvePublicKey]

_EC_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


def _ec_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    try:
        return _EC_HASHES[curve.name]()
    except KeyError:
        raise KeyLoadError(f"unsupported ECDSA curve {curve.name}") from None


@dataclass(frozen=True)
class SshPublicKey:
    """An SSH public key, compared by its wire-format blob.

    ``SshPublicKey.parse("ssh-ed25519 AAAA... comment")`` accepts an
    ``authorized_keys``-style line (the comment is dropped).
    """

    key_type: str
    blob: bytes
    _key: _PublicKey = field(compare=False, repr=False, hash=False)

    @classmethod
    def parse(cls, line: str | bytes) -> SshPublicKey:
        """Parse an OpenSSH public key line; raise :class:`KeyLoadError` if it is not one."""
        text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
        parts = text.strip().split()
        if len(parts) < 2:
            raise KeyLoadError(f"not an OpenSSH public key: {text[:60]!r}")
        try:
            blob = base64.b64decode(parts[1], validate=True)
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        except (ValueError, binascii.Error, UnsupportedAlgorithm, NotImplementedError) as exc:
            # cryptography raises NotImplementedError for an ECDSA key whose point is not
            # uncompressed: a line from a peer (a certificate) may be anything.
            raise KeyLoadError(f"not a usable OpenSSH public key ({exc})") from None
        if not isinstance(key, (ed25519.Ed25519PublicKey, rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise KeyLoadError(f"unsupported SSH key type {parts[0]}")
        return cls(parts[0], blob, key)

    @classmethod
    def from_cryptography(cls, key: _PublicKey) -> SshPublicKey:
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return cls.parse(line)

    @property
    def line(self) -> str:
        """``"<type> <base64>"``, the form stored in accounts and certificates."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` exactly as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``data``."""
        key = self._key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:
                key.verify(signature, data, ec.ECDSA(_ec_hash(key.curve)))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return self.line


class SshKey:
    """A user's (or board's) private SSH key that can sign."""

    def __init__(self, key: _PrivateKey, comment: str = "") -> None:
        if not isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise KeyLoadError(f"unsupported private key type {type(key).__name__}")
        self._key = key
        self.comment = comment
        self.public = SshPublicKey.from_cryptography(key.public_key())

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (Ed25519; RSA PKCS#1 v1.5 SHA-256; ECDSA with the curve's hash)."""
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return key.sign(data, ec.ECDSA(_ec_hash(key.curve)))

    def private_bytes(self, passphrase: bytes | None = None) -> bytes:
        """The key in OpenSSH private format, encrypted when a passphrase is given."""
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc)

    def __repr__(self) -> str:
        return f"<SshKey {self.public.key_type} {self.public.fingerprint}>"


def generate_ed25519(comment: str = "") -> SshKey:
    """A fresh Ed25519 key pair."""
    return SshKey(ed25519.Ed25519PrivateKey.generate(), comment)


def load_private_key(
    path: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    prompt: Callable[[str], str] | None = None,
) -> SshKey:
    """Load an OpenSSH (or PEM) private key file.

    For an encrypted key the passphrase comes from ``passphrase``, else the environment
    variable ``P2PRT_KEY_PASSPHRASE``, else ``prompt`` (e.g. ``getpass.getpass``).
    Raises :class:`KeyLoadError` with the path and the reason when the key cannot be used.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise KeyLoadError(f"cannot read key {p}: {exc.strerror}") from None
    if passphrase is None and PASSPHRASE_ENV in os.environ:
        passphrase = os.environ[PASSPHRASE_ENV].encode()
    try:
        key = _load(data, passphrase, p)
    except _NeedsPassphrase:
        if prompt is None:
            raise KeyLoadError(f"key {p} is passphrase-protected: set {PASSPHRASE_ENV} or run interactively") from None
        key = _load(data, prompt(f"Passphrase for {p}: ").encode(), p)
    return SshKey(key, comment=p.name)


class _NeedsPassphrase(Exception):
    pass


def _load(data: bytes, passphrase: bytes | None, path: Path) -> _PrivateKey:
    """Load with the one loader that fits the data's armour.

    A passphrase given for an unencrypted key is ignored (the environment variable may be
    meant for another key); an encrypted key without one raises :class:`_NeedsPassphrase`.
    """
    openssh = b"-----BEGIN OPENSSH PRIVATE KEY-----" in data
    loader = serialization.load_ssh_private_key if openssh else serialization.load_pem_private_key
    try:
        try:
            key = loader(data, password=passphrase)
        except TypeError:
            if passphrase is None:
                raise _NeedsPassphrase() from None
            key = loader(data, password=None)  # not encrypted after all
    except UnsupportedAlgorithm as exc:
        raise KeyLoadError(f"cannot use key {path}: {exc}") from None
    except ValueError as exc:
        if passphrase is not None and openssh:
            raise KeyLoadError(f"wrong passphrase for key {path}") from None
        if passphrase is not None and "decrypt" in str(exc).lower():
            raise KeyLoadError(f"wrong passphrase for key {path}") from None
        kind = "OpenSSH" if openssh else "PEM"
        raise KeyLoadError(f"not a usable {kind} private key: {path} ({exc})") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise KeyLoadError(f"unsupported private key type {type(key).__name__} in {path}")
    return key


def write_private_key(path: str | os.PathLike[str], key: SshKey, *, passphrase: bytes | None = None) -> None:
    """Write ``key`` (mode 0600) and ``<path>.pub`` (mode 0644); never overwrite.

    Raises :class:`KeyExistsError` when either file exists.
    """
    p = Path(path)
    pub = p.with_name(p.name + ".pub")
    for existing in (p, pub):
        if existing.exists():
            raise KeyExistsError(f"{existing} already exists; refusing to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyExistsError(f"{p} already exists; refusing to overwrite it") from None
    try:
        pem = key.private_bytes(passphrase)
    except UnsupportedAlgorithm as exc:
        os.close(fd)
        p.unlink()
        raise KeyLoadError(f"cannot write an encrypted key: {exc}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(p, 0o600)
    comment = f" {key.comment}" if key.comment else ""
    pub.write_text(f"{key.public.line}{comment}\n")
