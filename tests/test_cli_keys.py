"""``p2prt keygen`` and ``p2prt id`` run as real subprocesses in a fake HOME."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import p2prt
from p2prt.errors import KeyLoadError
from p2prt.identity.keys import PASSPHRASE_ENV, SshPublicKey, load_private_key

SSH_KEYGEN = shutil.which("ssh-keygen")
def p2prt_cli(*args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2prt ARGS`` with this test's environment (fake HOME, no P2PRT_*)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "p2prt", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _field(output: str, label: str) -> str:
    """The value after ``label`` on its line (``Fingerprint: SHA256:...``)."""
    for line in output.splitlines():
        if line.lower().startswith(label.lower()):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in:\n{output}")


def _assert_one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("p2prt: error: ")
    return lines[0]


def test_keygen_creates_key_and_prints_fingerprint(isolated_home: Path) -> None:
    done = p2prt_cli("keygen", cwd=isolated_home)
    assert done.returncode == 0, done.stderr
    path = isolated_home / ".config" / "p2prt" / "id_ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_private_key(path)
    assert SshPublicKey.parse(path.with_name("id_ed25519.pub").read_text()) == key.public
    assert _field(done.stdout, "Fingerprint") == key.public.fingerprint
    assert key.public.line in done.stdout


def test_second_keygen_refuses_to_overwrite(isolated_home: Path) -> None:
    assert p2prt_cli("keygen", cwd=isolated_home).returncode == 0
    path = isolated_home / ".config" / "p2prt" / "id_ed25519"
    before = path.read_bytes()
    done = p2prt_cli("keygen", cwd=isolated_home)
    assert "refusing to overwrite" in _assert_one_line_error(done)
    assert path.read_bytes() == before


def test_keygen_file_option(isolated_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "keys" / "id_work"
    done = p2prt_cli("keygen", "--file", str(target), cwd=isolated_home)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _field(done.stdout, "Fingerprint") == load_private_key(target).public.fingerprint
    assert not (isolated_home / ".config" / "p2prt" / "id_ed25519").exists()


def test_keygen_with_passphrase_from_env(isolated_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "id_locked"
    done = p2prt_cli(
        "keygen", "--file", str(target), "--passphrase", cwd=isolated_home, extra_env={PASSPHRASE_ENV: "s3cret"}
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(KeyLoadError, match=PASSPHRASE_ENV):
        load_private_key(target)
    key = load_private_key(target, passphrase=b"s3cret")
    assert _field(done.stdout, "Fingerprint") == key.public.fingerprint


def test_keygen_with_passphrase_never_shows_a_traceback(isolated_home: Path) -> None:
    done = p2prt_cli("keygen", "--passphrase", cwd=isolated_home, extra_env={PASSPHRASE_ENV: "s3cret"})
    assert "Traceback" not in done.stderr
    if done.returncode != 0:
        _assert_one_line_error(done)


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")
def test_id_prints_same_fingerprint_as_ssh_keygen(isolated_home: Path) -> None:
    assert SSH_KEYGEN is not None
    ssh_key = isolated_home / ".ssh" / "id_ed25519"
    ssh_key.parent.mkdir(mode=0o700)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_key)], check=True, timeout=60)
    expected = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(ssh_key)], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()[1]

    done = p2prt_cli("id", cwd=isolated_home)
    assert done.returncode == 0, done.stderr
    assert _field(done.stdout, "fingerprint") == expected
    assert _field(done.stdout, "key file") == str(ssh_key)


def test_id_shows_user_name_from_env(isolated_home: Path) -> None:
    assert p2prt_cli("keygen", cwd=isolated_home).returncode == 0
    done = p2prt_cli("id", cwd=isolated_home, extra_env={"P2PRT_USER": "heidi"})
    assert done.returncode == 0, done.stderr
    assert _field(done.stdout, "user") == "heidi"


def test_id_with_explicit_key(isolated_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "other"
    assert p2prt_cli("keygen", "--file", str(target), cwd=isolated_home).returncode == 0
    done = p2prt_cli("id", "--key", str(target), cwd=isolated_home)
    assert done.returncode == 0, done.stderr
    assert _field(done.stdout, "fingerprint") == load_private_key(target).public.fingerprint


def test_id_with_missing_key_is_a_clear_error(isolated_home: Path) -> None:
    done = p2prt_cli("id", "--key", "/nonexistent", cwd=isolated_home)
    assert "/nonexistent" in _assert_one_line_error(done)


def test_id_with_no_key_anywhere_suggests_keygen(isolated_home: Path) -> None:
    done = p2prt_cli("id", cwd=isolated_home)
    assert "p2prt keygen" in _assert_one_line_error(done)


def test_id_with_encrypted_key_and_no_terminal(isolated_home: Path) -> None:
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not installed")
    ssh_key = isolated_home / ".ssh" / "id_ed25519"
    ssh_key.parent.mkdir(mode=0o700)
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "pw", "-f", str(ssh_key)], check=True, timeout=60)
    done = p2prt_cli("id", cwd=isolated_home)
    assert PASSPHRASE_ENV in _assert_one_line_error(done)


def test_broken_config_is_a_one_line_error(isolated_home: Path) -> None:
    config = isolated_home / ".config" / "p2prt" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("nonsense = = =\n")
    done = p2prt_cli("id", cwd=isolated_home)
    assert "config.toml" in _assert_one_line_error(done)


def test_version(isolated_home: Path) -> None:
    done = p2prt_cli("--version", cwd=isolated_home)
    assert done.returncode == 0
    assert done.stdout.strip() == f"p2prt {p2prt.__version__}"


def test_no_arguments_prints_help(isolated_home: Path) -> None:
    done = p2prt_cli(cwd=isolated_home)
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith("usage: p2prt")
    assert "keygen" in done.stdout
    assert "id" in done.stdout


def test_keygen_help(isolated_home: Path) -> None:
    done = p2prt_cli("keygen", "--help", cwd=isolated_home)
    assert done.returncode == 0
    assert "--passphrase" in done.stdout
    assert "--file" in done.stdout
