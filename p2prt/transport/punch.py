"""TCP hole punching by simultaneous open (DESIGN.md §6).

Both peers keep their board connection on the port they punch from, so their routers
have a mapping the board has seen (the *observed* address). The board tells each the
other's observed address and a common start (a delay from now). At that moment both
``connect()`` from that port to each other: each side's first SYN opens its own router's
mapping; the next one, from the other side, is let in, and the two connections meet
(a simultaneous open — or, when one side is reachable, an ordinary accept).

Attempts are repeated a few times, each on a fresh socket bound to the same port (the
previous attempt's socket is closed first, so the 4-tuple is free again).
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from ..errors import ConnectError
from .tcp import _reusable

__all__ = ["punch", "PUNCH_ATTEMPTS", "PUNCH_INTERVAL"]

log = logging.getLogger(__name__)

PUNCH_ATTEMPTS = 8
PUNCH_INTERVAL = 0.25
"""Seconds each attempt waits for its connect before the next one starts."""


async def punch(
    local_port: int,
    host: str,
    port: int,
    *,
    delay: float = 0.0,
    attempts: int = PUNCH_ATTEMPTS,
    interval: float = PUNCH_INTERVAL,
) -> trio.SocketStream:
    """A TCP connection to ``host:port`` from local ``local_port``, by simultaneous open.

    Raises :class:`~p2prt.errors.ConnectError` when every attempt failed."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    await trio.sleep(max(0.0, delay))  # sleep-ok: the start the board synchronised
    last: OSError | None = None
    for attempt in range(attempts):
        started = trio.current_time()
        sock = _reusable(family)
        try:
            await sock.bind((wildcard, local_port))
            with trio.move_on_after(interval):
                await sock.connect(address)
                log.info("punched through to %s:%d on attempt %d", host, port, attempt + 1)
                return trio.SocketStream(sock)
        except OSError as exc:
            last = exc
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                log.info("punch from port %d: %s", local_port, exc)
        sock.close()
        # Refused at once (no firewall answers with RST): wait out this attempt's slot,
        # so both sides keep trying at the same rhythm.
        await trio.sleep_until(started + interval)  # sleep-ok: the punch's rhythm
    raise ConnectError(f"could not punch through to {host}:{port} ({attempts} attempts): {last or 'timed out'}")
