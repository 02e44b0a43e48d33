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

__all__ = ["config_dir", "config_file", "UserConfig", "load_user_config", "Setting", "SETTINGS", "setting", "resolve"]


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/p2prt``, else ``~/.config/p2prt``."""
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "p2prt"


def config_file() -> Path:
    return config_dir() / "config.toml"


@dataclass(frozen=True)
class Setting:
    """One setting: its ``config.toml`` key, environment variable, flag, default."""

    name: str
    env: str
    flag: str | None
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("board", "P2PRT_BOARD", "--board", None, "the board's address, HOST:PORT"),
    Setting("user", "P2PRT_USER", "--user", None, "your account name on the board (default: your login name)"),
    Setting("key", "P2PRT_KEY", "--key", None, "your SSH private key (default: ~/.ssh/id_ed25519, then "
            "~/.config/p2prt/id_ed25519)"),
    Setting("cluster", "P2PRT_CLUSTER", None, None, "the cluster p2prt.init() uses when given none"),
    Setting("large_object_threshold", "P2PRT_LARGE_OBJECT_THRESHOLD", "init(large_object_threshold=...)",
            str(1 << 20), "bytes from which a task's value stays on the worker that made it"),
    Setting("nat_paths", "P2PRT_NAT_PATHS", None, "direct,punch,relay", "ways a script may reach a worker"),
    Setting("keepalive_timeout", "P2PRT_KEEPALIVE_TIMEOUT", None, "15",
            "seconds after which a silent peer's connection is declared dead (0: off)"),
    Setting("upgrade_interval", "P2PRT_UPGRADE_INTERVAL", None, "10",
            "seconds before a relayed connection first tries to go direct (then doubling, up to 8 times)"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class UserConfig:
    """Settings read from ``config.toml`` (all optional); ``extra`` holds the ones beyond
    identity (see :data:`SETTINGS`), as text."""

    key: Path | None = None
    user: str | None = None
    board: str | None = None
    cluster: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        if name == "key":
            return str(self.key) if self.key is not None else None
        if name in ("user", "board", "cluster"):
            value: str | None = getattr(self, name)
            return value
        return dict(self.extra).get(name)


def resolve(name: str, flag: str | None = None) -> tuple[str | None, str]:
    """The value of setting ``name`` and where it came from: ``flag`` (the command-line
    value, if given) > ``$P2PRT_*`` > ``config.toml`` > the default. Sources are
    ``"flag"``, ``"env P2PRT_..."``, ``"file PATH"``, ``"default"``."""
    spec = _BY_NAME[name]
    if flag is not None:
        return flag, "flag"
    env = os.environ.get(spec.env, "").strip()
    if env:
        return env, f"env {spec.env}"
    value = load_user_config().get(name)
    if value is not None:
        return value, f"file {config_file()}"
    return spec.default, "default"


def setting(name: str, flag: str | None = None) -> str | None:
    """:func:`resolve` without the source."""
    return resolve(name, flag)[0]


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
    known = set(_BY_NAME)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{p}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in data.items():
        if name in ("key", "user", "board", "cluster") and not isinstance(value, str):
            raise ConfigError(f'{p}: {name} must be a string, e.g. {name} = "..."')
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f'{p}: {name} must be a string or a number, e.g. {name} = "{_BY_NAME[name].default or "..."}"')
    key = Path(data["key"]).expanduser() if "key" in data else None
    extra = tuple((k, str(v)) for k, v in data.items() if k not in ("key", "user", "board", "cluster"))
    return UserConfig(key=key, user=data.get("user"), board=data.get("board"), cluster=data.get("cluster"), extra=extra)
