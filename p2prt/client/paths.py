"""How a script reaches a worker: a direct dial, a hole punch, or the board's relay.

:meth:`Dialer.reach` races the ways it is allowed (DESIGN.md §6):

* **direct**: every address the worker announced (its DHT record, else the board's
  grant) is dialled at once;
* **punch**: :data:`PUNCH_HEAD_START` seconds later — or as soon as every direct dial
  failed — the board is asked to coordinate a TCP simultaneous open from both sides'
  board ports (a worker behind a NAT that drops unsolicited SYNs never answers a direct
  dial, so waiting for its timeout first would cost seconds);
* **relay**: only when both failed, because it costs the board's bandwidth.

The first connection whose Noise handshake proves the worker's peer id wins; the others
are cancelled (a late second one is closed). The result names the path: ``direct``,
``punched`` or ``relayed``. A relayed connection is later *upgraded* by the runtime,
which calls :meth:`reach` again without the relay (:func:`upgrade_paths`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..board.client import BoardClient, parse_board_address
from ..config import resolve, setting
from ..errors import P2prtError
from ..identity.certificate import NodeIdentity, PeerId
from ..transport import NoiseStream, local_address, open_secure_stream
from ..transport._errors import unwrap_single_group
from ..transport.noise_stream import noise_connect
from ..transport.punch import punch
from ..transport.relay import open_relay
from ..transport.tcp import HANDSHAKE_TIMEOUT
from ..wire import board as bm

__all__ = ["Dialer", "nat_paths", "upgrade_paths", "upgrade_interval", "NAT_PATHS", "DIAL_TIMEOUT"]

log = logging.getLogger(__name__)

NAT_PATHS = ("direct", "punch", "relay")
DIAL_TIMEOUT = 3.0
"""Seconds for one direct dial of a worker address."""
PUNCH_HEAD_START = 0.5
"""Seconds direct dials run alone before a hole punch joins the race."""
UPGRADE_INTERVAL = 10.0
"""Seconds before a relayed connection first tries to go direct; doubled after each
failure, up to :data:`UPGRADE_BACKOFF` times this."""
UPGRADE_BACKOFF = 8


def nat_paths() -> tuple[str, ...]:
    """Ways to reach a worker (``$P2PRT_NAT_PATHS`` or ``nat_paths`` in config.toml, e.g.
    ``direct,relay``)."""
    text = setting("nat_paths") or ""
    return tuple(p.strip() for p in text.split(",") if p.strip()) or NAT_PATHS


def upgrade_paths() -> tuple[str, ...]:
    """The ways a relayed connection may be replaced by."""
    return tuple(p for p in nat_paths() if p != "relay")


def upgrade_interval() -> float:
    """``$P2PRT_UPGRADE_INTERVAL`` or ``upgrade_interval`` in config.toml, in seconds
    (else :data:`UPGRADE_INTERVAL`)."""
    text, source = resolve("upgrade_interval")
    try:
        return max(0.05, float(text or UPGRADE_INTERVAL))
    except ValueError:
        log.warning("ignoring upgrade_interval=%r (%s): not a number of seconds", text, source)
        return UPGRADE_INTERVAL


class Dialer:
    """Opens Noise connections to workers for one script. ``board()`` is the current
    board session (None while reconnecting); ``stats`` counts attempts by kind."""

    def __init__(
        self,
        identity: NodeIdentity,
        board_address: str,
        board: Callable[[], BoardClient | None],
        stats: collections.Counter[str],
    ) -> None:
        self.identity = identity
        self.board_address = board_address
        self._board = board
        self.stats = stats

    async def reach(self, peer: bytes, addrs: Sequence[bm.Address], paths: Sequence[str]) -> tuple[NoiseStream, str]:
        """A connection to worker ``peer`` and the path it took; P2prtError listing why
        every allowed way failed."""
        errors: list[str] = []
        won: list[tuple[NoiseStream, str]] = []
        direct_over = trio.Event()
        punch_over = trio.Event()

        async with trio.open_nursery() as race:

            def finish(stream: NoiseStream, path: str) -> None:
                if won:  # lost by a hair: close it
                    race.start_soon(trio.aclose_forcefully, stream)
                    return
                won.append((stream, path))
                race.cancel_scope.cancel()

            async def attempt(what: str, path: str, connect: Callable[[], Awaitable[NoiseStream]]) -> None:
                try:
                    stream = await connect()
                except P2prtError as exc:
                    errors.append(f"{what}: {exc}")
                    return
                finish(stream, path)

            def dial(addr: bm.Address) -> Callable[[], Awaitable[NoiseStream]]:
                return lambda: open_secure_stream(
                    addr.host, addr.port, self.identity, expected_peer_id=PeerId(peer), timeout=DIAL_TIMEOUT
                )

            async def direct() -> None:
                if "direct" in paths:
                    if not addrs:
                        errors.append("direct: the worker announced no address")
                    async with trio.open_nursery() as dials:
                        for addr in addrs:
                            dials.start_soon(attempt, f"direct {addr.host}:{addr.port}", "direct", dial(addr))
                direct_over.set()

            async def hole_punch() -> None:
                try:
                    if "punch" in paths:
                        with trio.move_on_after(PUNCH_HEAD_START):
                            await direct_over.wait()
                        await attempt("hole punch", "punched", lambda: self.punch_to(peer))
                finally:
                    punch_over.set()

            async def relay() -> None:
                await direct_over.wait()
                await punch_over.wait()
                if "relay" in paths:
                    await attempt("relay", "relayed", lambda: self.relay_to(peer))

            race.start_soon(direct)
            race.start_soon(hole_punch)
            race.start_soon(relay)
        if won:
            return won[0]
        raise P2prtError(f"cannot reach worker {PeerId(peer)}: " + "; ".join(errors or ["no way allowed"]))

    async def punch_to(self, peer: bytes) -> NoiseStream:
        """A direct connection to ``peer`` by simultaneous open, from our board port."""
        board = self._board()
        local = local_address(board.channel.stream) if board is not None else None
        if board is None or local is None:
            raise P2prtError("not connected to the board")
        answer = await board.call(lambda rid: bm.PunchRequest(rid, peer))
        if not isinstance(answer, dict):
            raise P2prtError("the board answered a punch request without an address")
        self.stats["punch_attempts"] += 1
        punched: list[trio.SocketStream] = []

        async def connect(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            punched.append(await punch(local[1], str(answer["host"]), int(answer["port"]), task_status=task_status))

        try:
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    await nursery.start(connect)  # our SYN is out: now the worker may answer
                    await board.call(lambda rid: bm.PunchRequest(rid, peer, ready=True))
        except BaseException:
            for leftover in punched:
                await trio.aclose_forcefully(leftover)
            raise
        tcp = punched[0]
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                stream = await noise_connect(tcp, self.identity, expected_peer_id=PeerId(peer))
        except trio.TooSlowError:
            await trio.aclose_forcefully(tcp)
            raise P2prtError("no handshake over the punched connection") from None
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        self.stats["punched_connections"] += 1
        return stream

    async def relay_to(self, peer: bytes) -> NoiseStream:
        """An end-to-end Noise session with ``peer`` through the board's relay."""
        board = self._board()
        relay = board.welcome.relay if board is not None else None
        if board is None or relay is None:
            raise P2prtError("the board offers no relay")
        token = await board.call(lambda rid: bm.RelayOpen(rid, peer))
        if not isinstance(token, bytes):
            raise P2prtError("the board answered a relay request without a token")
        host, _ = parse_board_address(self.board_address)
        self.stats["relayed_connections"] += 1
        return await open_relay(
            host,
            relay.port,
            self.identity,
            token,
            board_peer_id=board.channel.peer.peer_id,
            peer_id=PeerId(peer),
            initiator=True,
        )
