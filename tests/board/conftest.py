"""Shared helpers for board tests: an in-process board on real loopback sockets, users,
simulated workers, and ways to wait for the board's pushes without sleeping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from p2prt.board.client import BoardClient, open_board_client
from p2prt.board.config import BoardConfig
from p2prt.board.scheduler import SchedulerConfig
from p2prt.board.server import BoardServer
from p2prt.identity import NodeIdentity, SshKey, generate_ed25519
from p2prt.wire import board as m
from p2prt.wire.messages import Message

PUSH_TIMEOUT = 5.0
"""Seconds any single wait for the board may take before the test fails."""

WORKER_LISTEN = [m.Address("127.0.0.1", 9)]


@dataclass
class RunningBoard:
    """A :class:`BoardServer` serving on 127.0.0.1 inside the test's nursery."""

    server: BoardServer
    port: int
    data_dir: Path
    keys: dict[str, SshKey] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_user(self, name: str, key: SshKey | None = None) -> SshKey:
        """Create account ``name`` with a fresh (or the given) key, as ``p2prt board add-user`` does."""
        key = key or generate_ed25519(comment=name)
        self.server.store.add_user(name, [key.public], now=time.time())
        self.keys[name] = key
        return key

    def identity(self, name: str, *, claim: str | None = None) -> NodeIdentity:
        """A fresh node identity (own peer id) signed by ``name``'s key, claiming ``claim``."""
        return NodeIdentity.create(self.keys[name], claim or name)

    def connect(self, who: str | NodeIdentity, **kwargs: Any) -> AbstractAsyncContextManager[BoardClient]:
        """``open_board_client`` as user ``who`` (a fresh identity) or as the given identity."""
        identity = self.identity(who) if isinstance(who, str) else who
        return open_board_client(self.address, identity, **kwargs)


StartBoard = Callable[..., Awaitable[RunningBoard]]


@pytest.fixture
async def start_board(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartBoard]:
    """``await start_board(registration=..., handshake_timeout=...)``: another board, with
    short timeouts (heartbeats every 0.1 s, ticks every 0.05 s, peers lost after 0.6 s)."""
    count = 0

    async def start(**overrides: Any) -> RunningBoard:
        nonlocal count
        count += 1
        data_dir = tmp_path / f"board{count}"
        settings: dict[str, Any] = {
            "data_dir": data_dir,
            "port": 0,
            "registration": "closed",
            "heartbeat_interval": 0.1,
            "tick_interval": 0.05,
            "scheduler": SchedulerConfig(worker_timeout=0.6, client_timeout=0.6, lease_ttl=1.2),
        }
        settings.update(overrides)
        server = BoardServer(BoardConfig(**settings))
        port = await nursery.start(server.serve)
        return RunningBoard(server, port, data_dir)

    yield start


@pytest.fixture
async def board(start_board: StartBoard) -> RunningBoard:
    """A closed-registration board with accounts alice, bob and carol (no clusters yet)."""
    running = await start_board()
    for name in ("alice", "bob", "carol"):
        running.add_user(name)
    return running


# -- talking to the board -----------------------------------------------------------------


INFORMATIONAL: tuple[type[Message], ...] = (m.Reachability,)
"""Pushes that arrive at a moment of their own (the dial-back after a worker registers)
and are skipped by the helpers below unless asked for."""


async def next_push(client: BoardClient, timeout: float = PUSH_TIMEOUT, *, want: type[Message] | None = None) -> Message:
    """The next push from the board (fails the test after ``timeout`` seconds), skipping
    :data:`INFORMATIONAL` ones unless ``want`` is one of them."""
    with trio.fail_after(timeout):
        while True:
            msg = await client.pushes.receive()
            if not isinstance(msg, INFORMATIONAL) or (want is not None and isinstance(msg, want)):
                return msg


async def expect_pushes(client: BoardClient, cls: type[Message], n: int, timeout: float = PUSH_TIMEOUT) -> list[Any]:
    """The next ``n`` pushes, asserting each is a ``cls``."""
    out = []
    for _ in range(n):
        msg = await next_push(client, timeout, want=cls)
        assert isinstance(msg, cls), f"expected {cls.__name__}, got {msg!r}"
        out.append(msg)
    return out


async def status(client: BoardClient, cluster: str | None = None) -> dict[str, Any]:
    with trio.fail_after(PUSH_TIMEOUT):
        result: dict[str, Any] = await client.call(lambda rid: m.StatusRequest(rid, cluster))
    return result


async def pushes_so_far(client: BoardClient) -> list[Message]:
    """Every push the board queued for ``client`` before now.

    A status round trip on the same connection comes back after everything queued
    earlier (one outbox per session, delivered in order), so draining the push channel
    afterwards is exact, not a guess.
    """
    await status(client)
    out: list[Message] = []
    while True:
        try:
            msg = client.pushes.receive_nowait()
        except trio.WouldBlock:
            return out
        if not isinstance(msg, INFORMATIONAL):
            out.append(msg)


async def register_worker(
    client: BoardClient,
    cluster: str,
    slots: int,
    *,
    python: str = "3.11",
    host: str = "h1",
    listen: list[m.Address] | None = None,
) -> Any:
    listen = WORKER_LISTEN if listen is None else listen
    with trio.fail_after(PUSH_TIMEOUT):
        return await client.call(lambda rid: m.WorkerRegister(rid, cluster, slots, {}, python, host, listen))


async def request_leases(client: BoardClient, cluster: str, count: int, *, python: str = "3.11") -> None:
    with trio.fail_after(PUSH_TIMEOUT):
        await client.call(lambda rid: m.LeaseRequest(rid, cluster, count, 1, None, python))


async def create_cluster(client: BoardClient, name: str, members: Sequence[str] = ()) -> str:
    """Create ``name`` as the client's user and add ``members``; return ``owner/name``."""
    with trio.fail_after(PUSH_TIMEOUT):
        full: str = await client.call(lambda rid: m.ClusterCreate(rid, name))
        if members:
            await client.call(lambda rid: m.ClusterAdd(rid, full, list(members)))
    return full
