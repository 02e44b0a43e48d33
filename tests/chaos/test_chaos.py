"""Chaos: workers die and freeze under a running job, and nothing is lost or leaked.

A board and four workers (real processes on loopback). A driver submits 2,000 tasks with
``max_retries=-1`` — every twentieth a parent that submits two nested tasks and waits for
them — while a killer SIGKILLs a random worker every ~2 s (a replacement starts at once)
and SIGSTOPs another for a second. Then:

* every ref resolves to the right value, and no outcome was offered twice;
* once the driver is idle, the board shows every slot free and no lease (nothing leaked
  by the dead workers or the retried tasks);
* with the killer stopped, a task that SIGKILLs its own worker fails after three crashes
  in a row (``WorkerCrashedError``) instead of taking the cluster down: the next batch
  still completes on the replacements.

The killer's choices are seeded; what is asserted does not depend on timing.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..runtime.procs import PYTHON, Proc, user_env
from .cluster import Cluster, read_report, wait_all_free

pytestmark = pytest.mark.timeout(240)

WORKERS = 4
TASKS = 2000
KILL_EVERY = 2.0

DRIVER = r"""
import json, os, signal, sys, time
import p2prt

board, key = sys.argv[1], sys.argv[2]
p2prt.init("alice/personal", board=board, key=key, user="alice")
rt = p2prt._api._runtime

@p2prt.remote(max_retries=-1)
def square(i):
    import time
    time.sleep(0.004 + (i % 5) * 0.002)
    return i, i * i

@p2prt.remote(max_retries=-1)
def parent(i):
    a, b = p2prt.get([square.remote(i), square.remote(i + 100000)])
    return i, a[1] + b[1]

@p2prt.remote(max_retries=-1)
def poison():
    import os, signal
    os.kill(os.getppid(), signal.SIGKILL)  # the executor's parent: its worker

def expected(i):
    return (i, i * i + (i + 100000) ** 2) if i % 20 == 0 else (i, i * i)

def report(**fields):
    print(json.dumps({**fields, "duplicates": rt.store.duplicates, "counters": dict(rt.stats)}), flush=True)

t = time.monotonic()
refs = [parent.remote(i) if i % 20 == 0 else square.remote(i) for i in range(int(sys.argv[3]))]
values = p2prt.get(refs, timeout=180)
wrong = [(i, v) for i, v in enumerate(values) if tuple(v) != expected(i)]
report(phase="chaos", ok=not wrong and len(values) == len(refs), wrong=wrong[:5], seconds=round(time.monotonic() - t, 1))
sys.stdin.readline()  # the test checks the board, stops the killer

try:
    p2prt.get(poison.remote(), timeout=120)
    outcome = "no error"
except p2prt.WorkerCrashedError as exc:
    outcome = f"WorkerCrashedError: {exc}"
after = p2prt.get([square.remote(i) for i in range(200)], timeout=120)
report(phase="poison", poison=outcome, after_ok=[tuple(v) for v in after] == [(i, i * i) for i in range(200)])
sys.stdin.readline()
p2prt.shutdown()
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for _ in range(WORKERS):
            c.workers.append(c.start_worker())
        yield c
    finally:
        c.close()


class Killer(threading.Thread):
    """Replaces dead workers (every 0.1 s) and, while ``chaos`` is set, every
    ~``KILL_EVERY`` s SIGKILLs one worker and SIGSTOPs another for a second. Bounded:
    ends when stopped or after ``limit`` seconds."""

    def __init__(self, cluster: Cluster, seed: int, limit: float = 200.0) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.chaos = threading.Event()
        self.done = threading.Event()
        self.limit = limit
        self.kills = 0
        self.stops = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.limit
            next_kill = time.monotonic() + KILL_EVERY
            while not self.done.wait(0.1) and time.monotonic() < deadline:
                if self.chaos.is_set() and time.monotonic() >= next_kill:
                    next_kill = time.monotonic() + KILL_EVERY * self.rng.uniform(0.75, 1.25)
                    self._strike()
                self.cluster.replace_dead()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def _strike(self) -> None:
        with self.cluster.lock:
            alive = [w for w in self.cluster.workers if w.proc.poll() is None]
        if len(alive) < 2:
            return
        victim, frozen = self.rng.sample(alive, 2)
        victim.kill()
        self.kills += 1
        os.kill(frozen.pid, signal.SIGSTOP)
        self.stops += 1
        try:
            self.cluster.replace_dead()  # takes about a second: the frozen one waits
        finally:
            os.kill(frozen.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the killer did not stop"
        assert not self.errors, self.errors


def test_no_task_is_lost_or_doubled_and_no_lease_leaks_while_workers_die(cluster: Cluster) -> None:
    script = cluster.folder / "driver.py"
    script.write_text(DRIVER)
    killer = Killer(cluster, seed=20261203)
    killer.chaos.set()
    killer.start()
    driver = Proc([PYTHON, str(script), cluster.board.address, str(cluster.key), str(TASKS)],
                  env=user_env("alice", cluster.folder / "config" / "driver"), cwd=str(cluster.folder), stdin=True)
    try:
        chaos = read_report(driver, "chaos", timeout=200)
        killer.chaos.clear()
        print(f"\nchaos: {killer.kills} kills, {killer.stops} stops: {chaos}")
        assert chaos["ok"], chaos
        assert chaos["duplicates"] == 0, chaos
        assert killer.kills >= 2, "the run ended before the killer did anything"
        assert chaos["counters"].get("retries", 0) >= 1, chaos
        # Nothing leaked: with the driver idle (its leases linger 1 s), every slot is free.
        st = wait_all_free(cluster)
        assert len(st["workers"]) == WORKERS, st

        # A task that kills its worker: failed after three times, the cluster lives on
        # (the killer only replaces the dead now).
        driver.write_line("go")
        poisoned = read_report(driver, "poison", timeout=180)
        print(f"poison: {poisoned}")
        assert poisoned["poison"].startswith("WorkerCrashedError") and "3 times in a row" in poisoned["poison"]
        assert poisoned["after_ok"], poisoned
        assert poisoned["duplicates"] == 0, poisoned
        driver.write_line("bye")
        assert driver.wait_exit(timeout=30) == 0, driver.output()
        st = wait_all_free(cluster)
        assert len(st["workers"]) == WORKERS, st
    finally:
        killer.stop()
        driver.kill()
