"""SSH keys: generate, load (ours, ``cryptography``'s and real ``ssh-keygen``'s), sign, verify."""

from __future__ import annotations

import base64
import functools
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from p2prt.errors import IdentityError, KeyExistsError, KeyLoadError
from p2prt.identity.keys import (
    PASSPHRASE_ENV,
    SshKey,
    SshPublicKey,
    generate_ed25519,
    load_private_key,
    write_private_key,
)

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")
DATA = b"the quick brown fox"


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _p384() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


KEY_MAKERS: dict[str, Callable[[], object]] = {
    "ed25519": _ed25519,
    "rsa2048": _rsa,
    "ecdsa-p256": _p256,
    "ecdsa-p384": _p384,
}
EXPECTED_TYPES = {
    "ed25519": "ssh-ed25519",
    "rsa2048": "ssh-rsa",
    "ecdsa-p256": "ecdsa-sha2-nistp256",
    "ecdsa-p384": "ecdsa-sha2-nistp384",
}


@pytest.fixture(scope="module", params=sorted(KEY_MAKERS))
def crypto_key(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A key made with ``cryptography`` and written as an OpenSSH private key file."""
    kind: str = request.param
    key = KEY_MAKERS[kind]()
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path = tmp_path_factory.mktemp("keys") / f"id_{kind}"
    path.write_bytes(pem)
    path.chmod(0o600)
    return kind, path


@functools.cache
def _key_of_type(kind: str) -> SshKey:
    """One key of each type per test run (RSA generation is slow)."""
    return SshKey(KEY_MAKERS[kind]())  # type: ignore[arg-type]


def _ssh_keygen(*args: str) -> str:
    assert SSH_KEYGEN is not None
    done = subprocess.run([SSH_KEYGEN, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _ssh_keygen_fingerprint(path: Path) -> str:
    # "256 SHA256:abc... comment (ED25519)"
    return _ssh_keygen("-l", "-E", "sha256", "-f", str(path)).split()[1]


def _make_with_ssh_keygen(path: Path, key_type: str = "ed25519", passphrase: str = "") -> Path:
    extra = ["-b", "2048"] if key_type == "rsa" else []
    _ssh_keygen("-q", "-t", key_type, *extra, "-N", passphrase, "-C", "test@example", "-f", str(path))
    return path


def _flip_bit(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


# --- Ed25519: generate, sign, verify -------------------------------------------------------


def test_generate_ed25519_signs_and_verifies() -> None:
    key = generate_ed25519(comment="alice@laptop")
    assert key.public.key_type == "ssh-ed25519"
    assert key.comment == "alice@laptop"
    assert key.public.verify(key.sign(DATA), DATA)


def test_generated_keys_differ() -> None:
    assert generate_ed25519().public != generate_ed25519().public


def test_verify_rejects_tampered_signature() -> None:
    key = generate_ed25519()
    assert not key.public.verify(_flip_bit(key.sign(DATA)), DATA)


def test_verify_rejects_signature_of_other_data() -> None:
    key = generate_ed25519()
    assert not key.public.verify(key.sign(DATA), DATA + b"!")


def test_verify_rejects_another_keys_signature() -> None:
    alice, mallory = generate_ed25519(), generate_ed25519()
    assert not alice.public.verify(mallory.sign(DATA), DATA)


@pytest.mark.parametrize("signature", [b"", b"\x00", b"\x00" * 64, b"\xff" * 300])
def test_verify_rejects_garbage_signature_without_raising(signature: bytes) -> None:
    for kind in KEY_MAKERS:
        assert _key_of_type(kind).public.verify(signature, DATA) is False, kind


def test_repr_shows_type_and_fingerprint() -> None:
    key = generate_ed25519()
    assert key.public.fingerprint in repr(key)
    assert "ssh-ed25519" in repr(key)


def test_sshkey_refuses_unsupported_key_type() -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    with pytest.raises(KeyLoadError, match="unsupported"):
        SshKey(x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]


# --- RSA and ECDSA keys written by cryptography ---------------------------------------------


def test_openssh_file_from_cryptography_loads_signs_verifies(crypto_key: tuple[str, Path]) -> None:
    kind, path = crypto_key
    key = load_private_key(path)
    assert key.public.key_type == EXPECTED_TYPES[kind]
    assert key.public.verify(key.sign(DATA), DATA)
    assert not key.public.verify(key.sign(DATA), DATA + b"x")


def test_key_type_signatures_do_not_cross_verify(crypto_key: tuple[str, Path]) -> None:
    _, path = crypto_key
    key = load_private_key(path)
    other = SshKey(_p256()) if key.public.key_type != "ecdsa-sha2-nistp256" else generate_ed25519()
    assert not key.public.verify(other.sign(DATA), DATA)
    assert not other.public.verify(key.sign(DATA), DATA)


@needs_ssh_keygen
def test_fingerprint_matches_ssh_keygen(crypto_key: tuple[str, Path]) -> None:
    _, path = crypto_key
    assert load_private_key(path).public.fingerprint == _ssh_keygen_fingerprint(path)


def test_pkcs8_pem_private_key_loads() -> None:
    raw = _p256()
    pem = raw.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = Path.home() / "key.pem"
    path.write_bytes(pem)
    key = load_private_key(path)
    assert key.public == SshPublicKey.from_cryptography(raw.public_key())
    assert key.public.verify(key.sign(DATA), DATA)


# --- keys made by the real ssh-keygen -------------------------------------------------------


@needs_ssh_keygen
@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_loads_unencrypted_ssh_keygen_key(tmp_path: Path, key_type: str) -> None:
    path = _make_with_ssh_keygen(tmp_path / f"id_{key_type}", key_type)
    key = load_private_key(path)
    assert key.public.verify(key.sign(DATA), DATA)
    assert key.public.fingerprint == _ssh_keygen_fingerprint(path)
    assert key.public == SshPublicKey.parse((tmp_path / f"id_{key_type}.pub").read_text())


@pytest.fixture
def encrypted_key(tmp_path: Path) -> Path:
    """An Ed25519 key made by ``ssh-keygen -N secret``."""
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not installed")
    return _make_with_ssh_keygen(tmp_path / "id_enc", passphrase="secret")


def test_encrypted_key_loads_with_passphrase_from_env(encrypted_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "secret")
    key = load_private_key(encrypted_key)
    assert key.public == SshPublicKey.parse(encrypted_key.with_name("id_enc.pub").read_text())
    assert key.public.verify(key.sign(DATA), DATA)


def test_encrypted_key_loads_with_passphrase_argument(encrypted_key: Path) -> None:
    key = load_private_key(encrypted_key, passphrase=b"secret")
    assert key.public.fingerprint == _ssh_keygen_fingerprint(encrypted_key.with_name("id_enc.pub"))


def test_wrong_passphrase_is_a_key_load_error_that_says_so(
    encrypted_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-secret")
    with pytest.raises(KeyLoadError, match="passphrase"):
        load_private_key(encrypted_key)


def test_wrong_passphrase_is_a_key_load_error(encrypted_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-secret")
    with pytest.raises(KeyLoadError):
        load_private_key(encrypted_key)


def test_encrypted_key_without_passphrase_or_prompt_says_to_set_env(encrypted_key: Path) -> None:
    with pytest.raises(KeyLoadError) as info:
        load_private_key(encrypted_key)
    assert PASSPHRASE_ENV in str(info.value)
    assert str(encrypted_key) in str(info.value)


def test_prompt_is_called_and_its_answer_used(encrypted_key: Path) -> None:
    asked: list[str] = []

    def prompt(message: str) -> str:
        asked.append(message)
        return "secret"

    key = load_private_key(encrypted_key, prompt=prompt)
    assert len(asked) == 1
    assert str(encrypted_key) in asked[0]
    assert key.public.verify(key.sign(DATA), DATA)


def test_prompt_not_called_when_env_gives_passphrase(encrypted_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "secret")

    def prompt(message: str) -> str:
        raise AssertionError("prompted although P2PRT_KEY_PASSPHRASE is set")

    load_private_key(encrypted_key, prompt=prompt)


def test_wrong_answer_to_prompt_is_a_key_load_error(encrypted_key: Path) -> None:
    with pytest.raises(KeyLoadError):
        load_private_key(encrypted_key, prompt=lambda message: "wrong")


@pytest.mark.parametrize("with_prompt", [False, True], ids=["no-prompt", "prompt"])
def test_unencrypted_key_loads_while_passphrase_env_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_prompt: bool
) -> None:
    path = tmp_path / "id_ed25519"
    write_private_key(path, generate_ed25519())
    monkeypatch.setenv(PASSPHRASE_ENV, "for-another-key")
    key = load_private_key(path, prompt=(lambda message: "x") if with_prompt else None)
    assert key.public.verify(key.sign(DATA), DATA)


# --- load errors ----------------------------------------------------------------------------


def test_missing_key_file_is_key_load_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(KeyLoadError, match="nope"):
        load_private_key(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n", b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"],
    ids=["empty", "text", "broken-openssh"],
)
def test_garbage_key_file_is_key_load_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(content)
    with pytest.raises(KeyLoadError):
        load_private_key(path)


def test_public_key_file_is_not_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    write_private_key(path, generate_ed25519())
    with pytest.raises(KeyLoadError):
        load_private_key(path.with_name("id_ed25519.pub"))


def test_key_load_error_is_an_identity_error() -> None:
    assert issubclass(KeyLoadError, IdentityError)


# --- SshPublicKey.parse ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{line}",
        "{line} alice@laptop",
        "{line} a comment with several words",
        "  {line}   alice@laptop  \n",
        "{line}\tcomment-after-tab",
    ],
)
def test_parse_authorized_keys_line(template: str) -> None:
    key = generate_ed25519()
    parsed = SshPublicKey.parse(template.format(line=key.public.line))
    assert parsed == key.public
    assert parsed.fingerprint == key.public.fingerprint
    assert parsed.line == key.public.line
    assert parsed.verify(key.sign(DATA), DATA)


def test_parse_accepts_bytes() -> None:
    key = generate_ed25519()
    assert SshPublicKey.parse(f"{key.public.line} bob\n".encode()) == key.public


def test_public_keys_hash_by_blob() -> None:
    key = generate_ed25519()
    same = SshPublicKey.parse(key.public.line + " comment")
    assert {key.public, same} == {key.public}
    assert str(same) == key.public.line


@pytest.mark.parametrize("kind", sorted(KEY_MAKERS))
def test_parse_round_trips_every_key_type(kind: str) -> None:
    key = _key_of_type(kind)
    assert key.public.key_type == EXPECTED_TYPES[kind]
    assert SshPublicKey.parse(key.public.line) == key.public


def _garbage_lines() -> list[str]:
    ed = generate_ed25519().public
    blob_b64 = ed.line.split()[1]
    return [
        "",
        "   ",
        "ssh-ed25519",
        "ssh-ed25519 !!!not-base64!!!",
        "ssh-ed25519 AAAA",
        "ssh-ed25519 " + blob_b64[:-8],  # truncated blob
        "ssh-rsa " + blob_b64,  # type does not match the blob
        "ssh-unknown " + blob_b64,
        "hello world",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ]


@pytest.mark.parametrize("line", _garbage_lines())
def test_parse_garbage_is_key_load_error(line: str) -> None:
    with pytest.raises(KeyLoadError):
        SshPublicKey.parse(line)


def compressed_point_ecdsa_line() -> str:
    """An ``ecdsa-sha2-nistp256`` line whose point is in compressed form (OpenSSH only
    writes uncompressed points; cryptography refuses the others)."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    blob = b"".join(len(part).to_bytes(4, "big") + part for part in (b"ecdsa-sha2-nistp256", b"nistp256", point))
    return "ecdsa-sha2-nistp256 " + base64.b64encode(blob).decode()


def test_parse_an_ecdsa_key_with_a_compressed_point_is_key_load_error() -> None:
    # Regression (found by fuzzing): cryptography's NotImplementedError escaped parse, so
    # a certificate naming such a key broke DHT lookups with an unexpected exception.
    with pytest.raises(KeyLoadError, match="uncompressed point"):
        SshPublicKey.parse(compressed_point_ecdsa_line())


# --- write_private_key ----------------------------------------------------------------------


def test_write_private_key_mode_0600_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = generate_ed25519(comment="carol@desk")
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_private_key(path)
    assert loaded.public == key.public


def test_write_private_key_pub_line_parses_back(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = generate_ed25519(comment="carol@desk")
    write_private_key(path, key)
    pub_text = path.with_name("id_ed25519.pub").read_text()
    assert pub_text.endswith(" carol@desk\n")
    assert SshPublicKey.parse(pub_text) == key.public


def test_write_private_key_creates_missing_parent(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "id_ed25519"
    write_private_key(path, generate_ed25519())
    assert path.is_file()


@needs_ssh_keygen
def test_written_key_is_readable_by_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = generate_ed25519()
    write_private_key(path, key)
    # ssh-keygen -y derives the public key from the private file.
    assert SshPublicKey.parse(_ssh_keygen("-y", "-f", str(path))) == key.public
    assert _ssh_keygen_fingerprint(path) == key.public.fingerprint


def test_write_private_key_refuses_to_overwrite_private(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    first = generate_ed25519()
    write_private_key(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyExistsError, match="refusing to overwrite"):
        write_private_key(path, generate_ed25519())
    assert path.read_bytes() == before
    assert SshPublicKey.parse(path.with_name("id_ed25519.pub").read_text()) == first.public


def test_write_private_key_refuses_when_only_pub_exists(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    pub = path.with_name("id_ed25519.pub")
    pub.write_text("keep me\n")
    with pytest.raises(KeyExistsError):
        write_private_key(path, generate_ed25519())
    assert not path.exists()
    assert pub.read_text() == "keep me\n"


def test_write_private_key_with_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "id_ed25519"
    key = generate_ed25519()
    write_private_key(path, key, passphrase=b"hunter2")
    with pytest.raises(KeyLoadError, match=PASSPHRASE_ENV):
        load_private_key(path)
    assert load_private_key(path, passphrase=b"hunter2").public == key.public
