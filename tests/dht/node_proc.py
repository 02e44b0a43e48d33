"""One DHT node in its own process, driven over stdin/stdout by test_processes.py.

    python node_proc.py [BOOT_HOST:BOOT_PORT]

Prints ``ready <host> <port> <peer id hex>`` once it has joined and published its peer
record; then reads a line of space-separated peer ids (hex), resolves each, and prints
``resolved <n found> <n asked> <ms>``; then waits for ``quit`` (or end of input).
"""

from __future__ import annotations

import sys
import time

import trio

from p2prt.dht import DhtSettings, open_dht_node
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.wire.board import Address


async def main(boot: str | None) -> None:
    identity = NodeIdentity.create(generate_ed25519(), "alice")
    bootstrap = [(boot.rsplit(":", 1)[0], int(boot.rsplit(":", 1)[1]))] if boot else []
    settings = DhtSettings(rpc_timeout=2.0)
    async with open_dht_node(identity, "127.0.0.1", bootstrap=bootstrap, settings=settings) as node:
        rec = await node.publish_peer([Address("127.0.0.1", 40000 + node.address[1] % 1000)])
        assert rec.peer_id == identity.peer_id
        print("ready", *node.address, identity.peer_id.hex(), flush=True)
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        wanted = [bytes.fromhex(p) for p in line.split()]
        start = time.perf_counter()
        found = 0
        for peer_id in wanted:
            got = await node.find_peer(peer_id)
            found += got is not None and got.peer_id == peer_id
        ms = (time.perf_counter() - start) * 1000
        print("resolved", found, len(wanted), f"{ms:.1f}", flush=True)
        while (line := await trio.to_thread.run_sync(sys.stdin.readline)) and line.strip() != "quit":
            pass


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else None)
