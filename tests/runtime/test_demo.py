"""``p2prt demo`` and the quickstart example run as a user would run them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .procs import PYTHON, ROOT, env_with, p2prt_cli

pytestmark = pytest.mark.timeout(120)


def test_demo_estimates_pi() -> None:
    res = p2prt_cli("demo", "--tasks", "20", "--samples", "2000", "--cpus", "2", "--no-progress", timeout=110)
    assert "embedded cluster up in" in res.stdout
    assert "pi ~ 3.1" in res.stdout and "from 40,000 points in 20 tasks" in res.stdout
    assert "tasks/s" in res.stdout
    assert "Traceback" not in res.stderr
    assert "tasks:" not in res.stderr  # no bar


def test_demo_shows_a_progress_bar() -> None:
    res = p2prt_cli("demo", "--tasks", "20", "--samples", "2000", "--cpus", "2", timeout=110)
    assert "pi ~ 3.1" in res.stdout
    assert "tasks: 100%" in res.stderr and "20/20" in res.stderr  # tqdm's bar, on stderr


def test_quickstart_example_runs(tmp_path: Path) -> None:
    script = Path(ROOT) / "examples" / "quickstart.py"
    if not script.exists():
        pytest.skip("examples/quickstart.py is not written yet")
    res = subprocess.run([PYTHON, str(script)], capture_output=True, text=True, timeout=110, env=env_with(),
                         cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().endswith("done")
    assert "Traceback" not in res.stderr
