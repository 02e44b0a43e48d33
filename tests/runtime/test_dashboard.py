"""The board's web dashboard: metrics from heartbeats, the page, and a real browser.

Unit tests for the bounded metrics and the page; then a real board process with
``--dashboard 0``, a worker and a driver running tasks (one failing): the JSON API and a
headless Chromium (Debian's ``chromium``) show the worker, its reachability, the tasks
per second and the failure. The screenshot is saved in the test's folder (and, with
``P2PRT_DASHBOARD_SCREENSHOT=PATH``, also there — e.g. docs/img/dashboard.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from p2prt.board.dashboard import render_page
from p2prt.board.metrics import BUCKET, MAX_FAILURES, BoardMetrics

from .procs import PYTHON, Proc, env_with, make_key, p2prt_cli, start_worker, user_env, wait_until

pytestmark = pytest.mark.timeout(120)


def test_metrics_count_deltas_in_buckets_and_keep_failures_bounded() -> None:
    now = [1000.0]
    m = BoardMetrics(clock=lambda: now[0])
    m.observe("w1", "bob@h", "alice/friends", 10, 1, [[999.0, "fit", "error", "the task raised an exception"]])
    m.observe("w1", "bob@h", "alice/friends", 15, 1, None)
    now[0] += BUCKET
    m.observe("w2", "carol@g", "alice/friends", 4, 0, None)
    m.observe("w1", "bob@h", "alice/friends", 3, 0, None)  # went backwards: counts nothing
    rates = m.rates()
    assert [r["tasks_per_s"] * BUCKET for r in rates] == [15, 4]
    assert rates[0]["failed_per_s"] * BUCKET == 1
    for i in range(MAX_FAILURES + 30):
        m.observe("w2", "carol@g", "alice/friends", 4, 0, [[float(i), f"t{i}", "crashed", "x"], "junk", [1, 2]])
    failures = m.recent_failures()
    assert len(failures) == MAX_FAILURES and failures[0]["task"] == f"t{MAX_FAILURES + 29}"


def test_the_page_escapes_what_workers_report() -> None:
    snap: dict[str, Any] = {
        "workers": [{"cluster": "a/b", "user": "bob", "host": "<script>x</script>", "address": "192.0.2.1:5",
                     "slots": 2, "busy": 1, "reachability": "public", "peer_id": "p" * 20}],
        "leases": [], "waiting": [], "rates": [],
        "failures": [{"time": 0.0, "cluster": "a/b", "worker": "bob@h", "task": "<img src=x>", "kind": "error",
                      "message": "m"}],
    }
    page = render_page(snap)
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<img src=x>" not in page and "1/2" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


DRIVER = """
import sys, p2prt
board, key = sys.argv[1:3]
p2prt.init("alice/personal", board=board, key=key, user="alice")

@p2prt.remote
def square(x):
    return x * x

@p2prt.remote(max_retries=0)
def doomed():
    raise ValueError("on purpose")

assert p2prt.get([square.remote(i) for i in range(200)]) == [i * i for i in range(200)]
try:
    p2prt.get(doomed.remote())
except ValueError:
    print("failed as planned", flush=True)
p2prt.shutdown()
"""


def test_the_dashboard_in_a_browser(tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is missing; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    key = make_key(tmp_path, "alice")
    data = tmp_path / "board"
    p2prt_cli("board", "add-user", "alice", "--key", f"{key}.pub", "--data", str(data))
    board = Proc([PYTHON, "-m", "p2prt", "board", "--data", str(data), "--port", "0", "--heartbeat-timeout", "1.5",
                  "--dashboard", "0"], env=env_with())
    worker = None
    try:
        port = int(board.wait_for(r"listening on [\d.]+:(\d+)").group(1))
        url = board.wait_for(r"dashboard on (http://\S+)").group(1)
        assert url.startswith("http://127.0.0.1:")

        class _Board:
            address = f"127.0.0.1:{port}"

        worker = start_worker("alice", key, _Board(), "alice/personal", tmp_path / "cfg-worker")  # type: ignore[arg-type]
        worker.wait_for("These users may run Python code")
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        res = subprocess.run([PYTHON, str(script), f"127.0.0.1:{port}", str(key)], capture_output=True, text=True,
                             timeout=90, env=user_env("alice", tmp_path / "cfg-driver"), cwd=tmp_path)
        assert res.returncode == 0 and "failed as planned" in res.stdout, res.stderr

        def reported() -> bool:
            snap = _get_json(url + "api/status.json")
            done = sum(r["tasks_per_s"] for r in snap["rates"]) * 5
            return done >= 200 and any(f["task"] == "doomed" for f in snap["failures"])

        wait_until(reported, 30, "the worker's heartbeats to report the tasks and the failure")
        snap = _get_json(url + "api/status.json")
        (w,) = snap["workers"]
        assert w["cluster"] == "alice/personal" and w["reachability"] == "public" and w["slots"] >= 1
        (failure,) = snap["failures"]
        assert failure["kind"] == "error" and failure["worker"].startswith("alice@")
        assert "on purpose" not in json.dumps(snap)  # the exception's text is the script's business

        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                             capture_output=True, text=True, timeout=60).stdout
        for text in ("p2prt board", "alice/personal", "public", "doomed", "tasks/s", "<svg"):
            assert text in dom, text
        shot = tmp_path / "dashboard.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1280,900", "--hide-scrollbars", url], capture_output=True, timeout=60)
        assert shot.is_file() and shot.stat().st_size > 5000
        if target := os.environ.get("P2PRT_DASHBOARD_SCREENSHOT"):
            shutil.copy(shot, target)
    finally:
        if worker is not None:
            worker.stop()
        board.stop()
