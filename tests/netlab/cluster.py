"""A p2prt cluster across the NAT lab: the board in the "internet", one worker in home A.

Shared by the lab's p2prt tests (tests in this folder import it as ``.cluster``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from p2prt.identity import generate_ed25519, write_private_key

from .lab import PYTHON, LabProcess, NetLab, lab_env

BOARD_PORT = 7790


@dataclass
class LabCluster:
    lab: NetLab
    address: str
    """The board's address (``host:port``)."""
    key: Path
    """alice's private key: she owns the cluster alice/personal."""
    env: dict[str, str]
    board: LabProcess
    worker: LabProcess

    def status(self) -> dict[str, object]:
        """``p2prt status --json`` for alice/personal, run from home B."""
        out = self.lab.run(self.lab.home_b.host_ns,
                           [PYTHON, "-m", "p2prt", "status", "--json", "--cluster", "alice/personal",
                            "--board", self.address, "--key", str(self.key)],
                           env={**self.env, "P2PRT_USER": "alice"}, timeout=30).stdout
        result: dict[str, object] = json.loads(out)
        return result


def wait_for_line(proc: LabProcess, text: str, timeout: float = 30.0) -> str:
    """Read ``proc``'s output until a line containing ``text`` (LabError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        line = proc.read_line(max(0.1, deadline - time.monotonic()))
        if text in line:
            return line


def start_cluster(lab: NetLab, folder: Path, *, board_args: tuple[str, ...] = (),
                  worker_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> LabCluster:
    """Board in the internet, alice's worker (1 CPU) in home A, published in the DHT."""
    key = folder / "alice_ed25519"
    write_private_key(key, generate_ed25519(comment="alice"))
    full_env = lab_env({"HOME": str(folder / "home"), **(env or {})})
    data = str(folder / "board")
    lab.run(lab.internet_ns, [PYTHON, "-m", "p2prt", "board", "add-user", "alice", "--key", str(key) + ".pub",
                              "--data", data], env=full_env)
    address = f"{lab.board_ip}:{BOARD_PORT}"
    board = lab.start(lab.internet_ns, [PYTHON, "-m", "p2prt", "board", "--data", data, "--host", lab.board_ip,
                                        "--port", str(BOARD_PORT), *board_args], env=full_env)
    wait_for_line(board, "listening")
    worker = lab.start(lab.home_a.host_ns, [PYTHON, "-m", "p2prt", "worker", "--cluster", "alice/personal",
                                            "--board", address, "--key", str(key), "--user", "alice",
                                            "--cpus", "1", *worker_args], env=full_env)
    wait_for_line(worker, "address published in the DHT")
    return LabCluster(lab, address, key, full_env, board, worker)
