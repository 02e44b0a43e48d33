"""A worker learns from the board whether others can dial it (board.reachability) and
runs its DHT node accordingly: serving when public, client mode behind a NAT — where
nobody could reach it to ask, so serving would only cost lookups their timeouts.

In process, on real loopback sockets: a board (with its DHT bootstrap node) and a
WorkerServer. "Behind NAT" is made real by listening on 127.0.0.2 while the board
connection leaves from 127.0.0.1: the board's dial-back to the address it sees finds
nothing there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from p2prt.board.config import BoardConfig
from p2prt.board.server import BoardServer
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.worker.server import WorkerConfig, WorkerServer

pytestmark = pytest.mark.timeout(60)


async def _published(worker: WorkerServer) -> None:
    with trio.fail_after(20):
        while worker.dht is None or worker.public is None:
            await trio.sleep(0.01)  # sleep-ok: poll interval of a bounded wait for the event


@pytest.mark.parametrize(("listen_host", "public"), [("127.0.0.1", True), ("127.0.0.2", False)])
async def test_the_dht_node_serves_only_when_the_board_can_dial_the_worker(
    nursery: trio.Nursery, tmp_path: Path, listen_host: str, public: bool
) -> None:
    server = BoardServer(BoardConfig(data_dir=tmp_path / "board", port=0, registration="closed",
                                     dht_host="127.0.0.1"))
    port = await nursery.start(server.serve)
    key = generate_ed25519(comment="alice")
    server.store.add_user("alice", [key.public], now=time.time())
    worker = WorkerServer(
        WorkerConfig(f"127.0.0.1:{port}", "alice/personal", 1, listen_host=listen_host, announce=(listen_host,)),
        NodeIdentity.create(key, "alice"),
        pin=False,
    )
    nursery.start_soon(worker.run)
    await _published(worker)
    assert worker.public is public
    assert worker.dht is not None and worker.dht.serve is public
    (session,) = [s for s in server.sessions.values() if s.worker_cluster is not None]
    assert session.public is public
