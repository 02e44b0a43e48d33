"""Transport layer (trio): Noise streams, authenticated TCP, framed message channels.

- :mod:`.noise_stream` — :class:`NoiseStream`, :func:`noise_connect`, :func:`noise_accept`.
- :mod:`.tcp` — :func:`open_secure_stream`, :func:`serve_secure`.
- :mod:`.channel` — :class:`MessageChannel`, typed messages over a NoiseStream.
- :mod:`._errors` — trio/OS errors mapped to :mod:`p2prt.errors`, once.
"""

from .channel import DEFAULT_MAX_ATTACHMENT_BYTES, MessageChannel, Outbox
from .noise_stream import Authorizer, NoiseStream, noise_accept, noise_connect
from .tcp import (
    HANDSHAKE_TIMEOUT,
    local_address,
    open_secure_channel,
    open_secure_stream,
    remote_address,
    serve_secure,
)

__all__ = [
    "DEFAULT_MAX_ATTACHMENT_BYTES",
    "MessageChannel",
    "Outbox",
    "Authorizer",
    "NoiseStream",
    "noise_accept",
    "noise_connect",
    "HANDSHAKE_TIMEOUT",
    "open_secure_channel",
    "open_secure_stream",
    "remote_address",
    "local_address",
    "serve_secure",
]
