"""TCP hole punching by simultaneous open (DESIGN.md §6).

Both peers keep their board connection on the port they punch from, so their routers
have a mapping the board has seen (the *observed* address). The board tells each the
other's observed address and a common start (a delay from now). At that moment both
``connect()`` from that port to each other: each side's first SYN opens its own router's
mapping; the next one, from the other side, is let in, and the two connections meet
(a simultaneous open — or, when one side is reachable, an ordinary accept).

One socket waits in SYN_SENT for the whole window (``attempts * interval`` seconds; the
kernel resends its SYN): of two SYNs sent towards each other, the one that reaches the
far router after that router's own SYN left is let in, so with both sides waiting one
always gets through a NAT that drops unsolicited packets. A router that answers with a
RST instead ends the try at once; the next try, on a fresh socket bound to the same port,
starts with the next slot of ``interval`` seconds.
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
"""Seconds between tries after a refusal; the window is ``PUNCH_ATTEMPTS`` of them."""


async def punch(
    local_port: int,
    host: str,
    port: int,
    *,
    delay: float = 0.0,
    attempts: int = PUNCH_ATTEMPTS,
    interval: float = PUNCH_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> trio.SocketStream:
    """A TCP connection to ``host:port`` from local ``local_port``, by simultaneous open.

    With ``nursery.start``, the caller resumes once the first SYN is out (the other side
    may then be told to connect back). Raises :class:`~p2prt.errors.ConnectError` when
    every attempt failed."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, address = infos[0]
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    await trio.sleep(max(0.0, delay))  # sleep-ok: the start the board synchronised
    last: OSError | None = None
    deadline = trio.current_time() + attempts * interval
    tries = 0
    announced = False
    while tries < attempts and trio.current_time() < deadline:
        tries += 1
        started = trio.current_time()
        sock = _reusable(family)
        try:
            await sock.bind((wildcard, local_port))
            # One socket stays in SYN_SENT until it connects, is refused or the window
            # ends (the kernel resends its SYN). Closing it early would let the peer's
            # SYN find no socket: our host's RST then leaves the far NAT's state for
            # this 4-tuple unusable (INVALID, no longer translated) for minutes.
            with trio.move_on_at(deadline):
                if not announced:
                    # Our caller runs again only once connect() below blocks, i.e. after
                    # the SYN was sent (trio's connect makes the system call first).
                    task_status.started()
                    announced = True
                await sock.connect(address)
                log.info("punched through to %s:%d on try %d", host, port, tries)
                return trio.SocketStream(sock)
        except OSError as exc:
            last = exc
            if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                log.info("punch from port %d: %s", local_port, exc)
        sock.close()
        # Refused at once (a router without firewall answers with RST): wait out this
        # try's slot, so both sides keep trying at the same rhythm.
        await trio.sleep_until(min(deadline, started + interval))  # sleep-ok: the punch's rhythm
    raise ConnectError(f"could not punch through to {host}:{port} ({attempts} attempts): {last or 'timed out'}")
