"""DHT costs on loopback: joining, publishing, and peer lookups, with N nodes in one process.

    python benchmarks/bench_dht.py [--nodes 20] [--lookups 200]

Prints a table: time for all nodes to join, to publish one peer record each, the
latency of single lookups (one at a time, from every node in turn; median and 90th
percentile), and the time for every node to resolve every other at once.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import trio

from p2prt.dht import DhtNode, open_dht_node
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.wire.board import Address


async def main(n: int, lookups: int) -> None:
    key = generate_ed25519()
    idents = [NodeIdentity.create(key, "bench") for _ in range(n)]
    async with contextlib.AsyncExitStack() as stack:
        t0 = time.perf_counter()
        nodes: list[DhtNode] = []
        for ident in idents:
            boot = [nodes[0].address] if nodes else []
            nodes.append(await stack.enter_async_context(open_dht_node(ident, "127.0.0.1", bootstrap=boot)))
        joined = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, node in enumerate(nodes):
            await node.publish_peer([Address("127.0.0.1", 30000 + i)])
        published = time.perf_counter() - t0
        print(f"joined and published with {n} nodes", file=sys.stderr)

        latencies = []
        for k in range(lookups):
            node, target = nodes[k % n], idents[(k * 7 + 3) % n]
            t0 = time.perf_counter()
            assert await node.find_peer(target.peer_id) is not None
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for node in nodes:
                for ident in idents:
                    nursery.start_soon(node.find_peer, ident.peer_id)
        all_pairs = time.perf_counter() - t0

    lat = sorted(latencies)
    print(f"| measure ({n} nodes, loopback) | value |")
    print("| --- | --- |")
    print(f"| join (one after another) | {joined * 1000:.0f} ms ({joined / n * 1000:.1f} ms per node) |")
    print(f"| publish one peer record each | {published * 1000:.0f} ms ({published / n * 1000:.1f} ms each) |")
    print(f"| single lookup, median | {statistics.median(lat) * 1000:.2f} ms |")
    print(f"| single lookup, 90th percentile | {lat[int(len(lat) * 0.9)] * 1000:.2f} ms |")
    print(f"| every node resolves every other ({n * n} lookups at once) | {all_pairs * 1000:.0f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=200)
    args = parser.parse_args()
    trio.run(main, args.nodes, args.lookups)
