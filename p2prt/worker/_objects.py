"""Values a worker holds for their owners, and fetching held values from other workers.

A task's value of at least the owner's ``hold_over`` bytes stays on the worker that
produced it (:class:`HeldObjects`); the owner is told ``held`` and its size. The owner
fetches it when its program asks for it, and a task on another worker that takes it as
an argument has that worker fetch it straight from here (:func:`fetch_from`) — the
value never passes through the owner. The owner releases it when its last ref is gone;
an owner that disconnects takes its values with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..errors import P2prtError
from ..identity.certificate import NodeIdentity, PeerId
from ..transport import DEFAULT_MAX_ATTACHMENT_BYTES, MessageChannel, open_secure_stream
from ..wire import peer as pm
from ..wire.board import Address
from ..wire.control import ErrorReply
from ..wire.messages import Buffer

__all__ = ["HeldObjects", "HeldValue", "PeerTraffic", "fetch_from", "payload_size"]

FETCH_TIMEOUT = 60.0
"""Seconds a fetch of held values may take (connecting included)."""


def payload_size(data: Buffer, buffers: Iterable[Buffer]) -> int:
    return sum(len(b) if not isinstance(b, memoryview) else b.nbytes for b in (data, *buffers))


@dataclass
class HeldValue:
    owner: bytes  # peer id of the client that owns it
    data: Buffer
    buffers: list[Buffer]
    size: int


class HeldObjects:
    """The values this worker keeps, by object id."""

    def __init__(self) -> None:
        self._values: dict[bytes, HeldValue] = {}

    def keep(self, object_id: bytes, owner: bytes, data: Buffer, buffers: list[Buffer]) -> int:
        size = payload_size(data, buffers)
        self._values[object_id] = HeldValue(owner, data, buffers, size)
        return size

    def get(self, object_id: bytes) -> HeldValue | None:
        return self._values.get(object_id)

    def release(self, owner: bytes, object_ids: Iterable[bytes]) -> list[bytes]:
        """Free ``owner``'s values among ``object_ids``; returns the ids freed."""
        freed = []
        for object_id in object_ids:
            held = self._values.get(object_id)
            if held is not None and held.owner == owner:
                del self._values[object_id]
                freed.append(object_id)
        return freed

    def drop_owner(self, owner: bytes) -> None:
        for object_id in [k for k, v in self._values.items() if v.owner == owner]:
            del self._values[object_id]

    def value(self, object_id: bytes) -> pm.ObjectValue:
        held = self._values.get(object_id)
        if held is None:
            return pm.ObjectValue(object_id, "lost", b"", [], "not held by this worker")
        return pm.ObjectValue(object_id, "ok", held.data, held.buffers)

    def sizes(self) -> list[tuple[bytes, int]]:
        """``(object_id, size)`` of every value held."""
        return [(k, v.size) for k, v in self._values.items()]

    def __len__(self) -> int:
        return len(self._values)

    @property
    def bytes_held(self) -> int:
        return sum(v.size for v in self._values.values())


@dataclass
class PeerTraffic:
    """Bytes exchanged with one peer, by path (``direct`` today)."""

    user: str
    sent: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, sent: int, received: int) -> None:
        self.sent[path] = self.sent.get(path, 0) + sent
        self.received[path] = self.received.get(path, 0) + received

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "sent": dict(self.sent), "received": dict(self.received)}


async def fetch_from(
    identity: NodeIdentity,
    holder: bytes,
    addresses: list[Address],
    object_ids: list[bytes],
    *,
    allocate: Callable[[int], Any],
    on_traffic: Callable[[bytes, str, int, int], None],
) -> list[pm.ObjectValue]:
    """Fetch held values from worker ``holder`` (dialled at ``addresses``, its peer id
    checked in the handshake). Raises :class:`P2prtError` if it cannot be reached."""
    with trio.move_on_after(FETCH_TIMEOUT) as scope:
        last: P2prtError | None = None
        for addr in addresses:
            try:
                stream = await open_secure_stream(addr.host, addr.port, identity, expected_peer_id=PeerId(holder))
                break
            except P2prtError as exc:
                last = exc
        else:
            raise last or P2prtError("the holder announced no address")
        channel = MessageChannel(stream, max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES, allocate=allocate)
        try:
            await channel.send(pm.FetchObjects(1, object_ids))
            while True:
                reply = await channel.receive()
                if isinstance(reply, pm.FetchedObjects) and reply.rid == 1:
                    return list(reply.values)
                if isinstance(reply, ErrorReply):
                    raise P2prtError(f"the holder refused the fetch: {reply.message}")
                if not isinstance(reply, pm.TaskOutput):
                    raise P2prtError(f"the holder answered a fetch with {type(reply).__name__}")
        finally:
            on_traffic(holder, "direct", stream.bytes_sent, stream.bytes_received)
            await trio.aclose_forcefully(stream)
    assert scope.cancelled_caught
    raise P2prtError(f"fetching from the holder took longer than {FETCH_TIMEOUT:g} s")
