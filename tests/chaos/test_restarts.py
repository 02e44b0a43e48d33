"""The board restarts under a running job; a script dies under its running tasks.

Real processes on loopback: a board (heartbeat timeout 1.5 s), two workers of
alice/personal, a driver. Every wait is for a line, a file or a status, with a deadline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..runtime.procs import PYTHON, Proc, pid_alive, user_env, wait_until
from .cluster import Cluster, read_report, wait_all_free

pytestmark = pytest.mark.timeout(120)

HELD = r"""
import json, os, sys, time
import p2prt

board, key, gate, folder = sys.argv[1:5]
p2prt.init("alice/personal", board=board, key=key, user="alice")
rt = p2prt._api._runtime

@p2prt.remote
def held(i):
    import os, time
    from pathlib import Path
    Path(folder, f"{i}-{os.getpid()}").write_text("")
    while not os.path.exists(gate):
        time.sleep(0.01)  # sleep-ok: the test opens the gate
    return i, os.getppid()

@p2prt.remote
def square(i):
    return i * i

refs = [held.remote(i) for i in range(2)]
first = p2prt.get(refs, timeout=90)
print(json.dumps({"phase": "held", "values": [list(v) for v in first]}), flush=True)
sys.stdin.readline()
after = p2prt.get([square.remote(i) for i in range(50)], timeout=90)
print(json.dumps({"phase": "after", "ok": after == [i * i for i in range(50)],
                  "counters": dict(rt.stats)}), flush=True)
sys.stdin.readline()
p2prt.shutdown()
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for _ in range(2):
            c.workers.append(c.start_worker())
        yield c
    finally:
        c.close()


def _start_held(cluster: Cluster) -> tuple[Proc, Path, Path]:
    gate, folder = cluster.folder / "gate", cluster.folder / "started"
    folder.mkdir()
    script = cluster.folder / "held.py"
    script.write_text(HELD)
    driver = Proc([PYTHON, str(script), cluster.board.address, str(cluster.key), str(gate), str(folder)],
                  env=user_env("alice", cluster.folder / "config" / "driver"), cwd=str(cluster.folder), stdin=True)
    return driver, gate, folder


def test_a_board_restart_lets_running_tasks_finish_and_new_ones_flow(cluster: Cluster) -> None:
    driver, gate, folder = _start_held(cluster)
    try:
        wait_until(lambda: bool(os.listdir(folder)), 60, "a task to start")
        cluster.cli("cluster", "create", "friends")
        cluster.board.restart()  # SIGKILL, then the same port and data folder
        # The tasks' data path is peer to peer: they finish while the board is new.
        gate.touch()
        held = read_report(driver, "held", timeout=60)
        worker_pids = {w.pid for w in cluster.workers}
        assert [v[0] for v in held["values"]] == [0, 1] and {v[1] for v in held["values"]} <= worker_pids
        # Workers and the driver reconnect by themselves (backoff); new tasks flow.
        wait_until(lambda: len(cluster.status()["workers"]) == 2, 30, "both workers to register again")
        driver.write_line("go")
        after = read_report(driver, "after", timeout=60)
        assert after["ok"], after
        # Accounts and clusters are the board's files: intact.
        assert "alice/friends" in cluster.cli("cluster", "list")
        driver.write_line("bye")
        assert driver.wait_exit(timeout=30) == 0, driver.output()
        wait_all_free(cluster)
    finally:
        gate.touch()
        driver.kill()


def test_a_dead_scripts_leases_are_freed_and_its_tasks_stopped(cluster: Cluster) -> None:
    driver, gate, folder = _start_held(cluster)
    try:
        wait_until(lambda: bool(os.listdir(folder)), 60, "a task to start")
        executors = [int(name.split("-")[1]) for name in os.listdir(folder)]
        assert all(pid_alive(p) for p in executors)
        assert sum(w["busy"] for w in cluster.status()["workers"]) >= 1
        driver.kill()  # SIGKILL: no goodbye to anyone
        # The board frees its leases; the workers stop what it was running (the
        # executors running its tasks are killed and replaced) — the gate stays shut.
        wait_all_free(cluster, timeout=3 * cluster.board.heartbeat_timeout + 10)
        wait_until(lambda: not any(pid_alive(p) for p in executors), 20, "the dead script's tasks to stop")
        assert not gate.exists()
        assert all(w.proc.poll() is None for w in cluster.workers)  # the workers live on
    finally:
        gate.touch()
        driver.kill()
