"""Several OS processes, one DHT node each: every one resolves every other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import p2prt

SCRIPT = Path(__file__).with_name("node_proc.py")
ROOT = Path(p2prt.__file__).resolve().parent.parent


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def expect(proc: subprocess.Popen[str], word: str) -> list[str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded by the test's timeout
    parts = line.split()
    assert parts and parts[0] == word, f"expected {word!r}, got {line!r} (exit code {proc.poll()})"
    return parts[1:]


@pytest.mark.timeout(60)
def test_four_processes_resolve_each_other() -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(spawn())
        host, port, first_id = expect(procs[0], "ready")
        ids = [first_id]
        for _ in range(3):
            procs.append(spawn(f"{host}:{port}"))
        ids += [expect(p, "ready")[2] for p in procs[1:]]
        assert len(set(ids)) == 4
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(" ".join(ids) + "\n")
            proc.stdin.flush()
        for proc in procs:
            found, asked, _ms = expect(proc, "resolved")
            assert (int(found), int(asked)) == (4, 4)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("quit\n")
            proc.stdin.close()
        for proc in procs:
            assert proc.wait(timeout=20) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
