"""A worker's configuration and its per-client connection state."""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..transport import MessageChannel, Outbox
from ..transport.replies import Replies
from ..wire import board as bm
from ..wire.handshake import PeerInfo
from ..wire.messages import Message
from .pool import ExecTask

__all__ = ["WorkerConfig", "ClientConn", "only_peer"]


@dataclass(frozen=True)
class WorkerConfig:
    board_address: str
    cluster: str
    slots: int
    resources: Mapping[str, float] = field(default_factory=dict)
    listen_host: str = "0.0.0.0"
    listen_port: int = 0
    announce: tuple[str, ...] = ()
    memory_limit: int | None = None
    cpu_time_limit: int | None = None
    sandbox: bool = False


@dataclass(eq=False)
class ClientConn:
    channel: MessageChannel
    leases: dict[str, bm.LeaseTicket] = field(default_factory=dict)
    fns: dict[bytes, bytes] = field(default_factory=dict)
    fn_bytes: int = 0
    # Leases of several CPUs run one task at a time; the rest wait here, per lease.
    held: dict[str, collections.deque[ExecTask]] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    tasks: dict[int, tuple[int, str]] = field(default_factory=dict)  # pool id -> (client id, lease)
    holds: dict[int, tuple[bytes, int]] = field(default_factory=dict)  # pool id -> (object id, hold_over)
    replies: Replies = field(default_factory=Replies)
    path: str = "direct"  # or "punched", "relayed"
    outbox: Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.channel)

    def enqueue(self, msg: Message) -> None:
        self.outbox.put(msg)

    async def request(self, make: Callable[[int], Message]) -> Message:
        rid = self.replies.register()
        self.enqueue(make(rid))
        reply: Message = await self.replies.wait(rid)
        return reply


def only_peer(peer_id: bytes) -> Callable[[PeerInfo], str | None]:
    """An authorizer that accepts exactly the peer a punch or relay was set up for."""
    expected = bytes(peer_id)

    def authorize(peer: PeerInfo) -> str | None:
        return None if bytes(peer.peer_id) == expected else "not the peer this connection was set up for"

    return authorize
