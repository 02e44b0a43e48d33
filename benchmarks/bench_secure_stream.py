"""Throughput of NoiseStream over loopback TCP, next to the same bytes in clear.

    python benchmarks/bench_secure_stream.py [--mib 64] [--repeat 3]

Prints a table: MiB/s for plain trio TCP and for NoiseStream (ChaChaPoly), best of
``--repeat`` runs, both directions in one process (two trio tasks, one core each at most
— Python runs them on one thread, so the figure includes both sides' work).
"""

from __future__ import annotations

import argparse
import time

import trio

from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.transport import noise_accept, noise_connect


async def _pump(sender: trio.abc.Stream, receiver: trio.abc.Stream, payload: bytes) -> float:
    total = len(payload)

    async def send() -> None:
        await sender.send_all(payload)

    async def receive() -> None:
        got = 0
        while got < total:
            chunk = await receiver.receive_some(1 << 20)
            if not chunk:
                raise RuntimeError("early EOF")
            got += len(chunk)

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        n.start_soon(send)
        n.start_soon(receive)
    return time.perf_counter() - t0


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return client, server


async def run(mib: int, repeat: int) -> list[tuple[str, float]]:
    payload = bytes(mib << 20)
    a = NodeIdentity.create(generate_ed25519(), "alice")
    b = NodeIdentity.create(generate_ed25519(), "bob")
    rows: list[tuple[str, float]] = []

    best = float("inf")
    for _ in range(repeat):
        c, s = await _tcp_pair()
        best = min(best, await _pump(c, s, payload))
        await c.aclose()
        await s.aclose()
    rows.append(("plain TCP (no encryption)", mib / best))

    best = float("inf")
    for _ in range(repeat):
        c, s = await _tcp_pair()
        async with trio.open_nursery() as n:
            results: dict[str, trio.abc.Stream] = {}

            async def acc(results: dict[str, trio.abc.Stream] = results, s: trio.abc.Stream = s) -> None:
                results["s"] = await noise_accept(s, b)

            n.start_soon(acc)
            results["c"] = await noise_connect(c, a)
        best = min(best, await _pump(results["c"], results["s"], payload))
        await results["c"].aclose()
        await results["s"].aclose()
    rows.append(("NoiseStream ChaChaPoly", mib / best))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = trio.run(run, args.mib, args.repeat)
    print(f"{args.mib} MiB over loopback TCP, best of {args.repeat}")
    print(f"{'path':<28} {'MiB/s':>10}")
    for name, rate in rows:
        print(f"{name:<28} {rate:>10.0f}")
    print(f"{'target (encrypted)':<28} {'>= 600':>10}")


if __name__ == "__main__":
    main()
