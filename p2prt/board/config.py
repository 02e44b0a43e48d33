"""The board's settings, one frozen object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .client import DEFAULT_BOARD_PORT
from .scheduler import SchedulerConfig

__all__ = ["BoardConfig", "REGISTRATION_POLICIES"]

REGISTRATION_POLICIES = ("closed", "open")


@dataclass(frozen=True)
class BoardConfig:
    """Everything ``p2prt board`` can be told; the defaults suit a small shared board."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_BOARD_PORT
    registration: str = "closed"
    heartbeat_interval: float = 5.0
    tick_interval: float = 0.5
    handshake_timeout: float = 10.0
    max_pending_handshakes: int = 1024
    outbox_size: int = 10_000
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    dht: bool = True
    """Run the cluster's bootstrap DHT node (UDP) next to the board."""
    relay: bool = True
    """Relay connections between peers that cannot reach each other (on ``relay_port``)."""
    relay_port: int = 0
    """TCP port of the relay (0: any free port; peers learn it from the welcome)."""
    max_relays: int = 64
    """Relayed connections at once (waiting ones included)."""
    relay_rate: int = 0
    """Bytes per second per direction of each relayed connection (0: no cap)."""
    dht_host: str | None = None
    """Address the DHT node binds; default: ``host``, unless that is a wildcard (then no
    DHT node: peers find each other through the board)."""

    def __post_init__(self) -> None:
        if self.registration not in REGISTRATION_POLICIES:
            raise ConfigError(f"registration must be one of {', '.join(REGISTRATION_POLICIES)}")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"bad port {self.port}")
