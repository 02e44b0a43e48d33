"""Helpers for DHT tests: identities, and many nodes on 127.0.0.1 in one trio run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from p2prt.dht import DhtNode, DhtSettings, open_dht_node
from p2prt.identity import NodeIdentity, SshKey, generate_ed25519

HOST = "127.0.0.1"
FAST = DhtSettings(rpc_timeout=1.0)
"""Short UDP timeouts: a dead node costs 1 s, not 5."""


@pytest.fixture(scope="session")
def user_keys() -> dict[str, SshKey]:
    return {name: generate_ed25519(name) for name in ("alice", "bob", "mallory")}


@pytest.fixture
def make_identity(user_keys: dict[str, SshKey]) -> Callable[..., NodeIdentity]:
    def make(user: str = "alice", **kwargs: Any) -> NodeIdentity:
        return NodeIdentity.create(user_keys[user], user, **kwargs)

    return make


@contextlib.asynccontextmanager
async def open_nodes(
    identities: list[NodeIdentity],
    *,
    bootstrap: tuple[str, int] | None = None,
    serve: bool = True,
    settings: DhtSettings = FAST,
    **kwargs: Any,
) -> AsyncIterator[list[DhtNode]]:
    """One node per identity. Without ``bootstrap`` the first node is the bootstrap of
    the others, each joining after the previous one (as processes do)."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[DhtNode] = []
        for ident in identities:
            boot = bootstrap or (nodes[0].address if nodes else None)
            node = await stack.enter_async_context(
                open_dht_node(
                    ident, HOST, bootstrap=[boot] if boot else [], serve=serve, settings=settings, **kwargs
                )
            )
            nodes.append(node)
        yield nodes
