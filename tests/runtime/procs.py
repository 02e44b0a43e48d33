"""Real p2prt processes for the runtime tests: a board, workers, drivers and the CLI.

Copied in spirit from ``tests/board/proc.py`` (the suite runs with
``--import-mode=importlib``, so test folders do not import each other). Nothing here
sleeps for luck: every wait is for a line of output, a file or a process exit, with a
deadline.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from p2prt.identity import generate_ed25519, write_private_key

PYTHON = sys.executable
ROOT = str(Path(__file__).resolve().parents[2])
"""The checkout holding the ``p2prt`` package (subprocesses run from here)."""


def env_with(**extra: str) -> dict[str, str]:
    """The test's environment (fake HOME from conftest) plus ``extra``, with this
    checkout importable."""
    env = {**os.environ, **extra}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])
    return env


def p2prt_cli(*args: str, env: Mapping[str, str] | None = None, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m p2prt ARGS``; stdout and stderr captured."""
    res = subprocess.run([PYTHON, "-m", "p2prt", *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(env) if env is not None else env_with(), cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"p2prt {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def run_python(code: str, *, env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
               timeout: float = 90, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE ARGS`` and return the finished process."""
    return subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else env_with(), cwd=str(cwd or ROOT))


def make_key(folder: Path, name: str) -> Path:
    """A fresh Ed25519 key pair ``folder/name_ed25519`` (+ ``.pub``); returns the private key path."""
    path = folder / f"{name}_ed25519"
    write_private_key(path, generate_ed25519(comment=name))
    return path


def wait_for_file(path: Path, timeout: float = 20.0) -> None:
    """Wait until ``path`` exists (a task writes it), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)  # sleep-ok: poll interval of a bounded wait for the event


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)  # sleep-ok: poll interval of a bounded wait for the event


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


class Proc:
    """A long-running subprocess whose merged stdout/stderr is read by a thread, so the
    test can wait for a line without blocking forever."""

    def __init__(self, argv: list[str], *, env: Mapping[str, str], cwd: str = ROOT, stdin: bool = False) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(env), cwd=cwd,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _drain(self, timeout: float) -> bool:
        """Move one line into ``lines``; False at EOF or when nothing came in ``timeout``."""
        try:
            line = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first output line (seen so far or coming) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.lines:
            if m := regex.search(line):
                return m
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._drain(remaining):
                if remaining > 0:  # end of output: let the process finish, to report its code
                    try:
                        self.proc.wait(timeout=min(remaining, 5))
                    except subprocess.TimeoutExpired:
                        pass
                raise AssertionError(
                    f"{pattern!r} not seen within {timeout} s (exit code {self.proc.poll()}):\n{self.output()}"
                )
            if m := regex.search(self.lines[-1]):
                return m

    def write_line(self, text: str) -> None:
        """A line to the process's stdin (started with ``stdin=True``)."""
        assert self.proc.stdin is not None, "started without stdin=True"
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def output(self) -> str:
        while self._drain(0):
            pass
        return "".join(self.lines)

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not end in ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Board:
    """``p2prt board`` in a subprocess on 127.0.0.1, any free port."""

    def __init__(self, data: Path, *, heartbeat_timeout: float = 1.5, port: int = 0) -> None:
        self.data = data
        self.heartbeat_timeout = heartbeat_timeout
        self.proc = Proc(
            [PYTHON, "-m", "p2prt", "board", "--data", str(data), "--port", str(port),
             "--heartbeat-timeout", str(heartbeat_timeout)],
            env=env_with(),
        )
        self.port = int(self.proc.wait_for(r"listening on [\d.]+:(\d+)").group(1))
        self.fingerprint = self.proc.wait_for(r"fingerprint (SHA256:\S+)").group(1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_user(self, name: str, key: Path) -> None:
        p2prt_cli("board", "add-user", name, "--key", f"{key}.pub", "--data", str(self.data))

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        """SIGKILL the board and start it again on the same port with the same data."""
        self.proc.kill()
        self.proc.stop()
        self.__init__(self.data, heartbeat_timeout=self.heartbeat_timeout, port=self.port)  # type: ignore[misc]


def user_env(name: str, config_home: Path, **extra: str) -> dict[str, str]:
    """Environment of a process run by ``name``: its own known_boards (config folder)."""
    config_home.mkdir(parents=True, exist_ok=True)
    return env_with(P2PRT_USER=name, XDG_CONFIG_HOME=str(config_home), **extra)


def as_user(name: str, key: Path, board: Board, config_home: Path, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """A CLI command run by ``name`` against ``board``."""
    return p2prt_cli(*args, "--board", board.address, "--key", str(key),
                     env=user_env(name, config_home), check=check)


def start_worker(name: str, key: Path, board: Board, cluster: str, config_home: Path, *extra: str,
                 cpus: int = 1) -> Proc:
    """``p2prt worker --cluster CLUSTER`` run by ``name`` (not yet waited for)."""
    return Proc(
        [PYTHON, "-m", "p2prt", "worker", "--cluster", cluster, "--board", board.address, "--key", str(key),
         "--cpus", str(cpus), "--listen", "127.0.0.1", *extra],
        env=user_env(name, config_home),
    )


READY_LINE = r"These users may run Python code on this machine: (.*)$"
