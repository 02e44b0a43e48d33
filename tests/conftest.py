"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

_SCRUBBED_ENV = (
    "XDG_CONFIG_HOME",
    "P2PRT_KEY_PASSPHRASE",
    "P2PRT_USER",
    "P2PRT_BOARD",
    "SSH_AUTH_SOCK",
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME at a fresh empty folder and drop p2prt's environment variables.

    No test ever reads or writes the real ``~/.ssh`` or ``~/.config``, and a developer's
    own ``P2PRT_*`` settings cannot change a test's outcome. Returns the fake home.
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in _SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)
    return home
