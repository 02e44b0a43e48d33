"""A board and alice's workers as real processes, for the chaos and restart tests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..runtime.procs import READY_LINE, Board, Proc, as_user, make_key, start_worker


class Cluster:
    """The board, alice's key and her workers; dead workers are replaced."""

    def __init__(self, folder: Path, *, heartbeat_timeout: float = 1.5) -> None:
        self.folder = folder
        self.board = Board(folder / "board", heartbeat_timeout=heartbeat_timeout)
        self.key = make_key(folder, "alice")
        self.board.add_user("alice", self.key)
        self.workers: list[Proc] = []
        self.started = 0
        self.lock = threading.Lock()

    def start_worker(self) -> Proc:
        self.started += 1
        proc = start_worker("alice", self.key, self.board, "alice/personal",
                            self.folder / "config" / f"worker{self.started}", cpus=1)
        proc.wait_for(READY_LINE)
        return proc

    def replace_dead(self) -> int:
        """Start a worker for each that exited; returns how many."""
        with self.lock:
            dead = [w for w in self.workers if w.proc.poll() is not None]
            for w in dead:
                self.workers.remove(w)
                w.stop()
        for _ in dead:
            fresh = self.start_worker()
            with self.lock:
                self.workers.append(fresh)
        return len(dead)

    def cli(self, *args: str) -> str:
        """A ``p2prt`` command run by alice; its stdout."""
        return as_user("alice", self.key, self.board, self.folder / "config" / "alice", *args).stdout

    def status(self) -> dict[str, Any]:
        out = as_user("alice", self.key, self.board, self.folder / "config" / "alice", "status", "--json",
                      "--cluster", "alice/personal").stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.board.stop()



def read_report(driver: Proc, phase: str, timeout: float) -> dict[str, Any]:
    """The driver's JSON line with ``"phase": phase``."""
    line = driver.wait_for(rf'^\{{.*"phase": "{phase}".*\}}$', timeout=timeout).group(0)
    result: dict[str, Any] = json.loads(line)
    return result


def wait_all_free(cluster: Cluster, timeout: float = 30.0) -> dict[str, Any]:
    """The board's status once no slot is busy and no lease is held."""
    deadline = time.monotonic() + timeout
    while True:
        st = cluster.status()
        if all(w["busy"] == 0 for w in st["workers"]) and not st["leases"]:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"slots still taken after {timeout} s: {st}")
        time.sleep(0.2)  # sleep-ok: poll interval of a bounded wait (each poll is a CLI process)
