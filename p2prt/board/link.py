"""A board session that survives board restarts and network blips.

``BoardLink.run`` connects, calls ``on_connect(client)`` (a worker registers there),
delivers the board's pushes to ``on_push``, and when the session ends reconnects with
exponential backoff (with jitter), calling ``on_connect`` again — so live workers
re-register by themselves after a board restart. Authentication failures (rejected key,
changed board key) are not retried: they need a person; with ``fail_fast`` (the
default) neither is a failure of the first connection, so a mistyped address or a
missing membership is reported at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable

import trio

from ..errors import AuthenticationError, P2prtError
from ..identity.certificate import NodeIdentity
from ..identity.known_boards import KnownBoards
from ..wire.messages import Message
from .client import BoardClient, open_board_client

__all__ = ["BoardLink"]

log = logging.getLogger(__name__)


class BoardLink:
    def __init__(
        self,
        address: str,
        identity: NodeIdentity,
        *,
        on_connect: Callable[[BoardClient], Awaitable[None]] | None = None,
        on_push: Callable[[Message], Awaitable[None]] | None = None,
        known_boards: KnownBoards | None = None,
        pin: bool = True,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        fail_fast: bool = True,
        local_port: int | None = None,
    ) -> None:
        self.address = address
        self.identity = identity
        self._on_connect = on_connect
        self._on_push = on_push
        self._known_boards = known_boards
        self._pin = pin
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.fail_fast = fail_fast
        self.local_port = local_port  # connect from our listening port (NAT traversal)
        self.client: BoardClient | None = None
        self.connections = 0
        self._changed = trio.Condition()

    async def wait_connected(self, generation: int = 1) -> BoardClient:
        """Wait until the link has connected ``generation`` times and is up."""
        async with self._changed:
            while self.client is None or self.connections < generation:
                await self._changed.wait()
            return self.client

    async def _set(self, client: BoardClient | None) -> None:
        async with self._changed:
            self.client = client
            if client is not None:
                self.connections += 1
            self._changed.notify_all()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``task_status.started()`` after the first connection."""
        backoff = self.min_backoff
        started = False
        while True:
            try:
                async with open_board_client(
                    self.address,
                    self.identity,
                    known_boards=self._known_boards,
                    pin=self._pin,
                    local_port=self.local_port,
                ) as client:
                    if self._on_connect is not None:
                        await self._on_connect(client)
                    await self._set(client)
                    if not started:
                        task_status.started()
                        started = True
                    backoff = self.min_backoff
                    async for msg in client.pushes:
                        if self._on_push is not None:
                            await self._on_push(msg)
                log.warning("board %s closed the session; reconnecting", self.address)
            except AuthenticationError:
                raise
            except P2prtError as exc:
                if self.fail_fast and not started:
                    raise  # the first connection must work: the caller shows the error
                log.warning("board %s: %s; retrying in %.1f s", self.address, exc, backoff)
            await self._set(None)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(self.max_backoff, backoff * 2)
