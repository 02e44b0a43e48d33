"""Board throughput: lease operations/s and board memory with N simulated workers.

    python benchmarks/bench_board.py [--workers 100,1000] [--clients 50] [--seconds 5] [--batch 1]

Starts a real ``p2prt board`` process (one core at most: it is single-threaded), then,
in this process, N simulated workers (each a real Noise session over loopback TCP that
registers 4 slots and heartbeats) and C clients that loop: request ``--batch`` leases,
wait for the grants, return them. A lease operation is one grant or one return. Prints
one row per N: ops/s, requests/s, board RSS, board CPU share.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2prt.board.client import open_board_client
from p2prt.board.store import Store
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.identity.known_boards import KnownBoards
from p2prt.wire import board as m


def _rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_board(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2prt", "board", "--data", str(data), "--port", "0", "--heartbeat-timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.search(r"listening on ([\d.]+:\d+)", line):
            return proc, match.group(1)
    raise RuntimeError("board did not start")


async def run_load(
    address: str,
    key_by_user: dict[str, object],
    n_workers: int,
    n_clients: int,
    seconds: float,
    batch: int,
    board_pid: int,
) -> dict[str, float]:
    known = KnownBoards(Path(tempfile.mkdtemp()) / "known_boards")
    ops = 0
    requests = 0
    ready = trio.Event()
    stop = trio.Event()
    registered = 0

    async def worker(i: int) -> None:
        nonlocal registered
        ident = NodeIdentity.create(key_by_user["bob"], "bob")  # type: ignore[arg-type]
        async with open_board_client(address, ident, known_boards=known) as b:
            await b.call(
                lambda rid: m.WorkerRegister(rid, "alice/bench", 4, {}, "3.11", f"w{i}", [m.Address("127.0.0.1", 9)])
            )
            registered += 1
            async for _ in b.pushes:  # drain lease notices
                pass

    async def client(i: int) -> None:
        nonlocal ops, requests
        user = "alice" if i % 2 == 0 else "carol"
        ident = NodeIdentity.create(key_by_user[user], user)  # type: ignore[arg-type]
        async with open_board_client(address, ident, known_boards=known) as b:
            await ready.wait()
            while not stop.is_set():
                await b.call(lambda rid: m.LeaseRequest(rid, "alice/bench", batch, 1, None, "3.11"))
                requests += 1
                got: list[str] = []
                while len(got) < batch:
                    msg = await b.pushes.receive()
                    if isinstance(msg, m.LeaseGranted):
                        got.append(msg.ticket.lease_id)
                    elif isinstance(msg, m.LeaseReclaim):
                        pass
                await b.send(m.LeaseReturn(got))
                ops += 2 * batch

    # Closed loop: a client waits for its whole batch, so total demand must fit the
    # capacity (4 slots per worker) or clients would wait for grants the others hold.
    batch = max(1, min(batch, 4 * n_workers // n_clients))
    result: dict[str, float] = {"batch": batch}
    async with trio.open_nursery() as n:
        for i in range(n_workers):
            n.start_soon(worker, i)
        with trio.fail_after(120):
            while registered < n_workers:
                await trio.sleep(0.05)
        for i in range(n_clients):
            n.start_soon(client, i)
        await trio.sleep(0.5)  # let clients connect
        cpu0, t0, ops0, req0 = _cpu_seconds(board_pid), time.perf_counter(), ops, requests
        ready.set()
        await trio.sleep(seconds)
        dt = time.perf_counter() - t0
        result |= {
            "ops_per_s": (ops - ops0) / dt,
            "requests_per_s": (requests - req0) / dt,
            "board_cpu": (_cpu_seconds(board_pid) - cpu0) / dt,
            "rss_mib": _rss_mib(board_pid),
        }
        stop.set()
        n.cancel_scope.cancel()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="100,1000")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=8, help="leases per request (capped so demand fits capacity)")
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "board"
            keys = {u: generate_ed25519() for u in ("alice", "bob", "carol")}
            with Store.open(data) as store:
                for u, k in keys.items():
                    store.add_user(u, [k.public], now=time.time())
                store.create_cluster("alice", "bench", now=time.time())
                store.add_members("alice/bench", ["bob", "carol"], by="alice")
            proc, address = start_board(data)
            try:
                idle_rss = _rss_mib(proc.pid)
                r = trio.run(run_load, address, keys, n, args.clients, args.seconds, args.batch, proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            rows.append((n, idle_rss, r))
    print(
        f"board: {args.clients} clients, up to {args.batch} leases per request, {args.seconds:g} s per row "
        "(lease op = one grant or one return)"
    )
    print(
        f"{'workers':>8} {'batch':>6} {'lease ops/s':>12} {'requests/s':>11} {'board CPU':>10} {'ops per CPU-s':>14} "
        f"{'RSS idle':>9} {'RSS loaded':>11}"
    )
    for n, idle, r in rows:
        per_cpu = r["ops_per_s"] / r["board_cpu"] if r["board_cpu"] else float("nan")
        print(
            f"{n:>8} {r['batch']:>6.0f} {r['ops_per_s']:>12.0f} {r['requests_per_s']:>11.0f} {r['board_cpu']:>9.0%} {per_cpu:>14.0f} "
            f"{idle:>7.0f}Mi {r['rss_mib']:>9.0f}Mi"
        )
    print("'ops per CPU-s' is the board's capacity on one core when the load generator (this process,")
    print("sharing the 2 cores) cannot saturate it; 'board CPU' below 100% means the generator was the limit.")
    print("target: 1,000 workers held; >= 10,000 lease ops/s on one core")


if __name__ == "__main__":
    main()
