"""How throughput grows with the number of worker processes.

    python benchmarks/bench_scale.py [--workers 1,2,4,8] [--tasks 20000]

For each N: a `p2prt board` process, N `p2prt worker` processes with one slot each
(loopback, a throwaway user), and a driver process that runs ``--tasks`` no-op tasks
(after a 500-task warm-up) and reports tasks/s. On the 2-core machine the processes
share two cores, so this shows the cost of more connections and leases, not a speed-up.
Every loop is bounded; everything started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import SharedLayout

DRIVER = """
import json, sys, time, p2prt
cfg = json.loads(sys.argv[1])
p2prt.init(cfg["cluster"], board=cfg["board"], key=cfg["key"], user=cfg["user"])

@p2prt.remote
def noop():
    return None

p2prt.get([noop.remote() for _ in range(500)])
t = time.perf_counter()
p2prt.get([noop.remote() for _ in range(cfg["tasks"])])
elapsed = time.perf_counter() - t
print(json.dumps({"tasks_per_s": cfg["tasks"] / elapsed}))
p2prt.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--tasks", type=int, default=20_000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryFile("w+") as log:
        for n in [int(x) for x in args.workers.split(",")]:
            layout = SharedLayout(log, workers=n)
            try:
                t0 = time.perf_counter()
                layout.start()
                ready = time.perf_counter() - t0
                cfg = {**layout.extra(), "tasks": args.tasks}
                out = subprocess.run(
                    [sys.executable, "-c", DRIVER, json.dumps(cfg)],
                    env=layout.env, capture_output=True, text=True, timeout=300,
                )
                if out.returncode != 0:
                    rows.append((n, ready, f"error: {out.stderr.strip().splitlines()[-1:]}"))
                else:
                    rows.append((n, ready, json.loads(out.stdout.strip().splitlines()[-1])["tasks_per_s"]))
            finally:
                layout.stop()
    print(f"{args.tasks:,} no-op tasks, N worker processes x 1 slot, board + driver processes, loopback")
    print(f"{'workers':>8} {'ready (s)':>10} {'tasks/s':>10}")
    for n, ready, rate in rows:
        shown = f"{rate:>10,.0f}" if isinstance(rate, float) else f"  {rate}"
        print(f"{n:>8} {ready:>10.2f} {shown}")


if __name__ == "__main__":
    main()
