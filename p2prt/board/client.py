"""Talking to a board: the one board module that other roles import.

``open_board_client(address, identity)`` connects over Noise, pins the board's key
(:class:`~p2prt.identity.known_boards.KnownBoards`), reads the board's welcome, and runs
a reader task (replies matched to requests by id; pushes delivered on
:attr:`BoardClient.pushes`) and a heartbeat task. Error replies are raised as the
p2prt error class the board named (e.g. :class:`~p2prt.errors.NotMemberError`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .. import errors
from ..config import load_user_config
from ..errors import AuthenticationError, BoardRequestError, ConfigError, ConnectionLostError, P2prtError, ProtocolError
from ..identity.certificate import NodeIdentity
from ..identity.keys import SshPublicKey
from ..identity.known_boards import KnownBoards
from ..transport import MessageChannel, open_secure_stream
from ..transport._errors import unwrap_single_group
from ..transport.replies import Replies
from ..wire.board import Heartbeat, Ok, Welcome
from ..wire.control import ErrorReply
from ..wire.messages import Message

__all__ = ["BoardClient", "open_board_client", "parse_board_address", "resolve_board_address", "DEFAULT_BOARD_PORT"]

log = logging.getLogger(__name__)

DEFAULT_BOARD_PORT = 7790
BOARD_MAX_FRAME = 1 << 20


def parse_board_address(text: str) -> tuple[str, int]:
    """``"host:port"`` or ``"host"`` (port 7790); ``[v6]:port`` for IPv6."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else DEFAULT_BOARD_PORT
    except ValueError:
        raise ConfigError(f"bad board address {text!r}: expected HOST:PORT") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"bad board address {text!r}: expected HOST:PORT")
    return host, port


def resolve_board_address(flag: str | None) -> str:
    """``--board`` flag, else ``$P2PRT_BOARD``, else ``board`` in config.toml."""
    for value in (flag, os.environ.get("P2PRT_BOARD"), load_user_config().board):
        if value:
            host, port = parse_board_address(value)
            return f"{host}:{port}"
    raise ConfigError(
        'no board given: pass --board HOST:PORT, set P2PRT_BOARD, or put board = "HOST:PORT" '
        "in ~/.config/p2prt/config.toml"
    )


def _error_from_reply(reply: ErrorReply) -> P2prtError:
    cls = getattr(errors, reply.code, None)
    if isinstance(cls, type) and issubclass(cls, errors.BoardError) and cls is not BoardRequestError:
        return cls(reply.message)
    return BoardRequestError(reply.message, reply.code)


class BoardClient:
    """A live session with a board; use :func:`open_board_client`."""

    def __init__(self, channel: MessageChannel, welcome: Welcome, address: str) -> None:
        self.channel = channel
        self.welcome = welcome
        self.address = address
        self._replies = Replies()
        send, self.pushes = trio.open_memory_channel[Message](math.inf)
        self._push_send = send
        self.busy = 0
        self.paths: dict[str, int] | None = None  # a worker's client connections by path
        self.done = 0  # a worker's tasks finished, and failed, since it started
        self.failed = 0
        self.failures: list[list[Any]] = []  # failures not yet reported

    @property
    def user(self) -> str | None:
        return self.welcome.user

    @property
    def board_key(self) -> SshPublicKey:
        return SshPublicKey.parse(self.channel.peer.ssh_public_key)

    async def call(self, make: Callable[[int], Message]) -> Any:
        """Send ``make(rid)`` and return the reply's value (or raise its error)."""
        rid = self._replies.register()
        try:
            await self.channel.send(make(rid))
        except BaseException:
            self._replies.discard(rid)
            raise
        return await self._replies.wait(rid)

    async def send(self, msg: Message) -> None:
        """Fire-and-forget message (heartbeat, lease return)."""
        await self.channel.send(msg)

    async def _reader(self) -> None:
        error: P2prtError = ConnectionLostError(f"board {self.address} closed the connection")
        try:
            async for msg in self.channel:
                if isinstance(msg, (Ok, ErrorReply)):
                    rid = msg.rid if isinstance(msg, Ok) else msg.request_id
                    value = msg.value if isinstance(msg, Ok) else _error_from_reply(msg)
                    if not self._replies.resolve(rid, value) and isinstance(msg, ErrorReply):
                        log.warning("board error: %s: %s", msg.code, msg.message)
                else:
                    self._push_send.send_nowait(msg)
        except P2prtError as exc:
            error = exc if not isinstance(exc, ProtocolError) else ConnectionLostError(f"board {self.address}: {exc}")
        finally:
            self._replies.close(error)
            self._push_send.close()

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.welcome.heartbeat_interval)
            try:
                await self.heartbeat()
            except P2prtError:
                return

    async def heartbeat(self) -> None:
        """Send a heartbeat now (e.g. when what it reports changed)."""
        failures, self.failures = self.failures, []
        await self.channel.send(Heartbeat(self.busy, self.paths, self.done, self.failed, failures or None))


@asynccontextmanager
async def open_board_client(
    address: str,
    identity: NodeIdentity,
    *,
    known_boards: KnownBoards | None = None,
    pin: bool = True,
    heartbeat: bool = True,
    timeout: float = 10.0,
    local_port: int | None = None,
) -> AsyncIterator[BoardClient]:
    """Connect to the board at ``address`` ("host:port") as ``identity``.

    Raises :class:`~p2prt.errors.ConnectError`, :class:`~p2prt.errors.ConnectionRejectedError`
    (e.g. unknown key on a closed board, with the board's advice), or
    :class:`~p2prt.errors.BoardKeyChangedError`.
    """
    host, port = parse_board_address(address)
    stream = await open_secure_stream(host, port, identity, timeout=timeout, local_port=local_port)
    try:
        if stream.peer.kind != "board":
            raise AuthenticationError(f"{address} is not a p2prt board (it is {stream.peer.user}'s {stream.peer.kind})")
        if pin:
            (known_boards or KnownBoards()).check(f"{host}:{port}", SshPublicKey.parse(stream.peer.ssh_public_key))
        channel = MessageChannel(stream, max_frame_size=BOARD_MAX_FRAME)
        with trio.fail_after(timeout):
            welcome = await channel.receive()
        if not isinstance(welcome, Welcome):
            raise ProtocolError(f"board sent {type(welcome).__name__} instead of a welcome")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    client = BoardClient(channel, welcome, f"{host}:{port}")
    try:
        with unwrap_single_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._reader)
                if heartbeat:
                    nursery.start_soon(client._heartbeats)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
