"""The embedded cluster's start-up order: the worker process starts before the board
serves, and is stopped if the runtime never gets to supervise it."""

from __future__ import annotations

import socket

import pytest

from p2prt.client.embedded import EmbeddedCluster

pytestmark = pytest.mark.timeout(60)


def test_worker_starts_at_once_and_cleanup_stops_it() -> None:
    emb = EmbeddedCluster(1)
    assert emb.worker is not None and emb.worker.poll() is None
    assert emb.address == f"127.0.0.1:{emb.port}"
    # The board's address accepts connections already (they wait in the backlog).
    with socket.create_connection(("127.0.0.1", emb.port), timeout=5):
        pass
    emb.cleanup()
    assert emb.worker.returncode is not None
    assert not emb.dir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", emb.port), timeout=5).close()
    emb.cleanup()  # twice is harmless
