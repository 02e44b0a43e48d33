"""The embedded local cluster: a board and a worker on loopback, started by ``init()``.

The real stack — board, Noise, leases, a worker process with executor subprocesses —
on 127.0.0.1 with a throwaway identity in a temporary folder, removed at shutdown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from ..board.config import BoardConfig
from ..board.scheduler import SchedulerConfig
from ..board.server import BoardServer
from ..identity.certificate import NodeIdentity
from ..identity.keys import generate_ed25519, write_private_key
from ..identity.known_boards import KnownBoards

__all__ = ["EmbeddedCluster", "EMBEDDED_USER"]

EMBEDDED_USER = "local"


class EmbeddedCluster:
    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.dir = Path(tempfile.mkdtemp(prefix="p2prt-"))
        self.key = generate_ed25519(comment="p2prt-embedded")
        self.key_path = self.dir / "id_ed25519"
        write_private_key(self.key_path, self.key)
        self.identity = NodeIdentity.create(self.key, EMBEDDED_USER)
        self.known_boards = KnownBoards(self.dir / "known_boards")
        self.cluster = f"{EMBEDDED_USER}/personal"
        self.address = ""
        self.worker: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> str:
        """Start the board (in this trio loop) and the worker process; return the board address."""
        board = BoardServer(
            BoardConfig(
                data_dir=self.dir / "board",
                port=0,
                heartbeat_interval=1.0,
                tick_interval=0.25,
                scheduler=SchedulerConfig(worker_timeout=10.0, client_timeout=10.0, lease_ttl=20.0),
            )
        )
        board.store.add_user(EMBEDDED_USER, [self.key.public], now=time.time())
        port = await nursery.start(board.serve)
        self.address = f"127.0.0.1:{port}"
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.dir / "worker-config"),
            "P2PRT_USER": EMBEDDED_USER,
        }
        env.pop("P2PRT_KEY_PASSPHRASE", None)
        cmd = [
            sys.executable,
            "-m",
            "p2prt",
            "-q",
            "worker",
            "--cluster",
            self.cluster,
            "--board",
            self.address,
            "--cpus",
            str(self.num_cpus),
            "--key",
            str(self.key_path),
            "--listen",
            "127.0.0.1",
            "--embedded",
        ]
        self.worker = await trio.lowlevel.open_process(cmd, env=env, stdin=subprocess.DEVNULL)
        nursery.start_soon(self._reap)
        return self.address

    async def _reap(self) -> None:
        assert self.worker is not None
        try:
            await self.worker.wait()
        finally:
            with trio.CancelScope(shield=True):
                if self.worker.returncode is None:
                    self.worker.terminate()
                    with trio.move_on_after(3):
                        await self.worker.wait()
                    if self.worker.returncode is None:
                        self.worker.kill()
                        await self.worker.wait()

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
