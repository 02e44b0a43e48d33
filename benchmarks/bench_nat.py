"""p2prt across the NAT lab: how often a connection is punched, how long it takes, and
throughput of 16 MiB arguments, per variant (needs root and the lab's tools, like
tests/netlab).

    sudo python benchmarks/bench_nat.py [--attempts 20] [--variants abcd]

For each variant it builds the lab (board in the "internet", worker in home A), then runs
a script in home B ``--attempts`` times (a new process, so a new connection and port
each time); each run connects afresh (direct dials skipped:
``P2PRT_NAT_PATHS=punch,relay``), records the path it got and the time to its first
result, and the first run also times 20 tasks with a 16 MiB argument. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2prt.identity import generate_ed25519, write_private_key
from tests.netlab.lab import PYTHON, build_lab, lab_env

SCRIPT = """
import json, os, sys, time
import p2prt
board, key, transfer = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
t = time.perf_counter()
p2prt.init("alice/personal", board=board, key=key, user="alice")
f = p2prt.remote(len)
first = p2prt.get(f.remote(b"x"), timeout=60)
connect = time.perf_counter() - t
mib_s = None
if transfer:
    payload = os.urandom(16 << 20)
    t = time.perf_counter()
    p2prt.get([f.remote(payload) for _ in range(20)], timeout=120)
    mib_s = 20 * 16 / (time.perf_counter() - t)
paths = sorted({p for e in p2prt.stats()["peers"].values() for p in e["sent"]})
print(json.dumps({"paths": paths, "connect_s": connect, "mib_s": mib_s}))
p2prt.shutdown()
"""


def _wait_for(proc: object, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.read_line(max(0.1, deadline - time.monotonic())):  # type: ignore[attr-defined]
        pass


def run_variant(variant: str, attempts: int) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="p2prt-bench-nat-"))
    key = folder / "alice_ed25519"
    write_private_key(key, generate_ed25519(comment="alice"))
    env = lab_env({"HOME": str(folder / "home"), "P2PRT_NAT_PATHS": "punch,relay"})
    lab = build_lab(variant)  # type: ignore[arg-type]
    try:
        data = str(folder / "board")
        lab.run(lab.internet_ns, [PYTHON, "-m", "p2prt", "board", "add-user", "alice", "--key", f"{key}.pub",
                                  "--data", data], env=env)
        address = f"{lab.board_ip}:7790"
        board = lab.start(lab.internet_ns, [PYTHON, "-m", "p2prt", "board", "--data", data, "--host", lab.board_ip,
                                            "--port", "7790"], env=env)
        _wait_for(board, "listening")
        worker = lab.start(lab.home_a.host_ns, [PYTHON, "-m", "p2prt", "worker", "--cluster", "alice/personal",
                                                "--board", address, "--key", str(key), "--user", "alice",
                                                "--cpus", "1"], env=env)
        _wait_for(worker, "address published in the DHT")
        runs = []
        for i in range(attempts):
            # No conntrack flush between runs: it would also drop the worker's mapping for
            # its board connection, delaying the board's punch message until the worker
            # next sends (a home router does not forget a live connection).
            out = lab.run_python(lab.home_b.host_ns, SCRIPT, address, str(key), "1" if i == 0 else "0",
                                 timeout=180, env=env)
            runs.append(json.loads(out.strip().splitlines()[-1]))
        punched = [r for r in runs if r["paths"] == ["punched"]]
        relayed = [r for r in runs if r["paths"] == ["relayed"]]
        return {
            "variant": variant,
            "punched": f"{len(punched)}/{attempts}",
            "connect_punched": statistics.median(r["connect_s"] for r in punched) if punched else None,
            "connect_relayed": statistics.median(r["connect_s"] for r in relayed) if relayed else None,
            "mib_s": runs[0]["mib_s"],
            "first_path": runs[0]["paths"],
        }
    finally:
        lab.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, default=20)
    ap.add_argument("--variants", default="abcd")
    args = ap.parse_args()
    rows = [run_variant(v, args.attempts) for v in args.variants]
    print("| variant | punched | median to first result, punched (s) | relayed (s) | 16 MiB args (MiB/s, path) |")
    print("|---|---|---|---|---|")
    for r in rows:
        cp = f"{r['connect_punched']:.2f}" if r["connect_punched"] is not None else "-"
        cr = f"{r['connect_relayed']:.2f}" if r["connect_relayed"] is not None else "-"
        print(f"| {r['variant']} | {r['punched']} | {cp} | {cr} | {r['mib_s']:.0f} ({', '.join(r['first_path'])}) |")


if __name__ == "__main__":
    main()
