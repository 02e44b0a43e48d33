"""Where the user's key is found, the config file, ``keygen`` and the board's key.

Every test runs in a fake empty HOME (the autouse ``isolated_home`` fixture).
"""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p2prt.config import UserConfig, config_dir, config_file, load_user_config
from p2prt.errors import ConfigError, IdentityError, KeyExistsError, KeyLoadError, KeyNotFoundError
from p2prt.identity.board import BOARD_KEY_FILE, load_or_create_board_key
from p2prt.identity.keys import PASSPHRASE_ENV, SshKey, SshPublicKey, generate_ed25519, write_private_key
from p2prt.identity.lookup import (
    default_key_candidates,
    default_user_name,
    find_key_path,
    keygen,
    load_user_key,
)


def _key_at(path: Path) -> SshKey:
    key = generate_ed25519(comment=path.name)
    write_private_key(path, key)
    return key


def _write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def ssh_default(isolated_home: Path) -> Path:
    return isolated_home / ".ssh" / "id_ed25519"


@pytest.fixture
def p2prt_default(isolated_home: Path) -> Path:
    return isolated_home / ".config" / "p2prt" / "id_ed25519"


# --- lookup order ---------------------------------------------------------------------------


def test_explicit_key_wins_over_everything(tmp_path: Path, ssh_default: Path, p2prt_default: Path) -> None:
    configured = tmp_path / "configured"
    explicit = tmp_path / "explicit"
    for p in (explicit, configured, ssh_default, p2prt_default):
        _key_at(p)
    _write_config(f'key = "{configured}"\n')
    assert find_key_path(explicit) == explicit


def test_config_key_wins_over_default_places(tmp_path: Path, ssh_default: Path, p2prt_default: Path) -> None:
    configured = tmp_path / "configured"
    for p in (configured, ssh_default, p2prt_default):
        _key_at(p)
    _write_config(f'key = "{configured}"\n')
    assert find_key_path() == configured


def test_ssh_dir_wins_over_p2prt_config_dir(ssh_default: Path, p2prt_default: Path) -> None:
    _key_at(ssh_default)
    _key_at(p2prt_default)
    assert find_key_path() == ssh_default


def test_p2prt_config_dir_is_the_last_resort(p2prt_default: Path) -> None:
    _key_at(p2prt_default)
    assert find_key_path() == p2prt_default


def test_config_key_expands_tilde(isolated_home: Path) -> None:
    _key_at(isolated_home / "keys" / "mine")
    _write_config('key = "~/keys/mine"\n')
    assert find_key_path() == isolated_home / "keys" / "mine"


def test_explicit_key_expands_tilde(isolated_home: Path) -> None:
    _key_at(isolated_home / "k")
    assert find_key_path("~/k") == isolated_home / "k"


def test_candidates_in_order(tmp_path: Path, isolated_home: Path) -> None:
    _write_config(f'key = "{tmp_path / "configured"}"\n')
    assert default_key_candidates(tmp_path / "explicit") == [
        tmp_path / "explicit",
        tmp_path / "configured",
        isolated_home / ".ssh" / "id_ed25519",
        isolated_home / ".config" / "p2prt" / "id_ed25519",
    ]


def test_load_user_key_loads_the_key_found(ssh_default: Path) -> None:
    key = _key_at(ssh_default)
    assert load_user_key().public == key.public


# --- not found ------------------------------------------------------------------------------


def test_missing_explicit_key_is_an_error_naming_it(tmp_path: Path, ssh_default: Path) -> None:
    _key_at(ssh_default)  # must not be used instead of the key asked for
    missing = tmp_path / "no-such-key"
    with pytest.raises(KeyNotFoundError, match="no-such-key"):
        find_key_path(missing)


def test_missing_configured_key_is_an_error_naming_it(tmp_path: Path, ssh_default: Path) -> None:
    _key_at(ssh_default)
    _write_config(f'key = "{tmp_path / "configured-but-gone"}"\n')
    with pytest.raises(KeyNotFoundError, match="configured-but-gone"):
        find_key_path()


def test_no_key_anywhere_lists_places_and_suggests_keygen(ssh_default: Path, p2prt_default: Path) -> None:
    with pytest.raises(KeyNotFoundError) as info:
        find_key_path()
    message = str(info.value)
    assert str(ssh_default) in message
    assert str(p2prt_default) in message
    assert "p2prt keygen" in message


def test_load_user_key_with_nothing_anywhere() -> None:
    with pytest.raises(KeyNotFoundError, match="p2prt keygen"):
        load_user_key()


def test_directory_is_not_a_key(ssh_default: Path, p2prt_default: Path) -> None:
    ssh_default.mkdir(parents=True)
    _key_at(p2prt_default)
    assert find_key_path() == p2prt_default


@pytest.fixture
def encrypted_ssh_default(ssh_default: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An encrypted key made by ``ssh-keygen -N secret`` at ``~/.ssh/id_ed25519``; stdin is not a terminal."""
    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is None:
        pytest.skip("ssh-keygen is not installed")
    ssh_default.parent.mkdir(mode=0o700)
    subprocess.run([ssh_keygen, "-q", "-t", "ed25519", "-N", "secret", "-f", str(ssh_default)], check=True, timeout=60)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return ssh_default


def test_encrypted_key_without_terminal_says_to_set_env(encrypted_ssh_default: Path) -> None:
    with pytest.raises(IdentityError, match=PASSPHRASE_ENV):
        load_user_key()


def test_encrypted_key_without_terminal_is_a_key_load_error(encrypted_ssh_default: Path) -> None:
    with pytest.raises(KeyLoadError):
        load_user_key()


def test_encrypted_key_loads_with_env_passphrase(encrypted_ssh_default: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "secret")
    assert load_user_key().public == SshPublicKey.parse(encrypted_ssh_default.with_suffix(".pub").read_text())


# --- config dir and config.toml -------------------------------------------------------------


def test_config_dir_defaults_to_dot_config(isolated_home: Path) -> None:
    assert config_dir() == isolated_home / ".config" / "p2prt"
    assert config_file() == isolated_home / ".config" / "p2prt" / "config.toml"


def test_xdg_config_home_moves_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "p2prt"
    assert config_file() == tmp_path / "xdg" / "p2prt" / "config.toml"


def test_xdg_config_home_moves_last_resort_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, p2prt_default: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    _key_at(p2prt_default)  # the old place no longer counts
    moved = tmp_path / "xdg" / "p2prt" / "id_ed25519"
    _key_at(moved)
    assert find_key_path() == moved


def test_xdg_config_home_moves_config_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "p2prt").mkdir(parents=True)
    (tmp_path / "xdg" / "p2prt" / "config.toml").write_text('user = "dora"\n')
    assert load_user_config().user == "dora"


def test_missing_config_gives_defaults() -> None:
    assert load_user_config() == UserConfig()


def test_config_reads_every_setting(tmp_path: Path) -> None:
    _write_config(f'key = "{tmp_path / "k"}"\nuser = "erin"\nboard = "board.example:7000"\ncluster = "erin/lab"\n')
    assert load_user_config() == UserConfig(
        key=tmp_path / "k", user="erin", board="board.example:7000", cluster="erin/lab"
    )


def test_malformed_config_is_config_error() -> None:
    path = _write_config('key = "unterminated\n')
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load_user_config()
    assert path.exists()


def test_unknown_setting_is_config_error_naming_it() -> None:
    _write_config('colour = "blue"\n')
    with pytest.raises(ConfigError, match="colour"):
        load_user_config()


def test_non_string_setting_is_config_error() -> None:
    _write_config("key = 42\n")
    with pytest.raises(ConfigError, match="key"):
        load_user_config()


def test_non_utf8_config_is_config_error() -> None:
    path = config_file()
    path.parent.mkdir(parents=True)
    path.write_bytes(b'user = "\xff"\n')
    with pytest.raises(ConfigError):
        load_user_config()


def test_broken_config_stops_key_lookup(ssh_default: Path) -> None:
    _key_at(ssh_default)
    _write_config("this is not toml\n")
    with pytest.raises(ConfigError):
        find_key_path()


# --- user name ------------------------------------------------------------------------------


def test_user_name_from_config() -> None:
    _write_config('user = "frank"\n')
    assert default_user_name() == "frank"


def test_user_name_env_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # config.py: "flag > environment (P2PRT_*) > config.toml > default".
    _write_config('user = "frank"\n')
    monkeypatch.setenv("P2PRT_USER", "grace")
    assert default_user_name() == "grace"


def test_user_name_defaults_to_login_name() -> None:
    import getpass

    assert default_user_name() == getpass.getuser()


# --- keygen ---------------------------------------------------------------------------------


def test_keygen_default_path_and_mode(p2prt_default: Path) -> None:
    path, key = keygen()
    assert path == p2prt_default
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SshPublicKey.parse(path.with_name("id_ed25519.pub").read_text()) == key.public
    assert find_key_path() == path
    assert load_user_key().public == key.public


def test_keygen_explicit_path(tmp_path: Path) -> None:
    path, key = keygen(tmp_path / "sub" / "mykey")
    assert path == tmp_path / "sub" / "mykey"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_user_key(path).public == key.public


def test_keygen_expands_tilde(isolated_home: Path) -> None:
    path, _ = keygen("~/k")
    assert path == isolated_home / "k"


def test_keygen_honours_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path, _ = keygen()
    assert path == tmp_path / "xdg" / "p2prt" / "id_ed25519"


def test_keygen_refuses_to_overwrite() -> None:
    path, first = keygen()
    before = path.read_bytes()
    with pytest.raises(KeyExistsError, match="refusing to overwrite"):
        keygen()
    assert path.read_bytes() == before
    assert load_user_key().public == first.public


# --- board key ------------------------------------------------------------------------------


def test_board_key_created_once_then_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "board-data"
    first = load_or_create_board_key(data_dir)
    path = data_dir / BOARD_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    second = load_or_create_board_key(data_dir)
    assert second.public == first.public
    assert path.read_bytes() == content
    assert second.public.verify(first.sign(b"x"), b"x")


def test_board_key_is_ed25519(tmp_path: Path) -> None:
    assert load_or_create_board_key(tmp_path).public.key_type == "ssh-ed25519"


def test_board_keys_of_two_boards_differ(tmp_path: Path) -> None:
    assert load_or_create_board_key(tmp_path / "a").public != load_or_create_board_key(tmp_path / "b").public
