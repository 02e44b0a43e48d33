"""The embedded local cluster: a board and a worker on loopback, started by ``init()``.

The real stack — board, Noise, leases, a worker process with executor subprocesses —
on 127.0.0.1 with a throwaway identity in a temporary folder, removed at shutdown.

Start-up order: creating an :class:`EmbeddedCluster` already binds the board's listening
socket and starts the worker process, before the driver imports its runtime (trio, the
board); the worker's own start-up overlaps those imports. Its first connection waits in
the socket's backlog until :meth:`EmbeddedCluster.start` serves the board on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..identity.keys import generate_ed25519, write_private_key

if TYPE_CHECKING:
    import trio

    from ..identity.certificate import NodeIdentity
    from ..identity.known_boards import KnownBoards

__all__ = ["EmbeddedCluster", "EMBEDDED_USER"]

EMBEDDED_USER = "local"
_LISTEN_BACKLOG = 0xFFFF  # as trio.open_tcp_listeners


class EmbeddedCluster:
    def __init__(self, num_cpus: int | None = None) -> None:
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.dir = Path(tempfile.mkdtemp(prefix="p2prt-"))
        self.worker: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        try:
            self.key = generate_ed25519(comment="p2prt-embedded")
            self.key_path = self.dir / "id_ed25519"
            write_private_key(self.key_path, self.key)
            self.cluster = f"{EMBEDDED_USER}/personal"
            self._sock = _listen_loopback()
            self.port = int(self._sock.getsockname()[1])
            self.address = f"127.0.0.1:{self.port}"
            self.worker = self._spawn_worker()
            from ..identity.certificate import NodeIdentity
            from ..identity.known_boards import KnownBoards

            self.identity: NodeIdentity = NodeIdentity.create(self.key, EMBEDDED_USER)
            self.known_boards: KnownBoards = KnownBoards(self.dir / "known_boards")
        except BaseException:
            self.cleanup()
            raise

    def _spawn_worker(self) -> subprocess.Popen[bytes]:
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
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve the board (in this trio loop) on the socket the worker was told about;
        supervise the worker process; return the board address."""
        import time

        from ..board.config import BoardConfig
        from ..board.scheduler import SchedulerConfig
        from ..board.server import BoardServer

        assert self._sock is not None
        board = BoardServer(
            BoardConfig(
                data_dir=self.dir / "board",
                port=self.port,
                heartbeat_interval=1.0,
                tick_interval=0.25,
                scheduler=SchedulerConfig(worker_timeout=10.0, client_timeout=10.0, lease_ttl=20.0),
                # One machine on loopback: the board knows every address, and a DHT
                # node per process would only cost start-up time (architecture.md (u)).
                dht=False,
            )
        )
        board.store.add_user(EMBEDDED_USER, [self.key.public], now=time.time())
        sock, self._sock = self._sock, None
        await nursery.start(lambda task_status: board.serve(listen_socket=sock, task_status=task_status))
        nursery.start_soon(self._reap)
        return self.address

    async def _reap(self) -> None:
        import trio

        proc = self.worker
        assert proc is not None
        try:
            await _wait_exit(proc)
        finally:
            with trio.CancelScope(shield=True):
                if proc.poll() is None:
                    proc.terminate()
                    with trio.move_on_after(3):
                        await _wait_exit(proc)
                    if proc.poll() is None:
                        proc.kill()
                        await _wait_exit(proc)

    def cleanup(self) -> None:
        """Close the board's socket, stop the worker if it still runs (when the runtime
        never got to supervise it) and remove the folder."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc = self.worker
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _listen_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(_LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


async def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    """Wait (cancellably) until ``proc`` has exited, and reap it."""
    import trio

    if proc.poll() is not None:
        return
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: a thread waits instead
        await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    proc.wait()
