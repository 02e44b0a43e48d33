"""Trust on first use for boards, like ssh's known_hosts.

``~/.config/p2prt/known_boards`` holds one line per board address::

    board.example.org:7790 SHA256:abc... ssh-ed25519 AAAA...

The first connection to an address records the board's identity key; later connections
must present the same key or fail with :class:`BoardKeyChangedError`, whose message
shows both fingerprints and how to resolve it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import config_dir
from ..errors import BoardKeyChangedError
from .keys import SshPublicKey

__all__ = ["KnownBoards"]


class KnownBoards:
    """The pinned board keys in one file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "known_boards"

    def _entries(self) -> dict[str, SshPublicKey]:
        out: dict[str, SshPublicKey] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 4 and not line.startswith("#"):
                out[parts[0]] = SshPublicKey.parse(" ".join(parts[2:4]))
        return out

    def lookup(self, address: str) -> SshPublicKey | None:
        return self._entries().get(address)

    def check(self, address: str, key: SshPublicKey) -> bool:
        """Accept ``key`` for ``address``: True if newly pinned, False if it matched.

        Raises :class:`BoardKeyChangedError` when a different key is pinned.
        """
        known = self.lookup(address)
        if known is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.path, "a") as f:
                f.write(f"{address} {key.fingerprint} {key.line}\n")
            os.chmod(self.path, 0o600)
            return True
        if known != key:
            raise BoardKeyChangedError(
                f"the board at {address} presents a different identity key than before!\n"
                f"  pinned:    {known.fingerprint}\n"
                f"  presented: {key.fingerprint}\n"
                "Someone may be impersonating the board, or its operator replaced its key. "
                f"If you trust the change (ask the operator for the new fingerprint), remove the "
                f"line for {address} from {self.path} and connect again."
            )
        return False

    def forget(self, address: str) -> None:
        entries = [line for line in self._read_lines() if line.split()[:1] != [address]]
        self.path.write_text("".join(f"{line}\n" for line in entries))

    def _read_lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
