"""The worker's pool of long-lived executor subprocesses, one per slot.

Theory of operation
-------------------
Tasks queue in FIFO order. Whenever an executor has fewer than two chunks in flight, it
gets the next chunk: up to 64 queued tasks (fewer when the queue is short, so that all
executors get a share). The executor runs a chunk's tasks one after another and returns
their results in one frame (earlier after a slow task); results that arrive together are
handed to ``on_results`` together. A function travels to an executor once, before the
first task that needs it.

Each executor has a reader task (results, output, nested requests), a writer task (all
frames queued for it since its last write go out in one ``send_all``) and a watcher for
its process. Nothing here blocks: :meth:`ExecutorPool.submit` and
:meth:`ExecutorPool.cancel` only queue work and wake the writers.

**Timeouts.** A task with a ``timeout`` is sent in a chunk of its own, and only to an
executor with nothing else in flight, so its start is known (FIFO order is kept: while
such a task heads the queue, it waits for an idle executor). At the deadline the pool
kills that executor with SIGKILL, reports ``"timeout"`` and starts a replacement.

**Crashes.** When an executor dies unexpectedly, every task in flight on it is reported
``"crashed"`` with a message naming the pid and the exit code or signal, and a
replacement starts. **Force-cancel** of a running task kills its executor too: the
executor first hands over the results it holds and stops itself, so the tasks in flight
behind the cancelled one have not started; they go back to the front of the queue. (Only
if the executor cannot answer within ``FORCE_GRACE`` — stuck in C code — is it killed
blindly, and then a task of its last chunk may run twice.)

**Lending.** While a task waits in a nested ``"get"``, its executor first gives back the
tasks it has not started, and the pool starts (or keeps) an extra executor so that
``size`` executors can run. Extras retire once idle when the blocked one has resumed.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import signal
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from ..errors import ConfigError, P2prtError
from . import _spawn
from ._execproto import encode, encode_shared
from ._exectypes import ExecResult, ExecTask, PoolStatistics
from ._handle import ExecutorHandle

__all__ = ["ExecResult", "ExecTask", "ExecutorPool", "PoolStatistics"]

log = logging.getLogger(__name__)

MAX_CHUNK = 64
MAX_CHUNKS_IN_FLIGHT = 2
PIPELINE_STALL = 0.005
"""Seconds without a result after which an executor gets no second chunk."""
START_TIMEOUT = 30.0
#: Seconds an executor has to answer a force-cancel before it is killed regardless.
FORCE_GRACE = 0.5


class ExecutorPool:
    """Runs tasks in ``size`` long-lived executor subprocesses (see the module docstring).

    ``on_results(batch)`` is called on the trio thread with every batch of results;
    ``on_output(task_id, stream, text)`` with a task's printed output; ``on_nested(task_id,
    (kind, payload))`` is awaited for each nested request and its value (or exception)
    goes back to the task. ``memory_limit`` (bytes of address space) and
    ``cpu_time_limit`` (CPU seconds per task) apply inside each executor; ``sandbox``
    wraps executors with bubblewrap.

    Raises :class:`~p2prt.errors.ConfigError` for a size below 1, or a sandbox without
    bubblewrap installed.

    Example::

        pool = ExecutorPool(2, on_results=print)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            pool.submit([ExecTask(1, fn_id, fn_payload, args)])
    """

    def __init__(
        self,
        size: int,
        *,
        on_results: Callable[[list[ExecResult]], None],
        on_output: Callable[[int, str, str], None] | None = None,
        on_nested: Callable[[int, tuple[Any, ...]], Awaitable[Any]] | None = None,
        memory_limit: int | None = None,
        cpu_time_limit: int | None = None,
        sandbox: bool = False,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"an executor pool needs at least one slot, not {size}")
        self._size = size
        self._on_results = on_results
        self._on_output = on_output
        self._on_nested = on_nested
        self._memory_limit = memory_limit
        self._cpu_time_limit = cpu_time_limit
        self._sandbox = sandbox
        self._python = python
        self._env = _spawn.executor_env(env)
        if sandbox:
            _spawn.bwrap_path()
        self._queue: deque[ExecTask] = deque()
        self._queued: set[int] = set()
        self._dropped: set[int] = set()  # cancelled while queued, still in the deque
        self._where: dict[int, ExecutorHandle] = {}  # task id -> executor running it
        self._executors: list[ExecutorHandle] = []
        self._numbers = itertools.count(1)
        self._starting = 0
        self._start_failures = 0
        self._dispatching = False
        self._nursery: trio.Nursery | None = None
        self._changed = trio.lowlevel.ParkingLot()
        self._started_count = 0
        self._crashes = 0
        self._timeouts = 0
        self._fns_sent = 0

    # ------------------------------------------------------------------ public

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start ``size`` executors in parallel, report started once all are ready, and
        supervise them until cancelled; then terminate every executor (SIGTERM, SIGKILL
        after 1 s) and reap it. Tasks in flight then are dropped without a result.
        Raises :class:`~p2prt.errors.ConfigError` if an executor cannot start."""
        if self._nursery is not None:
            raise P2prtError("this executor pool is running already")
        failures: list[BaseException] = []
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery

                async def start_one() -> None:
                    try:
                        await nursery.start(self._executor_main, True)
                    except (ConfigError, OSError) as exc:
                        failures.append(exc)

                self._starting += self._size
                async with trio.open_nursery() as starters:
                    for _ in range(self._size):
                        starters.start_soon(start_one)
                if failures:
                    nursery.cancel_scope.cancel()
                else:
                    task_status.started()
                    self._dispatch()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            self._executors.clear()
            self._where.clear()
            self._starting = 0
        if failures:
            exc = failures[0]
            if isinstance(exc, ConfigError):
                raise exc
            raise ConfigError(f"cannot start an executor ({self._python}): {exc}") from exc

    def submit(self, tasks: Sequence[ExecTask]) -> None:
        """Queue ``tasks`` (in order) and hand them to executors. Never blocks."""
        for task in tasks:
            self._queue.append(task)
            self._queued.add(task.task_id)
        self._dispatch()

    def cancel(self, task_id: int, *, force: bool = False) -> None:
        """Cancel a task. Queued: dropped and reported ``"cancelled"`` at once. Sent to an
        executor but not started: skipped there, reported ``"cancelled"``. Running without
        ``force``: best effort — the task gets a ``KeyboardInterrupt`` and is reported
        ``"cancelled"`` if that ends it. Running with ``force``: its executor is killed
        (and replaced) and the task reported ``"cancelled"``; an executor that does not
        answer the cancel within :data:`FORCE_GRACE` seconds (stuck in C code) is killed
        anyway. Unknown or finished ids are ignored."""
        if task_id in self._queued:
            self._queued.discard(task_id)
            self._dropped.add(task_id)
            self._deliver([ExecResult(task_id, "cancelled", message="cancelled before it started")])
            return
        ex = self._where.get(task_id)
        if ex is None or ex.dead:
            return
        if ex.killing:
            if force:
                ex.force_cancelled.add(task_id)
            return
        if force and task_id not in ex.force_cancelled:
            ex.force_cancelled.add(task_id)
            ex.queue(encode(("cancel", task_id, True)), then_signal=signal.SIGINT)
            if self._nursery is not None:
                self._nursery.start_soon(self._force_after_grace, ex, task_id)
        elif not force and task_id not in ex.cancel_sent:
            ex.cancel_sent.add(task_id)
            ex.queue(encode(("cancel", task_id, False)), then_signal=signal.SIGINT)

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's state and counters."""
        return PoolStatistics(
            size=self._size,
            running=len(self._where),
            queued=len(self._queued),
            executors_started=self._started_count,
            crashes=self._crashes,
            timeouts=self._timeouts,
            executors=sum(1 for ex in self._executors if not ex.dead),
            lent=sum(1 for ex in self._executors if ex.blocked),
            functions_sent=self._fns_sent,
        )

    async def wait_until(self, predicate: Callable[[PoolStatistics], bool]) -> PoolStatistics:
        """Wait until ``predicate(self.statistics())`` holds; return those statistics.
        Combine with ``trio.fail_after`` for a deadline."""
        while True:
            stats = self.statistics()
            if predicate(stats):
                return stats
            await self._changed.park()

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        if self._dispatching or self._nursery is None:
            return
        self._dispatching = True
        try:
            queue = self._queue
            while queue:
                head = queue[0]
                if head.task_id in self._dropped:
                    queue.popleft()
                    self._dropped.discard(head.task_id)
                    continue
                now = trio.current_time()
                # A second chunk only to an executor that is churning through its first:
                # one silent for PIPELINE_STALL seconds runs something long, and tasks
                # queued behind it would wait while another slot may free up first. So
                # may one whose only task has just started: it has shown nothing yet.
                ready = [
                    ex
                    for ex in self._executors
                    if ex.runnable
                    and ex.timed_task is None
                    and len(ex.chunks) < MAX_CHUNKS_IN_FLIGHT
                    and (
                        not ex.chunks
                        or (now - ex.last_progress < PIPELINE_STALL and (ex.progressed or len(ex.chunks[0]) > 1))
                    )
                ]
                if not ready:
                    break
                if head.timeout is not None:
                    idle = [ex for ex in ready if not ex.inflight]
                    if not idle:
                        break
                    queue.popleft()
                    self._queued.discard(head.task_id)
                    self._send_chunk(idle[0], [head])
                    continue
                free = sum(MAX_CHUNKS_IN_FLIGHT - len(ex.chunks) for ex in ready)
                size = min(MAX_CHUNK, max(1, -(-len(self._queued) // free)))
                ex = min(ready, key=lambda e: len(e.chunks))
                chunk: list[ExecTask] = []
                while queue and len(chunk) < size:
                    task = queue[0]
                    if task.task_id in self._dropped:
                        queue.popleft()
                        self._dropped.discard(task.task_id)
                        continue
                    if task.timeout is not None:
                        break
                    chunk.append(queue.popleft())
                    self._queued.discard(task.task_id)
                if chunk:
                    self._send_chunk(ex, chunk)
        finally:
            self._dispatching = False

    def _send_chunk(self, ex: ExecutorHandle, tasks: list[ExecTask]) -> None:
        if not ex.chunks:
            ex.last_progress = trio.current_time()
            ex.progressed = False
        for task in tasks:
            if task.fn_id not in ex.fns:
                ex.outbox.append(encode(("fn", task.fn_id, task.fn_payload)))
                ex.fns.add(task.fn_id)
                self._fns_sent += 1
            ex.inflight[task.task_id] = task
            self._where[task.task_id] = ex
        ex.chunks.append({t.task_id for t in tasks})
        run = ("run", [(t.task_id, t.fn_id, t.args, t.buffers, *((t.fetched,) if t.fetched else ())) for t in tasks])
        shared = any(
            t.fetched or type(t.args) is not bytes or any(type(b) is not bytes for b in t.buffers) for t in tasks
        )
        ex.queue(encode_shared(run) if shared else encode(run))
        timeout = tasks[0].timeout
        if len(tasks) == 1 and timeout is not None and self._nursery is not None:
            ex.timed_task = tasks[0].task_id
            ex.deadline = trio.CancelScope()
            self._nursery.start_soon(self._expire, ex, tasks[0].task_id, timeout, ex.deadline)

    async def _force_after_grace(self, ex: ExecutorHandle, task_id: int) -> None:
        await trio.sleep(FORCE_GRACE)
        if task_id in ex.inflight and not ex.dead:
            log.warning("executor pid %s did not answer a force-cancel of task %s: killing it", ex.pid, task_id)
            self._kill(ex)

    async def _expire(self, ex: ExecutorHandle, task_id: int, timeout: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(timeout)
            if task_id in ex.inflight and not ex.dead:
                ex.timed_out = task_id
                self._kill(ex)

    def _rebalance(self) -> None:
        """Start executors until ``size`` are runnable; retire idle extras."""
        if self._nursery is None:
            return
        runnable = [ex for ex in self._executors if ex.runnable]
        for _ in range(self._size - len(runnable) - self._starting):
            self._starting += 1
            self._nursery.start_soon(self._replace)
        excess = len(runnable) - self._size
        for ex in reversed(runnable):
            if excess <= 0:
                break
            if not ex.inflight:
                ex.retiring = True
                ex.queue(encode(("exit",)))
                excess -= 1

    def _kill(self, ex: ExecutorHandle) -> None:
        if not ex.killing:
            ex.killing = True
            ex.signal(signal.SIGKILL)
            if ex.proc is not None and ex.proc.returncode is None:
                ex.proc.kill()
            self._rebalance()

    def _deliver(self, results: list[ExecResult]) -> None:
        if results:
            self._on_results(results)
        self._changed.unpark_all()

    # ---------------------------------------------------------- one executor

    async def _replace(self) -> None:
        """Start one executor (``_starting`` was counted by the caller), retrying with a
        growing delay while starts fail."""
        assert self._nursery is not None
        try:
            await self._nursery.start(self._executor_main, True)
        except (ConfigError, OSError) as exc:
            self._start_failures += 1
            delay = min(5.0, 0.1 * 2 ** min(self._start_failures, 6))
            log.error("cannot start a replacement executor (retrying in %.1f s): %s", delay, exc)
            self._starting += 1  # keeps _rebalance from starting another one meanwhile
            try:
                await trio.sleep(delay)
            finally:
                self._starting -= 1
            self._rebalance()

    async def _executor_main(
        self, precounted: bool = False, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start, then supervise one executor; ``_starting`` counts it until it is ready
        (the caller may have counted it already)."""
        ex = ExecutorHandle(next(self._numbers))
        if not precounted:
            self._starting += 1
        counted = True
        parent, child = socket.socketpair()
        try:
            argv = _spawn.executor_argv(
                self._python,
                child.fileno(),
                memory_limit=self._memory_limit,
                cpu_time_limit=self._cpu_time_limit,
                sandbox=self._sandbox,
                env=self._env,
            )
            try:
                proc = ex.proc = await _spawn.open_executor(argv, child.fileno(), self._env)
            finally:
                child.close()
            stream = ex.stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        except BaseException:
            parent.close()
            self._starting -= 1
            raise
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ex.read_loop, self._on_frames)
                nursery.start_soon(ex.write_loop)
                nursery.start_soon(ex.watch_exit)
                with trio.move_on_after(START_TIMEOUT):
                    await ex.changed.wait()
                if ex.ready:
                    self._starting -= 1
                    counted = False
                    self._start_failures = 0
                    self._started_count += 1
                    self._executors.append(ex)
                    task_status.started()
                    self._rebalance()
                    self._dispatch()
                    self._changed.unpark_all()
                elif proc.returncode is None:
                    proc.kill()  # it did not say ready in time
                await ex.wait_end()
                nursery.cancel_scope.cancel()
        except BaseException:
            ex.dead = True
            if ex in self._executors:
                self._executors.remove(ex)
            raise
        finally:
            if counted:
                self._starting -= 1
            with trio.CancelScope(shield=True):
                await _spawn.terminate(proc)
                await stream.aclose()
        if not ex.ready:
            raise ConfigError(f"an executor did not start: {self._describe(ex)} ({' '.join(argv)})")
        self._on_death(ex)

    def _on_frames(self, ex: ExecutorHandle, messages: list[Any]) -> None:
        """Handle the frames of one read; results read together are delivered together."""
        results: list[ExecResult] = []
        for msg in messages:
            self._handle(ex, msg, results)
        if ex.ready:
            self._deliver(results)
            self._rebalance()
            self._dispatch()

    def _handle(self, ex: ExecutorHandle, msg: tuple[Any, ...], results: list[ExecResult]) -> None:
        kind = msg[0]
        if kind == "res":
            ex.last_progress = trio.current_time()
            ex.progressed = True
            for tid, status, data, buffers in msg[1]:
                if self._finish(ex, tid):
                    results.append(ExecResult(tid, status, data, buffers))
        elif kind == "out":
            _, tid, stream, text = msg
            if tid < 0:
                log.info("executor pid %s %s: %s", ex.pid, stream, text.rstrip("\n"))
            elif self._on_output is not None:
                self._on_output(tid, stream, text)
        elif kind == "req":
            self._request(ex, *msg[1:])
        elif kind == "back":
            back = []
            for tid in msg[1]:
                task = ex.inflight.get(tid)
                cancelled = tid in ex.cancel_sent or tid in ex.force_cancelled
                if task is not None and self._finish(ex, tid):
                    if cancelled:
                        results.append(ExecResult(tid, "cancelled", message="cancelled before it started"))
                    else:
                        back.append(task)
            self._queue.extendleft(reversed(back))
            self._queued.update(t.task_id for t in back)
        elif kind == "stopped":  # it stopped itself, waiting for SIGKILL
            self._kill(ex)
        elif kind == "bad":
            log.error("executor pid %s sent an undecodable frame (%s); stopping it", ex.pid, msg[1])
            ex.fault = f"it sent an undecodable frame ({msg[1]})"
            self._kill(ex)
        elif kind == "ready":
            ex.pid = msg[1]
            ex.ready = True
            ex.changed.set()
        else:
            log.warning("executor pid %s sent an unknown frame %r", ex.pid, kind)

    def _finish(self, ex: ExecutorHandle, task_id: int) -> bool:
        """Forget a task that left ``ex``; False if it was not in flight there."""
        if ex.inflight.pop(task_id, None) is None:
            return False
        self._where.pop(task_id, None)
        ex.cancel_sent.discard(task_id)
        ex.force_cancelled.discard(task_id)
        for chunk in ex.chunks:
            if task_id in chunk:
                chunk.discard(task_id)
                if not chunk:
                    ex.chunks.remove(chunk)
                break
        if task_id == ex.timed_task:
            ex.timed_task = None
            if ex.deadline is not None:
                ex.deadline.cancel()
                ex.deadline = None
        for _rid, (tid, scope) in ex.nested.items():
            if tid == task_id:
                scope.cancel()
        return True

    def _request(self, ex: ExecutorHandle, rid: int, task_id: int | None, kind: str, payload: tuple[Any, ...]) -> None:
        assert self._nursery is not None
        if kind == "get":
            ex.blocked += 1
            self._rebalance()
        scope = trio.CancelScope()
        ex.nested[rid] = (-1 if task_id is None else task_id, scope)
        self._nursery.start_soon(self._serve_request, ex, rid, task_id, kind, payload, scope)

    async def _serve_request(
        self, ex: ExecutorHandle, rid: int, task_id: int | None, kind: str, payload: Any, scope: trio.CancelScope
    ) -> None:
        ok, value = False, None
        try:
            with scope:
                if self._on_nested is None:
                    raise P2prtError(f"this worker does not serve nested requests ({kind!r})")
                value = await self._on_nested(-1 if task_id is None else task_id, (kind, payload))
                ok = True
        except Exception as exc:
            value = _portable(exc)
        finally:
            ex.nested.pop(rid, None)
            if kind == "get":
                ex.blocked -= 1
        if scope.cancelled_caught:
            value = P2prtError("the task ended before its nested request was answered")
        if not ex.dead:
            try:
                frame = encode_shared(("rep", rid, ok, value))
            except Exception as exc:
                frame = encode(("rep", rid, False, P2prtError(f"the worker's answer cannot be pickled: {exc}")))
            ex.queue(frame)
        self._rebalance()
        self._dispatch()
        self._changed.unpark_all()

    def _describe(self, ex: ExecutorHandle) -> str:
        returncode = None if ex.proc is None else ex.proc.returncode
        text = _spawn.describe_exit(ex.pid or (ex.proc.pid if ex.proc else 0), returncode, sandboxed=self._sandbox)
        if returncode is not None and returncode != 0 and not ex.killing:
            if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU) and self._cpu_time_limit:
                text += f" (CPU time limit of {self._cpu_time_limit} s per task exceeded)"
            elif self._memory_limit and returncode in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
                text += f" (the memory limit is {self._memory_limit // (1 << 20)} MiB)"
        return text

    def _on_death(self, ex: ExecutorHandle) -> None:
        ex.dead = True
        if ex in self._executors:
            self._executors.remove(ex)
        for _tid, scope in ex.nested.values():
            scope.cancel()
        if ex.deadline is not None:
            ex.deadline.cancel()
        unexpected = bool(ex.fault) or not (ex.killing or ex.retiring)
        if unexpected:
            self._crashes += 1
        why = self._describe(ex) + (f"; {ex.fault}" if ex.fault else "")
        if unexpected:
            log.warning("%s; %d task(s) in flight on it", why, len(ex.inflight))
        results: list[ExecResult] = []
        back: list[ExecTask] = []
        for tid, task in list(ex.inflight.items()):
            self._where.pop(tid, None)
            if tid in ex.force_cancelled or tid in ex.cancel_sent:
                results.append(ExecResult(tid, "cancelled", message=f"cancelled by force: {why}"))
            elif tid == ex.timed_out:
                self._timeouts += 1
                results.append(ExecResult(tid, "timeout", message=f"timed out after {task.timeout} s; {why}"))
            elif unexpected or ex.timed_out is not None:
                results.append(ExecResult(tid, "crashed", message=why))
            else:
                back.append(task)
        ex.inflight.clear()
        ex.chunks.clear()
        self._queue.extendleft(reversed(back))
        self._queued.update(t.task_id for t in back)
        self._deliver(results)
        self._rebalance()
        self._dispatch()


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives a pickle round trip, else a P2prtError with its text."""
    try:
        pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:
        return P2prtError(f"{type(exc).__qualname__}: {exc}")
    return exc
