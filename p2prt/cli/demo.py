"""``p2prt demo``: a Monte Carlo estimate of pi on the embedded local cluster."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run a sample workload on the embedded local cluster",
        description="Start the embedded cluster (a board and a worker on loopback, all traffic Noise-encrypted) "
        "and estimate pi with many Monte Carlo tasks.",
        epilog="Examples:\n  p2prt demo\n  p2prt demo --tasks 200 --samples 200000 --cpus 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=400, help="number of tasks (default 400)")
    p.add_argument("--samples", type=int, default=100_000, help="random points per task (default 100,000)")
    p.add_argument("--cpus", type=int, default=None, help="worker slots (default: all CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_demo)


def _sample(seed: int, n: int) -> int:
    import random

    rng = random.Random(seed)
    inside = 0
    for _ in range(n):
        x, y = rng.random(), rng.random()
        inside += x * x + y * y <= 1.0
    return inside


def cmd_demo(args: argparse.Namespace) -> int:
    import p2prt

    t0 = time.perf_counter()
    info = p2prt.init(num_cpus=args.cpus)
    started = time.perf_counter() - t0
    sample = p2prt.remote(_sample)
    print(f"embedded cluster up in {started:.2f} s: board {info.board}, cluster {info.cluster}")
    t1 = time.perf_counter()
    refs = [sample.remote(i, args.samples) for i in range(args.tasks)]
    inside = sum(p2prt.get(refs, progress=False if args.no_progress else "tasks"))
    elapsed = time.perf_counter() - t1
    total = args.tasks * args.samples
    serial = _serial_estimate(args.samples) * args.tasks
    print(f"pi ~ {4 * inside / total:.6f} from {total:,} points in {args.tasks} tasks")
    print(
        f"{elapsed:.2f} s, {args.tasks / elapsed:,.0f} tasks/s; one core alone would take ~{serial:.2f} s "
        f"(speed-up ~{serial / elapsed:.1f}x)"
    )
    p2prt.shutdown()
    return 0


def _serial_estimate(samples: int) -> float:
    t = time.perf_counter()
    _sample(0, min(samples, 20_000))
    return (time.perf_counter() - t) * samples / min(samples, 20_000)
