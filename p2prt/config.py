"""Where p2prt keeps its files, and the user configuration file.

Precedence for every setting: command-line flag > environment (``P2PRT_*``) >
``~/.config/p2prt/config.toml`` > built-in default. ``$XDG_CONFIG_HOME`` moves
``~/.config``. Nothing here writes files or reads them at import time.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["config_dir", "config_file", "UserConfig", "load_user_config"]


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/p2prt``, else ``~/.config/p2prt``."""
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "p2prt"


def config_file() -> Path:
    return config_dir() / "config.toml"


@dataclass(frozen=True)
class UserConfig:
    """Settings read from ``config.toml`` (all optional)."""

    key: Path | None = None
    user: str | None = None
    board: str | None = None
    cluster: str | None = None


def load_user_config(path: Path | None = None) -> UserConfig:
    """Read ``config.toml``; a missing file gives the defaults, a broken one :class:`ConfigError`."""
    p = path or config_file()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return UserConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    known = {"key", "user", "board", "cluster"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in data.items():
        if not isinstance(value, str):
            raise ConfigError(f"{p}: {name} must be a string")
    key = Path(data["key"]).expanduser() if "key" in data else None
    return UserConfig(key=key, user=data.get("user"), board=data.get("board"), cluster=data.get("cluster"))
