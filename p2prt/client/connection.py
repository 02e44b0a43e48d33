"""One Noise connection from a client to a worker, carrying several leases.

Outgoing messages are queued synchronously (``enqueue``) and written by one writer task
in batches: whatever accumulated while the previous write was in flight goes out in one
``send_all``. Replies to ``Attach`` are matched by request id; everything else goes to
the runtime's handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import P2prtError
from ..transport import MessageChannel, Outbox
from ..transport.replies import Replies
from ..wire.board import LeaseTicket
from ..wire.control import ErrorReply
from ..wire.messages import Message
from ..wire.peer import Attach, Attached, FetchedObjects, FetchObjects, ObjectValue, Stats, StatsRequest

__all__ = ["WorkerConnection", "ClientLease"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientLease:
    ticket: LeaseTicket
    shape: tuple[int, tuple[tuple[str, float], ...]]
    conn: WorkerConnection | None = None
    inflight: set[int] = field(default_factory=set)
    active: bool = False
    draining: bool = False
    idle_since: float = 0.0
    last_result: float = 0.0

    @property
    def lease_id(self) -> str:
        return self.ticket.lease_id


class WorkerConnection:
    def __init__(self, channel: MessageChannel, on_message: Callable[[WorkerConnection, Message], None]) -> None:
        self.channel = channel
        self.peer_id = bytes(channel.peer.peer_id)
        self.name = channel.peer.user
        self.host = ""
        self.leases: dict[str, ClientLease] = {}
        self.sent_fns: set[bytes] = set()
        self.inflight: dict[int, Any] = {}
        self.closed = False
        self.path = "direct"  # or "punched", "relayed"
        self.retired = False  # replaced by a better path: finishing what it carries
        self._on_message = on_message
        self._outbox = Outbox(channel)
        self._replies = Replies()

    @property
    def label(self) -> str:
        return f"{self.name}@{self.host}" if self.host else self.name

    def enqueue(self, msg: Message) -> None:
        self._outbox.put(msg)

    async def attach(self, ticket: LeaseTicket) -> Attached:
        rid = self._replies.register()
        self.enqueue(Attach(rid, ticket))
        reply = await self._replies.wait(rid)
        if isinstance(reply, ErrorReply):
            raise P2prtError(f"worker {self.label} refused lease: {reply.message}")
        assert isinstance(reply, Attached)
        self.host = reply.worker_host
        return reply

    async def fetch(self, object_ids: list[bytes]) -> list[ObjectValue]:
        """Values this worker holds for us."""
        rid = self._replies.register()
        self.enqueue(FetchObjects(rid, object_ids))
        reply = await self._replies.wait(rid)
        if isinstance(reply, ErrorReply):
            raise P2prtError(f"worker {self.label} refused to hand over values: {reply.message}")
        assert isinstance(reply, FetchedObjects)
        return list(reply.values)

    async def traffic(self) -> dict[str, Any]:
        """The worker's byte counters (per peer and path)."""
        rid = self._replies.register()
        self.enqueue(StatsRequest(rid))
        reply = await self._replies.wait(rid)
        if isinstance(reply, ErrorReply):
            raise P2prtError(f"worker {self.label}: {reply.message}")
        assert isinstance(reply, Stats)
        return dict(reply.report)

    async def writer(self) -> None:
        await self._outbox.run()

    async def reader(self) -> None:
        async for msg in self.channel:
            if isinstance(msg, (Attached, ErrorReply, FetchedObjects, Stats)):
                rid = msg.request_id if isinstance(msg, ErrorReply) else msg.rid
                if self._replies.resolve(rid, msg):
                    continue
                if isinstance(msg, ErrorReply):
                    log.warning("worker %s: %s", self.label, msg.message)
                    continue
            self._on_message(self, msg)

    def fail_pending(self) -> None:
        self.closed = True
        self._replies.close(P2prtError(f"the connection to worker {self.label} closed"))
