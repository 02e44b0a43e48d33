"""ExecutorPool with real executor subprocesses: results, errors, crashes, timeouts,
cancellation, output, nested requests (slot lending), resource limits and the sandbox."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import trio

from p2prt.errors import ConfigError, P2prtError
from p2prt.serialization import loads
from p2prt.worker._execproto import FrameReader, RemoteErrorInfo, encode
from p2prt.worker._shm import SHM_MIN, SharedBuffer
from p2prt.worker.pool import ExecResult, ExecTask, ExecutorPool

# The executors cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

_ids = iter(range(1, 10**9))


def make_task(fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> ExecTask:
    payload = cloudpickle.dumps(fn, protocol=5)
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps((args, kwargs), protocol=5, buffer_callback=buffers.append)
    return ExecTask(
        next(_ids),
        hashlib.sha256(payload).digest()[:16],
        payload,
        data,
        [bytes(b.raw()) for b in buffers],
        timeout,
    )


def value(result: ExecResult) -> Any:
    assert result.status == "ok", (result.status, result.message, error_info(result) if result.data else None)
    return loads(result.data, result.buffers)


def error_info(result: ExecResult) -> RemoteErrorInfo:
    info = pickle.loads(result.data)
    assert isinstance(info, RemoteErrorInfo)
    return info


class Harness:
    """Collects what the pool reports and lets a test wait for it."""

    def __init__(self) -> None:
        self.results: dict[int, ExecResult] = {}
        self.batches: list[list[ExecResult]] = []
        self.output: list[tuple[int, str, str]] = []
        self._changed = trio.Event()

    def on_results(self, batch: list[ExecResult]) -> None:
        self.batches.append(batch)
        for r in batch:
            assert r.task_id not in self.results, f"task {r.task_id} reported twice"
            self.results[r.task_id] = r
        self._wake()

    def on_output(self, task_id: int, stream: str, text: str) -> None:
        self.output.append((task_id, stream, text))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def result(self, task: ExecTask) -> ExecResult:
        await self.until(lambda: task.task_id in self.results)
        return self.results[task.task_id]

    async def printed(self, task: ExecTask) -> str:
        """The first line ``task`` printed."""
        await self.until(lambda: any(tid == task.task_id for tid, _, _ in self.output))
        return next(text for tid, _, text in self.output if tid == task.task_id)


StartPool = Callable[..., Awaitable[tuple[ExecutorPool, Harness]]]


@pytest.fixture
def start_pool(nursery: trio.Nursery) -> StartPool:
    async def start(size: int = 2, **kwargs: Any) -> tuple[ExecutorPool, Harness]:
        h = Harness()
        pool = ExecutorPool(size, on_results=h.on_results, on_output=h.on_output, **kwargs)
        await nursery.start(pool.run)
        return pool, h

    return start


# ---------------------------------------------------------------- task functions


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int = 0) -> int:
    return a + b


def total_length(*bufs: Any) -> int:
    return sum(len(memoryview(b)) for b in bufs)


def big_result(n: int) -> bytes:
    return b"x" * n


def fail(n: int) -> None:
    raise ValueError(f"boom {n}")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot travel")
        self.lock = __import__("threading").Lock()


def fail_unpicklable() -> None:
    raise Unpicklable()


def exit_now(code: int) -> None:
    os._exit(code)


def pid_then_sleep(seconds: float) -> int:
    print(os.getpid(), flush=True)
    time.sleep(seconds)  # sleep-ok: the task's own simulated work
    return os.getpid()


def nap(seconds: float, v: Any) -> Any:
    time.sleep(seconds)  # sleep-ok: the task's own simulated work
    return v


def stubborn() -> None:
    print(os.getpid(), flush=True)
    while True:
        try:
            time.sleep(10)  # sleep-ok: the task's own simulated work
        except KeyboardInterrupt:
            pass


def deaf() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    print(os.getpid(), flush=True)
    time.sleep(60)  # sleep-ok: the task's own simulated work


def chatty(n: int) -> int:
    print(f"hello {n}")
    print(f"oops {n}", file=sys.stderr)
    sys.stdout.write("no newline")
    return n


def nested(kind: str, payload: tuple[Any, ...]) -> Any:
    from p2prt.worker import executor

    return executor.request(kind, payload)


def allocate(n: int) -> int:
    return len(bytearray(n))


def spin() -> None:
    while True:
        pass


def getpid() -> int:
    return os.getpid()


def confinement_probe(outside_tmp_file: str, watcher_pid: int) -> dict[str, str]:
    """What a task can do to the machine it runs on (see the sandbox tests)."""
    import uuid

    out: dict[str, str] = {}
    out["tmp_file_seen"] = str(os.path.exists(outside_tmp_file))
    mine = f"/tmp/p2prt-probe-{uuid.uuid4().hex}"
    with open(mine, "w") as f:
        f.write("x")
    out["own_tmp_file"] = mine
    for target in ("/etc/p2prt-probe", "/usr/p2prt-probe"):
        try:
            with open(target, "w") as f:
                f.write("x")
            out[target] = "written"
            os.unlink(target)
        except OSError as exc:
            out[target] = type(exc).__name__
    try:
        os.kill(watcher_pid, 0)
        out["signal_outside"] = "possible"
    except OSError as exc:
        out["signal_outside"] = type(exc).__name__
    return out


def sandbox_probe(secret: str, port: int) -> tuple[str, str]:
    try:
        with open(secret) as f:
            read = "read " + f.read()
    except OSError as exc:
        read = type(exc).__name__
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        net = "connected"
    except OSError as exc:
        net = type(exc).__name__
    return read, net


# --------------------------------------------------------------------- framing


def test_frames_survive_any_split() -> None:
    frames = encode(("a", 1)) + encode(("run", [(1, b"f", b"x" * 1000, [])])) + encode(("exit",))
    for step in (1, 3, 7, 1001, len(frames)):
        reader = FrameReader()
        got = []
        for i in range(0, len(frames), step):
            reader.feed(frames[i : i + step])
            got += reader.messages()
        assert got == [("a", 1), ("run", [(1, b"f", b"x" * 1000, [])]), ("exit",)]


def test_an_undecodable_frame_is_skipped_and_flagged() -> None:
    body = b"\x80\x05not a pickle"
    reader = FrameReader()
    reader.feed(len(body).to_bytes(4, "big") + body + encode(("exit",)))
    bad, good = reader.messages()
    assert bad[0] == "bad" and good == ("exit",)


def test_reader_says_how_much_it_still_wants() -> None:
    frame = encode(("x", b"y" * 100))
    reader = FrameReader()
    assert reader.wanted == 4
    reader.feed(frame[:10])
    assert reader.wanted == len(frame) - 10
    reader.feed(frame[10:])
    assert reader.messages() == [("x", b"y" * 100)]


# ------------------------------------------------------------------------ pool


async def test_two_executors_start(start_pool: StartPool) -> None:
    # How fast is a benchmark's business (benchmarks/bench_core.py), not a test's.
    with trio.fail_after(30):
        pool, _ = await start_pool(2)
    stats = pool.statistics()
    assert (stats.size, stats.executors, stats.executors_started) == (2, 2, 2)


async def test_thousand_tiny_tasks_over_two_executors(start_pool: StartPool) -> None:
    with trio.fail_after(15):
        pool, h = await start_pool(2)
        tasks = [make_task(double, i) for i in range(1000)]
        pool.submit(tasks)
        await h.until(lambda: len(h.results) == 1000)
    assert [value(h.results[t.task_id]) for t in tasks] == [2 * i for i in range(1000)]
    assert len(h.batches) < 200  # results travel in batches
    stats = pool.statistics()
    assert stats.functions_sent == 2  # once per executor
    assert (stats.running, stats.queued, stats.crashes) == (0, 0, 0)
    pids = set()
    more = [make_task(getpid) for _ in range(200)]
    pool.submit(more)
    with trio.fail_after(10):
        for t in more:
            pids.add(value(await h.result(t)))
    assert len(pids) == 2


async def test_a_slow_task_is_not_held_back_by_its_chunk(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        first, blocker, c, d = (
            make_task(nap, 0.02, "a"),
            make_task(pid_then_sleep, 60),
            make_task(double, 1),
            make_task(double, 2),
        )
        pool.submit([first, blocker, c, d])  # two chunks of two on the only executor
        assert value(await h.result(first)) == "a"
        await h.printed(blocker)
        assert blocker.task_id not in h.results
        pool.cancel(blocker.task_id, force=True)
        assert [value(await h.result(t)) for t in (c, d)] == [2, 4]
        assert (await h.result(blocker)).status == "cancelled"


async def test_tasks_arriving_just_after_a_long_one_starts_go_to_the_idle_executor(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(2)
        blocker = make_task(pid_then_sleep, 60)
        pool.submit([blocker])
        await h.printed(blocker)  # it has started, and no result has come from it
        shorts = [make_task(double, i) for i in range(20)]
        pool.submit(shorts)
        assert [value(await h.result(t)) for t in shorts] == [2 * i for i in range(20)]
        pool.cancel(blocker.task_id, force=True)
        assert (await h.result(blocker)).status == "cancelled"


async def test_kwargs_buffers_and_large_results(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        t1 = make_task(add, 2, b=40)
        t2 = make_task(total_length, pickle.PickleBuffer(b"a" * 5000), pickle.PickleBuffer(bytearray(300)))
        t3 = make_task(big_result, 8 << 20)
        pool.submit([t1, t2, t3])
        assert t2.buffers  # the arguments' buffers travel out of band
        assert value(await h.result(t1)) == 42
        assert value(await h.result(t2)) == 5300
        assert value(await h.result(t3)) == b"x" * (8 << 20)


async def test_large_payloads_go_through_shared_memory(start_pool: StartPool) -> None:
    with trio.fail_after(20):
        pool, h = await start_pool(1)
        payload = os.urandom(2 * SHM_MIN + 3)
        t = make_task(total_length, pickle.PickleBuffer(payload))
        # As the worker's channel delivers them: received straight into shared memory.
        shared = dataclasses.replace(t, buffers=[memoryview(SharedBuffer.copy_of(b)) for b in t.buffers])
        big = make_task(big_result, 3 * SHM_MIN)
        pool.submit([shared, big])
        assert value(await h.result(shared)) == len(payload)
        result = await h.result(big)
        assert type(result.data) is bytes and len(result.data) < 1000  # the pickle, not the value
        (buf,) = result.buffers
        assert type(buf) is memoryview and isinstance(buf.obj, SharedBuffer)
        assert value(result) == b"x" * (3 * SHM_MIN)
        # The same shared argument can go out again (a task given back, or retried).
        retry = dataclasses.replace(shared, task_id=next(_ids))
        pool.submit([retry])
        assert value(await h.result(retry)) == len(payload)


async def test_exception_comes_back_with_its_traceback(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        t1, t2 = make_task(fail, 7), make_task(fail_unpicklable)
        pool.submit([t1, t2])
        r1, r2 = await h.result(t1), await h.result(t2)
    assert r1.status == "error"
    info = error_info(r1)
    assert (info.type_module, info.type_qualname, info.message) == ("builtins", "ValueError", "boom 7")
    assert info.exception is not None
    exc = pickle.loads(info.exception)
    assert isinstance(exc, ValueError) and exc.args == ("boom 7",)
    assert "in fail" in info.traceback and "boom 7" in info.traceback
    assert "executor.py" not in info.traceback
    assert info.missing_package is None
    info2 = error_info(r2)
    assert info2.exception is None and info2.type_qualname == "Unpicklable"
    assert info2.message == "cannot travel"


async def test_exit_inside_a_task_is_a_crash_and_the_pool_recovers(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        crash = make_task(exit_now, 3)
        pool.submit([crash])
        r = await h.result(crash)
        assert r.status == "crashed"
        assert "exited with code 3" in r.message and "pid" in r.message
        after = [make_task(double, i) for i in range(10)]
        pool.submit(after)
        assert [value(await h.result(t)) for t in after] == [2 * i for i in range(10)]
    stats = pool.statistics()
    assert (stats.crashes, stats.executors_started, stats.executors) == (1, 2, 1)


async def test_sigkill_from_outside_mid_task(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(2)
        victim = make_task(pid_then_sleep, 60)
        pool.submit([victim])
        pid = int(await h.printed(victim))
        os.kill(pid, signal.SIGKILL)
        r = await h.result(victim)
        assert r.status == "crashed"
        assert f"pid {pid}" in r.message and "signal 9 (SIGKILL)" in r.message
        t = make_task(double, 21)
        pool.submit([t])
        assert value(await h.result(t)) == 42
        await pool.wait_until(lambda s: s.executors == 2)


async def test_timeout_kills_and_replaces_the_executor(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        slow = make_task(pid_then_sleep, 60, timeout=0.3)
        quick = make_task(double, 1, timeout=5)
        pool.submit([slow, quick])
        r = await h.result(slow)
        assert r.status == "timeout"
        assert "0.3" in r.message and "pid" in r.message
        assert value(await h.result(quick)) == 2
        t = make_task(double, 5)
        pool.submit([t])
        assert value(await h.result(t)) == 10
    stats = pool.statistics()
    assert (stats.timeouts, stats.crashes, stats.executors_started) == (1, 0, 2)


async def test_cancel_queued_in_flight_and_running(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        running, in_flight, extra = make_task(pid_then_sleep, 60), make_task(double, 1), make_task(double, 3)
        # Chunks [running, in_flight] and [extra]: the executor has all it may hold.
        pool.submit([running, in_flight, extra])
        queued = make_task(double, 2)
        pool.submit([queued])
        await h.printed(running)
        assert pool.statistics().queued == 1
        pool.cancel(queued.task_id)
        assert h.results[queued.task_id].status == "cancelled"  # at once
        pool.cancel(in_flight.task_id)
        pool.cancel(running.task_id)
        assert (await h.result(running)).status == "cancelled"
        assert (await h.result(in_flight)).status == "cancelled"
        assert value(await h.result(extra)) == 6
        t = make_task(double, 4)
        pool.submit([t])
        assert value(await h.result(t)) == 8
    assert pool.statistics().executors_started == 1  # cancelled without killing anyone
    pool.cancel(12345678)  # unknown: ignored


async def test_force_cancel_kills_the_executor(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        victim = make_task(stubborn)
        behind = make_task(double, 3)  # in flight on the same executor, not started
        pool.submit([victim])
        pool.submit([behind])
        await h.printed(victim)
        pool.cancel(victim.task_id)  # ignored by the task
        pool.cancel(victim.task_id, force=True)
        r = await h.result(victim)
        assert r.status == "cancelled" and "SIGKILL" in r.message
        assert value(await h.result(behind)) == 6  # ran again on the replacement
    stats = pool.statistics()
    assert (stats.executors_started, stats.crashes) == (2, 0)


async def test_force_cancel_of_a_task_not_started_kills_nothing(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        running, waiting = make_task(pid_then_sleep, 60), make_task(double, 1)
        pool.submit([running])
        pool.submit([waiting])
        await h.printed(running)
        pool.cancel(waiting.task_id, force=True)
        pool.cancel(running.task_id)
        assert (await h.result(running)).status == "cancelled"
        assert (await h.result(waiting)).status == "cancelled"
    assert pool.statistics().executors_started == 1


async def test_force_cancel_of_an_executor_that_cannot_answer(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1)
        victim = make_task(deaf)  # SIGINT blocked: the executor never reads the cancel
        pool.submit([victim])
        await h.printed(victim)
        pool.cancel(victim.task_id, force=True)
        r = await h.result(victim)
        assert r.status == "cancelled" and "SIGKILL" in r.message
        t = make_task(double, 2)
        pool.submit([t])
        assert value(await h.result(t)) == 4


async def test_output_is_forwarded_with_the_task_id(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(2)
        tasks = [make_task(chatty, i) for i in range(5)]
        pool.submit(tasks)
        for t in tasks:
            await h.result(t)
    for i, t in enumerate(tasks):
        mine = [(stream, text) for tid, stream, text in h.output if tid == t.task_id]
        assert ("stdout", f"hello {i}\n") in mine
        assert ("stderr", f"oops {i}\n") in mine
        assert ("stdout", "no newline") in mine  # flushed when the task ended


async def test_nested_get_lends_the_slot(start_pool: StartPool) -> None:
    release = trio.Event()
    asked = trio.Event()
    calls: list[tuple[int, tuple[Any, ...]]] = []

    async def on_nested(task_id: int, req: tuple[Any, ...]) -> Any:
        calls.append((task_id, req))
        kind, payload = req
        if kind == "get":
            asked.set()
            await release.wait()
            return ["value", *payload]
        if kind == "fail":
            raise P2prtError("refused")
        if kind == "weird":
            raise Unpicklable()
        return kind

    with trio.fail_after(10):
        pool, h = await start_pool(1, on_nested=on_nested)
        a = make_task(nested, "get", ("x",))
        b = make_task(double, 21)
        pool.submit([a, b])  # both land on the only executor
        await asked.wait()
        assert value(await h.result(b)) == 42  # ran while a waits
        stats = pool.statistics()
        assert stats.lent == 1 and stats.executors == 2
        assert a.task_id not in h.results
        release.set()
        assert value(await h.result(a)) == ["value", "x"]
        await pool.wait_until(lambda s: s.executors == 1 and s.lent == 0)  # the extra retired
        quick, refused, weird = (
            make_task(nested, "submit", ()),
            make_task(nested, "fail", ()),
            make_task(nested, "weird", ()),
        )
        pool.submit([quick, refused, weird])
        assert value(await h.result(quick)) == "submit"
        r = await h.result(refused)
        assert r.status == "error" and error_info(r).message == "refused"
        r = await h.result(weird)  # an exception that cannot travel arrives as its text
        assert r.status == "error" and error_info(r).message == "Unpicklable: cannot travel"
    assert calls[0] == (a.task_id, ("get", ("x",)))


async def test_cancel_while_waiting_in_a_nested_get(start_pool: StartPool) -> None:
    cancelled = trio.Event()

    async def on_nested(task_id: int, req: tuple[Any, ...]) -> Any:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(10):
        pool, h = await start_pool(1, on_nested=on_nested)
        a = make_task(nested, "get", ())
        pool.submit([a])
        await pool.wait_until(lambda s: s.lent == 1)
        pool.cancel(a.task_id)
        assert (await h.result(a)).status == "cancelled"
        await cancelled.wait()


async def test_memory_limit(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1, memory_limit=400 << 20)
        hog, ok = make_task(allocate, 1 << 30), make_task(allocate, 1 << 20)
        pool.submit([hog, ok])
        r = await h.result(hog)
        assert r.status in ("error", "crashed")
        if r.status == "error":
            assert error_info(r).type_qualname == "MemoryError"
        assert value(await h.result(ok)) == 1 << 20


async def test_cpu_time_limit_per_task(start_pool: StartPool) -> None:
    with trio.fail_after(10):
        pool, h = await start_pool(1, cpu_time_limit=1)
        t = make_task(spin)
        pool.submit([t])
        r = await h.result(t)
        assert r.status == "crashed" and "SIGXCPU" in r.message and "CPU time limit" in r.message


async def test_missing_module_names_the_package(
    start_pool: StartPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p2prt_only_here.py").write_text("def f(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import p2prt_only_here  # type: ignore[import-not-found]

    try:
        payload = cloudpickle.dumps(p2prt_only_here.f, protocol=5)  # by reference
    finally:
        del sys.modules["p2prt_only_here"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    task = ExecTask(next(_ids), b"only-here", payload, pickle.dumps(((1,), {})))
    with trio.fail_after(10):
        pool, h = await start_pool(1, env=env)
        pool.submit([task])
        r = await h.result(task)
    assert r.status == "error"
    info = error_info(r)
    assert info.type_qualname == "ModuleNotFoundError"
    assert info.missing_package == "p2prt_only_here"


async def test_start_failure_is_a_config_error() -> None:
    pool = ExecutorPool(2, on_results=lambda batch: None, python="/bin/false")
    with trio.fail_after(10), pytest.raises(ConfigError, match="did not start"):
        await pool.run()


def test_bad_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError):
        ExecutorPool(0, on_results=lambda batch: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="bubblewrap"):
        ExecutorPool(1, on_results=lambda batch: None, sandbox=True)


async def test_shutdown_reaps_every_executor() -> None:
    h = Harness()
    pool = ExecutorPool(2, on_results=h.on_results, on_output=h.on_output)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            sleeper = make_task(pid_then_sleep, 60)
            pool.submit([sleeper])
            pid = int(await h.printed(sleeper))
            nursery.cancel_scope.cancel()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
async def test_sandbox_hides_home_and_network(start_pool: StartPool, isolated_home: Path) -> None:
    secret = isolated_home / "secret.txt"
    secret.write_text("s3cret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        assert sandbox_probe(str(secret), port) == ("read s3cret", "connected")  # outside: both work
        with trio.fail_after(10):
            pool, h = await start_pool(1, sandbox=True)
            t = make_task(sandbox_probe, str(secret), port)
            pool.submit([t])
            read, net = value(await h.result(t))
    finally:
        listener.close()
    assert read == "FileNotFoundError"
    assert net != "connected"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
async def test_sandbox_confines_the_task(start_pool: StartPool, tmp_path: Path) -> None:
    """Read-only system, a private /tmp, and no process outside its own to signal."""
    outside = tmp_path / "visible-outside.txt"
    outside.write_text("here")
    with trio.fail_after(10):
        pool, h = await start_pool(1, sandbox=True)
        t = make_task(confinement_probe, str(outside), os.getpid())
        pool.submit([t])
        seen = value(await h.result(t))
    assert seen["tmp_file_seen"] == "False"  # the host's /tmp is not the task's
    assert not os.path.exists(seen["own_tmp_file"])  # and the task's /tmp is not the host's
    assert seen["/etc/p2prt-probe"] != "written" and seen["/usr/p2prt-probe"] != "written"
    assert not os.path.exists("/etc/p2prt-probe") and not os.path.exists("/usr/p2prt-probe")
    assert seen["signal_outside"] == "ProcessLookupError"  # the test process is invisible to it
