"""Dead-connection detection for every TCP connection a :class:`NoiseStream` runs on.

A peer that vanishes without a FIN or RST — a laptop lid closed, Wi-Fi gone, a home
router that rebooted or changed its public address and now drops the old mapping —
would leave a TCP connection open for a quarter of an hour (the kernel's retransmission
limit) or forever (an idle one). The kernel can do better, and without an extra message
in our protocol:

* ``TCP_USER_TIMEOUT``: data we sent that is not acknowledged within the timeout aborts
  the connection (a busy connection to a vanished peer);
* ``SO_KEEPALIVE`` with probes from half the timeout on: an idle connection whose peer
  answers no probe is aborted after about the timeout.

Both end in an error on the next read or write, so the usual "connection lost" handling
runs (tasks retried elsewhere, a board session reconnected). A live peer that is merely
slow to read is not affected: its kernel acknowledges our data and window probes.

The timeout is ``$P2PRT_KEEPALIVE_TIMEOUT`` seconds (default :data:`KEEPALIVE_TIMEOUT`),
read when a connection is set up; ``0`` turns detection off.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

__all__ = ["KEEPALIVE_TIMEOUT", "keepalive_timeout", "enable_keepalive"]

log = logging.getLogger(__name__)

KEEPALIVE_TIMEOUT = 15.0
"""Seconds after which a silent peer's connection is declared dead."""


def keepalive_timeout() -> float:
    """The configured timeout (``$P2PRT_KEEPALIVE_TIMEOUT``, else ``keepalive_timeout`` in
    config.toml, else the default)."""
    from ..config import resolve

    try:
        text, source = resolve("keepalive_timeout")
    except Exception as exc:  # a broken config.toml: reported where it is read for a command
        log.warning("keepalive timeout: %s; using %g s", exc, KEEPALIVE_TIMEOUT)
        return KEEPALIVE_TIMEOUT
    try:
        return max(0.0, float(text or KEEPALIVE_TIMEOUT))
    except ValueError:
        log.warning("ignoring keepalive_timeout=%r (%s): not a number of seconds", text, source)
        return KEEPALIVE_TIMEOUT


def enable_keepalive(sock: Any, timeout: float | None = None) -> bool:
    """Set keepalive probes and the user timeout on a TCP socket (stdlib or trio).

    Returns False when ``sock`` is not a TCP socket or the platform lacks the options
    (detection then falls back to heartbeats and the kernel's defaults)."""
    seconds = keepalive_timeout() if timeout is None else timeout
    if seconds <= 0 or getattr(sock, "type", None) != socket.SOCK_STREAM:
        return False
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return False
    idle = max(1, int(seconds / 2))
    interval = max(1, int(seconds / 6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(3, int(seconds / interval)))
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(seconds * 1000)))
    except OSError as exc:
        log.debug("cannot set keepalive on %r: %s", sock, exc)
        return False
    return True
