"""Run a real ``p2prt board`` process for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path


class BoardProcess:
    """``python -m p2prt board`` in a subprocess; ``start()`` returns once it listens."""

    def __init__(self, data: Path, *, port: int = 0, registration: str = "closed", heartbeat_timeout: float = 1.5):
        self.data = data
        self.port = port
        self.registration = registration
        self.heartbeat_timeout = heartbeat_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.fingerprint = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> BoardProcess:
        cmd = [
            sys.executable,
            "-m",
            "p2prt",
            "board",
            "--data",
            str(self.data),
            "--port",
            str(self.port),
            "--registration",
            self.registration,
            "--heartbeat-timeout",
            str(self.heartbeat_timeout),
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy()
        )
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:  # bounded by pytest-timeout if the board never starts
            seen.append(line)
            if m := re.search(r"listening on [\d.]+:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.search(r"fingerprint (SHA256:\S+)", line):
                self.fingerprint = m.group(1)
                return self
        raise RuntimeError("board exited before listening:\n" + "".join(seen))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def p2prt(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; returns the completed process (stdout+stderr captured)."""
    res = subprocess.run(
        [sys.executable, "-m", "p2prt", *args], capture_output=True, text=True, timeout=60, env=env or os.environ.copy()
    )
    if check and res.returncode != 0:
        raise AssertionError(f"p2prt {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res
