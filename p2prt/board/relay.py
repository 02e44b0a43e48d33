"""The board's relay of last resort: it splices two connections it cannot read.

A script asks for a relay to a worker (``board.relay_open``); the board makes a one-time
token for that pair, tells the worker (``board.relay_incoming``) and answers the script
with it. Both then connect to the relay port and attach with the token; the board checks
that each is the peer the token was issued to, answers ``board.relay_ready`` to both and
copies bytes between them — the end-to-end Noise session of script and worker, which
the board has no key for. The operator caps concurrent relays and each relay's rate.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import trio

from ..errors import P2prtError
from ..transport import NoiseStream
from ..transport._errors import unwrap_single_group
from ..transport.relay import RELAY_TIMEOUT, read_message, write_message
from ..wire.board import RelayAttach, RelayReady

__all__ = ["RelayHub"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024


@dataclass
class _Pending:
    client: str  # peer ids (text)
    worker: str
    expires: float
    arrived: dict[str, tuple[NoiseStream, bytes]] = field(default_factory=dict)
    paired: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


class RelayHub:
    """Tokens issued and relays running. ``max_relays`` concurrent relays at most;
    ``rate`` bytes per second per direction of each relay (0: no cap)."""

    def __init__(self, *, max_relays: int = 64, rate: int = 0) -> None:
        self.max_relays = max_relays
        self.rate = rate
        self.active = 0
        self.bytes_relayed = 0
        self._pending: dict[bytes, _Pending] = {}

    def offer(self, client: str, worker: str) -> bytes:
        """A token for ``client`` to reach ``worker`` through the relay."""
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if p.expires < now and not p.arrived]:
            del self._pending[token]
        if self.active + len(self._pending) >= self.max_relays:
            raise P2prtError(f"the board relays at most {self.max_relays} connections at once")
        token = os.urandom(16)
        self._pending[token] = _Pending(client, worker, now + RELAY_TIMEOUT)
        return token

    async def serve(self, stream: NoiseStream) -> None:
        """Handler for one connection to the relay port."""
        with trio.move_on_after(RELAY_TIMEOUT) as scope:
            msg, rest = await read_message(stream)
        if scope.cancelled_caught or not isinstance(msg, RelayAttach):
            return
        pending = self._pending.get(msg.token)
        me = str(stream.peer.peer_id)
        if pending is None or me not in (pending.client, pending.worker) or me in pending.arrived:
            log.info("relay attach from %s refused: unknown token or wrong peer", stream.peer)
            return
        pending.arrived[me] = (stream, rest)
        if len(pending.arrived) < 2:
            with trio.move_on_after(max(0.0, pending.expires - time.monotonic())):
                await pending.paired.wait()
            if pending.paired.is_set():
                await pending.done.wait()  # the other handler splices; keep our stream open
            self._pending.pop(msg.token, None)
            return
        del self._pending[msg.token]
        pending.paired.set()
        (a, a_rest), (b, b_rest) = pending.arrived.values()
        self.active += 1
        try:
            await write_message(a, RelayReady())
            await write_message(b, RelayReady())
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, a, b, a_rest, nursery.cancel_scope)
                    nursery.start_soon(self._pump, b, a, b_rest, nursery.cancel_scope)
        except (P2prtError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("relay between %s and %s ended: %r", pending.client, pending.worker, exc)
        finally:
            self.active -= 1
            pending.done.set()

    async def _pump(
        self, source: NoiseStream, sink: NoiseStream, first: bytes, scope: trio.CancelScope
    ) -> None:
        """Copy ``source`` to ``sink`` (at most ``rate`` bytes/s) until it ends."""
        started = trio.current_time()
        sent = 0
        data = first
        try:
            while True:
                if data:
                    await sink.send_all(data)
                    sent += len(data)
                    self.bytes_relayed += len(data)
                    if self.rate:
                        ahead = sent / self.rate - (trio.current_time() - started)
                        if ahead > 0:
                            await trio.sleep(ahead)  # sleep-ok: the operator's rate cap
                data = await source.receive_some(_CHUNK)
                if not data:
                    return
        finally:
            scope.cancel()
