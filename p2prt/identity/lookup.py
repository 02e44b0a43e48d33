"""Finding the user's key: ``--key``, then config, then ``~/.ssh``, then p2prt's own."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from ..config import config_dir, load_user_config
from ..errors import KeyLoadError, KeyNotFoundError
from .keys import SshKey, generate_ed25519, load_private_key, write_private_key

__all__ = ["default_key_candidates", "find_key_path", "load_user_key", "keygen", "default_user_name"]


def default_key_candidates(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """The places searched, in order: ``explicit`` (``--key``), ``$P2PRT_KEY``, config
    ``key``, ``~/.ssh/id_ed25519``, ``~/.config/p2prt/id_ed25519``."""
    out: list[Path] = []
    if explicit is not None:
        out.append(Path(explicit).expanduser())
    env = os.environ.get("P2PRT_KEY", "").strip()
    if env:
        out.append(Path(env).expanduser())
    cfg = load_user_config()
    if cfg.key is not None:
        out.append(cfg.key)
    out.append(Path.home() / ".ssh" / "id_ed25519")
    out.append(config_dir() / "id_ed25519")
    return out


def find_key_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The first existing key file; an explicit or configured path must exist.

    Raises :class:`KeyNotFoundError` listing every place searched and how to make a key.
    """
    candidates = default_key_candidates(explicit)
    n_required = (
        (explicit is not None) + bool(os.environ.get("P2PRT_KEY", "").strip()) + (load_user_config().key is not None)
    )
    for i, p in enumerate(candidates):
        if p.is_file():
            return p
        if i < n_required:
            raise KeyNotFoundError(f"no key file at {p}")
    searched = ", ".join(str(p) for p in candidates)
    raise KeyNotFoundError(f"no SSH key found (searched {searched}); create one with: p2prt keygen")


def _prompt(message: str) -> str:
    if not sys.stdin or not sys.stdin.isatty():
        raise KeyLoadError(
            f"{message.removeprefix('Passphrase for ').rstrip(': ')} is passphrase-protected "
            "and there is no terminal to ask on: set P2PRT_KEY_PASSPHRASE"
        )
    try:
        return getpass.getpass(message)
    except EOFError:
        raise KeyLoadError("no passphrase given") from None


def load_user_key(explicit: str | os.PathLike[str] | None = None) -> SshKey:
    """Find and load the user's key, prompting for a passphrase on a terminal."""
    return load_private_key(find_key_path(explicit), prompt=_prompt)


def default_user_name() -> str:
    """The user name to claim: ``$P2PRT_USER``, else config ``user``, else the login name."""
    cfg = load_user_config()
    return os.environ.get("P2PRT_USER") or cfg.user or getpass.getuser()


def keygen(path: str | os.PathLike[str] | None = None, *, passphrase: bytes | None = None) -> tuple[Path, SshKey]:
    """Create an Ed25519 key at ``path`` (default ``~/.config/p2prt/id_ed25519``).

    Raises :class:`~p2prt.errors.KeyExistsError` rather than overwrite.
    """
    target = Path(path).expanduser() if path is not None else config_dir() / "id_ed25519"
    key = generate_ed25519(comment=f"{getpass.getuser()}@p2prt")
    write_private_key(target, key, passphrase=passphrase)
    return target, key
