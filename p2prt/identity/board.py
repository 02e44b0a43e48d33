"""The board's identity: an Ed25519 key kept in the board's data folder."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import KeyExistsError
from .keys import SshKey, generate_ed25519, load_private_key, write_private_key

__all__ = ["load_or_create_board_key", "BOARD_KEY_FILE"]

BOARD_KEY_FILE = "board_ed25519"


def load_or_create_board_key(data_dir: str | os.PathLike[str]) -> SshKey:
    """Load ``DIR/board_ed25519``, creating it (mode 0600) on first use."""
    path = Path(data_dir) / BOARD_KEY_FILE
    if not path.exists():
        try:
            write_private_key(path, generate_ed25519(comment="p2prt-board"))
        except KeyExistsError:
            pass  # another process created it first
    return load_private_key(path)
