"""``p2prt.Executor`` as a ``concurrent.futures.Executor``, and progress bars.

On the embedded cluster with two slots (as test_api.py), plus one subprocess for an
executor that starts and stops the runtime itself. Gated tasks wait for a file the test
creates; nothing sleeps for luck.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
import time
from pathlib import Path

import pytest

import p2prt
from p2prt.errors import GetTimeoutError, TaskError

from .procs import run_python

pytestmark = pytest.mark.timeout(90)


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(f"no {x}")


def gated(gate: str, started: str, x: int) -> int:
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)  # sleep-ok: poll interval of a bounded wait for the gate
    return x


def _wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)  # sleep-ok: poll interval of a bounded wait for the event


def test_submit_result_exception_and_callbacks(cluster: p2prt.ClusterInfo) -> None:
    with p2prt.Executor() as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        f = ex.submit(add, 2, y=3)
        assert isinstance(f, concurrent.futures.Future)
        assert f.result(timeout=30) == 5 and f.exception() is None and f.done() and not f.cancelled()
        bad = ex.submit(fail, 7)
        error = bad.exception(timeout=30)
        assert isinstance(error, ValueError) and isinstance(error, TaskError) and "no 7" in str(error)
        with pytest.raises(ValueError, match="no 7"):
            bad.result()
        seen: list[tuple[int, str]] = []
        done = threading.Event()

        def callback(fut: concurrent.futures.Future[int]) -> None:
            seen.append((fut.result(), threading.current_thread().name))
            done.set()

        g = ex.submit(square, 9)
        g.add_done_callback(callback)
        assert done.wait(30)
        g.add_done_callback(callback)  # added after completion: called at once, here
        assert [v for v, _ in seen] == [81, 81]
        assert seen[0][1] == "p2prt-executor"  # not the runtime's trio thread
    assert p2prt.is_initialized()  # the executor did not start it, so it leaves it running


def test_map_keeps_order_with_and_without_chunks(cluster: p2prt.ClusterInfo) -> None:
    with p2prt.Executor() as ex:
        assert list(ex.map(square, range(50))) == [i * i for i in range(50)]
        assert list(ex.map(add, range(23), range(100), chunksize=5)) == [2 * i for i in range(23)]
        assert list(ex.map(square, [])) == []
        with pytest.raises(ValueError):
            ex.map(square, range(3), chunksize=0)
        # An error surfaces when its result is reached, like the stdlib's.
        results = ex.map(fail, [1])
        with pytest.raises(ValueError, match="no 1"):
            next(results)


def test_map_timeout(cluster: p2prt.ClusterInfo, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    try:
        with p2prt.Executor() as ex:
            results = ex.map(gated, [str(gate)], [str(tmp_path / "s")], [1], timeout=0.5)
            with pytest.raises(concurrent.futures.TimeoutError):
                next(results)
            gate.touch()  # leaving the block waits for the running call
    finally:
        gate.touch()


def cube(x: int) -> int:
    return x**3


def test_cancel_a_waiting_task_and_shutdown_with_cancel_futures(cluster: p2prt.ClusterInfo, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    started = [tmp_path / f"started{i}" for i in range(2)]
    ex = p2prt.Executor()
    try:
        running = [ex.submit(gated, str(gate), str(s), i) for i, s in enumerate(started)]
        for s in started:
            _wait_file(s)  # both slots busy
        # A few more are sent ahead to the workers' queues (they count as running, as
        # the stdlib's ProcessPoolExecutor counts its call queue); the rest wait here.
        more = [ex.submit(cube, i) for i in range(8)]
        waiting = [f for f in more if not f.running()]
        assert waiting, "every task was sent ahead"
        assert waiting[0].cancel() and waiting[0].cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            waiting[0].result()
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in waiting)
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(square, 1)
    finally:
        gate.touch()
    assert [f.result(timeout=30) for f in running] == [0, 1]  # running ones finish
    assert not running[0].cancel()  # done: too late
    for i, f in enumerate(more):
        assert f.cancelled() or f.result(timeout=30) == i**3


def test_many_threads_share_one_executor(cluster: p2prt.ClusterInfo) -> None:
    with p2prt.Executor() as ex:
        with concurrent.futures.ThreadPoolExecutor(8) as threads:
            outer = [threads.submit(lambda i=i: ex.submit(square, i).result(timeout=60)) for i in range(64)]
            assert [f.result() for f in outer] == [i * i for i in range(64)]


def test_get_and_map_show_a_progress_bar(
    cluster: p2prt.ClusterInfo, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    double = p2prt.remote(square)
    refs = [double.remote(i) for i in range(30)]
    assert p2prt.get(refs, progress="squares") == [i * i for i in range(30)]
    err = capsys.readouterr().err
    assert "squares" in err and "30/30" in err
    with p2prt.Executor() as ex:
        assert list(ex.map(square, range(12), chunksize=4, progress=True)) == [i * i for i in range(12)]
    assert "3/3" in capsys.readouterr().err  # 12 calls in 3 tasks
    gate = tmp_path / "gate"
    try:
        with pytest.raises(GetTimeoutError):
            p2prt.get(p2prt.remote(gated).remote(str(gate), os.devnull, 1), timeout=0.3, progress=True)
    finally:
        gate.touch()


def test_an_executor_starts_and_stops_its_own_runtime(tmp_path: Path) -> None:
    code = """
import p2prt
def cube(x):
    return x ** 3
with p2prt.Executor(num_cpus=1, task_options={"max_retries": 0}) as ex:
    print("inside", p2prt.is_initialized(), list(ex.map(cube, range(5))))
print("after", p2prt.is_initialized())
"""
    res = run_python(code, cwd=tmp_path, timeout=80)
    assert res.returncode == 0, res.stderr
    assert "inside True [0, 1, 8, 27, 64]" in res.stdout and "after False" in res.stdout


def test_progress_bar_reaches_the_end_in_a_file() -> None:
    from p2prt.progress import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(3, "x", file=out)
    for _ in range(3):
        bar.advance()
    bar.close()
    assert "3/3" in out.getvalue()
