"""The code that runs inside an executor subprocess: ``python -m p2prt.worker.executor FD``.

``FD`` is this process's end of a socketpair with the worker (see
:mod:`p2prt.worker._execproto` for the frames). The executor is a plain blocking loop on
the main thread: it receives chunks of tasks, runs them one after another and sends the
results of a chunk back in one frame when the chunk ends — earlier after any task that
took more than 5 ms, so a slow task's result is never held back by the rest of its chunk.
Start-up imports only the standard library pieces it needs; ``cloudpickle`` is loaded
with the first function.

While a task runs, ``sys.stdout``/``sys.stderr`` forward its output line by line, and
:func:`request` lets runtime code inside the task ask the worker something (a nested
``submit`` or ``get``) and block for the answer.

Cancellation: the worker sends ``("cancel", task_id, force)`` and then SIGINT. The
SIGINT handler reads the pending frames; a cancelled task that has not started is
skipped. The running one gets ``KeyboardInterrupt`` (and is reported ``"cancelled"`` if
that ends it) — or, when ``force`` is set, the executor sends the results it holds and
``("stopped", task_id)`` and stops itself with SIGSTOP until the worker kills it, so no
task after the cancelled one starts and none before it loses its result.
A SIGINT without a cancel for the running task is ignored. The handler never raises while
the main thread is inside this module's own I/O, so frames on the pipe stay whole.

Resource limits are applied here at start-up (``--memory`` bytes of address space,
``RLIMIT_AS``) and before every task (``--cpu`` seconds of CPU time *per task*, as a
moving ``RLIMIT_CPU`` soft limit; exceeding it kills the executor with SIGXCPU). They
guard against runaway tasks, not against a hostile one: use the sandbox for that.
"""

from __future__ import annotations

import _thread
import array
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

from ..errors import ConnectionClosedError, P2prtError
from ._execproto import ANCILLARY_SIZE, FrameReader, encode, encode_shared, fds_from_ancillary, segments
from ._shm import SHM_MIN, MemoryFile
from ._taskio import TaskOutput, error_info

__all__ = ["current_task_id", "in_executor", "main", "request"]

#: Results are flushed right after a task that ran longer than this (seconds).
SLOW_TASK = 0.005

_END = None  # marks the end of a chunk in the work queue
_MAIN = threading.main_thread().ident
_RECV = 1 << 16
_MAX_RECV = 1 << 22

_executor: _Executor | None = None


def request(kind: str, payload: tuple[Any, ...]) -> Any:
    """Send a nested request to the worker and block until it answers.

    ``kind`` names the request (``"submit"``, ``"get"``, ...); while a ``"get"`` waits,
    the worker lends this executor's slot to another executor. Returns the worker's
    answer, or raises the exception the worker answered with. Raises
    ``KeyboardInterrupt`` if the running task is cancelled meanwhile, and
    :class:`~p2prt.errors.P2prtError` outside an executor.
    """
    ex = _executor
    if ex is None:
        raise P2prtError("p2prt.worker.executor.request() works only inside an executor subprocess")
    return ex.request(kind, payload)


def in_executor() -> bool:
    """True inside an executor subprocess."""
    return _executor is not None


def current_task_id() -> int | None:
    """The id of the task running in this executor, if any."""
    return None if _executor is None else _executor.current


class _Executor:
    """State of this executor process (one instance, module-level :data:`_executor`)."""

    def __init__(self, sock: socket.socket, cpu_time_limit: int | None) -> None:
        self.sock = sock
        self.cpu_time_limit = cpu_time_limit
        self.reader = FrameReader()
        self.work: deque[tuple[Any, ...] | None] = deque()  # tasks, None = end of a chunk
        self.pending: set[int] = set()  # ids of tasks in ``work``
        self.cancelled: set[int] = set()  # pending tasks cancelled before they started
        self.fns: dict[bytes, Any] = {}  # fn_id -> payload bytes, or the loaded function
        self.results: list[tuple[Any, ...]] = []
        self.replies: dict[int, tuple[bool, Any]] = {}
        self.waiting: set[int] = set()  # rids of requests still waiting for their reply
        self.current: int | None = None
        self.in_task = False
        self.cancel_current = False  # a cancel for the running task arrived, not yet raised
        self.cancel_requested = False  # ... and it is the reason if the task ends interrupted
        self.deferred = False  # a SIGINT arrived while the handler could not act
        self.guard = 0  # > 0 while the main thread is inside this module's I/O
        self.lending = False  # a "get" is waiting: chunks are given back, not queued
        self.lending_rid = 0
        self.exiting = False
        self.eof = False
        self.lock = threading.Lock()  # the reader, the work queue and the flags above
        self.send_lock = threading.Lock()
        self.request_lock = threading.Lock()
        self.next_rid = 0
        self.outputs: list[TaskOutput] = []
        self.dumps: Any = None

    # ----------------------------------------------------------------- sending

    def send(self, frames: list[bytes]) -> None:
        with self.send_lock:
            for data, fds in segments(frames):
                if fds:
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    data = memoryview(data)[sent:]
                self.sock.sendall(data)

    def send_output(self, stream: str, text: str) -> None:
        main = threading.get_ident() == _MAIN
        if main:
            self.guard += 1
        try:
            tid = -1 if self.current is None else self.current
            self.send([encode(("out", tid, stream, text))])
        finally:
            if main:
                self.guard -= 1
                if not self.guard and (self.deferred or self.cancel_current) and self.in_task:
                    self.check_interrupt()

    def flush_results(self) -> None:
        if self.results:
            results, self.results = self.results, []
            self.send([self.encode_results(results)])

    def encode_results(self, results: list[tuple[Any, ...]]) -> bytes:
        try:
            if any(type(r[2]) is MemoryFile or any(type(b) is MemoryFile for b in r[3]) for r in results):
                return encode_shared(("res", results))
            return encode(("res", results))
        except (ValueError, OverflowError, MemoryError):  # a result too large for one frame
            parts = [encode(("res", [r])) if _fits(r) else _too_large(r) for r in results]
            return b"".join(parts)

    # --------------------------------------------------------------- receiving

    def receive(self, *, block: bool) -> None:
        """Read from the worker and handle what arrived. Caller holds ``self.lock``."""
        while True:
            try:
                size = min(max(_RECV, self.reader.wanted), _MAX_RECV)
                flags = 0 if block else socket.MSG_DONTWAIT
                data, ancillary, _, _ = self.sock.recvmsg(size, ANCILLARY_SIZE, flags)
            except BlockingIOError:
                return
            fds = fds_from_ancillary(ancillary) if ancillary else []
            if not data:
                self.eof = True
                return
            self.reader.feed(data, fds)
            for msg in self.reader.messages():
                self.accept(msg)
            if block:
                return

    def accept(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "run":
            tasks = msg[1]
            if self.lending:
                self.send([encode(("back", [t[0] for t in tasks]))])
                return
            for task in tasks:
                self.pending.add(task[0])
            self.work.extend(tasks)
            self.work.append(_END)
        elif kind == "fn":
            self.fns[msg[1]] = msg[2]
        elif kind == "cancel":
            tid, force = msg[1], msg[2]
            if tid == self.current and self.current is not None:
                if force:
                    self.stop_for_kill(tid)
                self.cancel_current = self.cancel_requested = True
                if threading.get_ident() != _MAIN:
                    _thread.interrupt_main(signal.SIGINT)
            elif tid in self.pending:
                queued = next((t for t in self.work if t is not _END and t[0] == tid), None)
                if queued is not None and threading.get_ident() == _MAIN and not self.guard:
                    # Not started: answer now rather than after the task ahead of it.
                    self.work.remove(queued)
                    self.pending.discard(tid)
                    self.send([self.encode_results([(tid, "cancelled", b"", [])])])
                else:
                    self.cancelled.add(tid)
        elif kind == "rep":
            if msg[1] in self.waiting:
                self.replies[msg[1]] = (msg[2], msg[3])
                if msg[1] == self.lending_rid:
                    self.lending = False  # the worker counts this slot as runnable again
        elif kind == "exit":
            self.exiting = True
        elif kind == "bad":
            os.write(2, f"p2prt executor: ignoring an undecodable frame from the worker: {msg[1]}\n".encode())

    # ---------------------------------------------------------- cancellation

    def stop_for_kill(self, tid: int) -> None:
        """Force-cancel of the running task: hand over the results held, say so, and stop
        the whole process until the worker's SIGKILL arrives."""
        results, self.results = self.results, []
        frames = [self.encode_results(results)] if results else []
        frames.append(encode(("stopped", tid)))
        self.send(frames)
        os.kill(os.getpid(), signal.SIGSTOP)

    def on_sigint(self, signum: int, frame: Any) -> None:
        if not self.in_task or self.guard:
            self.deferred = True
            return
        self.check_interrupt()

    def check_interrupt(self) -> None:
        """Read pending frames if no one else is; raise KeyboardInterrupt if the running
        task was cancelled. Only on the main thread, outside this module's I/O."""
        self.deferred = False
        if self.lock.acquire(blocking=False):
            try:
                self.receive(block=False)
            finally:
                self.lock.release()
        if self.cancel_current and self.in_task:
            self.cancel_current = False
            raise KeyboardInterrupt

    # ----------------------------------------------------------------- requests

    def request(self, kind: str, payload: tuple[Any, ...]) -> Any:
        main = threading.get_ident() == _MAIN
        if main:
            self.guard += 1
        try:
            with self.request_lock:
                ok, value = self._request(kind, payload)
        finally:
            if main:
                self.guard -= 1
        if main and not self.guard and (self.deferred or self.cancel_current) and self.in_task:
            self.check_interrupt()
        if ok:
            return value
        raise value

    def _request(self, kind: str, payload: tuple[Any, ...]) -> tuple[bool, Any]:
        rid = self.next_rid = self.next_rid + 1
        frames = [encode(("req", rid, self.current, kind, payload))]
        with self.lock:
            if kind == "get":
                done, back = self._lend()
                frames = [*done, *frames, *back]  # "req" before "back": the slot is lent first
                self.lending_rid = rid
            self.waiting.add(rid)
        try:
            self.send(frames)
            while True:
                with self.lock:
                    if rid in self.replies:
                        return self.replies.pop(rid)
                    if self.cancel_current and threading.get_ident() == _MAIN:
                        return True, None  # check_interrupt raises in request()
                    if self.eof:
                        return False, ConnectionClosedError("the worker closed the executor's pipe")
                    self.receive(block=True)
        finally:
            with self.lock:
                self.waiting.discard(rid)
                self.replies.pop(rid, None)
                if kind == "get":
                    self.lending = False

    def _lend(self) -> tuple[list[bytes], list[bytes]]:
        """Before a "get" blocks: the finished results to send, and the tasks not started
        to give back. Caller holds ``self.lock``."""
        back = [t[0] for t in self.work if t is not _END and t[0] not in self.cancelled]
        for tid in self.pending & self.cancelled:
            self.results.append((tid, "cancelled", b"", []))
        self.work.clear()
        self.pending.clear()
        self.cancelled.clear()
        self.lending = True
        done = []
        if self.results:
            results, self.results = self.results, []
            done.append(self.encode_results(results))
        return done, [encode(("back", back))] if back else []

    # ---------------------------------------------------------------- the loop

    def next_item(self) -> tuple[Any, ...] | bool | None:
        """The next task, ``None`` at the end of a chunk, False when it is time to exit."""
        with self.lock:
            if self.eof:
                return False  # the worker is gone: results could not be delivered
            while not self.work:
                if self.exiting or self.eof:
                    return False
                self.flush_results()
                self.receive(block=True)
            if self.deferred:
                self.deferred = False
                self.receive(block=False)
            item = self.work.popleft()
            if item is not _END:
                self.pending.discard(item[0])
            return item

    def loop(self) -> None:
        while True:
            item = self.next_item()
            if item is False:
                break
            if item is None:
                self.flush_results()
                continue
            assert isinstance(item, tuple)
            tid = item[0]
            if tid in self.cancelled:
                self.cancelled.discard(tid)
                self.results.append((tid, "cancelled", b"", []))
                continue
            start = time.perf_counter()
            try:
                result = self.run(item)
            except KeyboardInterrupt:  # raised in the instants around the task itself
                self.in_task = False
                result = (tid, "cancelled", b"", [])
            for out in self.outputs:
                out.flush()
            self.current = None
            self.cancel_current = self.cancel_requested = False
            self.results.append(result)
            if time.perf_counter() - start > SLOW_TASK:
                self.flush_results()
        self.flush_results()

    def run(self, task: tuple[Any, ...]) -> tuple[Any, ...]:
        tid, fn_id, data, buffers = task[:4]
        fetched = task[4] if len(task) > 4 else ()
        self.current = tid
        if self.cpu_time_limit:
            _arm_cpu_limit(self.cpu_time_limit)
        loading = True
        try:
            self.in_task = True
            fn = self.function(fn_id)
            if fetched:
                from ..serialization import held

                held.values = {oid: (d, b) for oid, d, b in fetched}
                try:
                    args, kwargs = pickle.loads(data, buffers=buffers)
                finally:
                    held.values = {}
            else:
                args, kwargs = pickle.loads(data, buffers=buffers)
            loading = False
            value = fn(*args, **kwargs)
            del args, kwargs
            out, bufs = self.dumps(value)
            self.in_task = False
            return (tid, "ok", _share(out), [_share(b) for b in bufs])
        except KeyboardInterrupt as exc:
            self.in_task = False
            if self.cancel_requested:
                return (tid, "cancelled", b"", [])
            return (tid, "error", error_info(exc, loading=False, skip_file=__file__), [])
        except BaseException as exc:
            self.in_task = False
            return (tid, "error", error_info(exc, loading=loading, skip_file=__file__), [])

    def function(self, fn_id: bytes) -> Any:
        fn = self.fns.get(fn_id)
        if fn is None:
            raise P2prtError(f"function {fn_id.hex()} was never sent to this executor")
        if self.dumps is None:
            from ..serialization import dumps

            self.dumps = dumps
        if isinstance(fn, bytes):
            fn = pickle.loads(fn)
            self.fns[fn_id] = fn
        return fn


def _share(data: bytes | pickle.PickleBuffer) -> Any:
    """A large payload goes to the worker through shared memory (one copy here, none in
    the pipe); a small one is pickled into the frame."""
    if isinstance(data, bytes):
        if len(data) >= SHM_MIN:
            return MemoryFile.holding(data)
        return data
    try:
        raw = data.raw()
    except BufferError:  # not contiguous: pickled as is
        return data
    if raw.nbytes >= SHM_MIN:
        return MemoryFile.holding(raw)
    return pickle.PickleBuffer(raw.toreadonly())


def _fits(result: tuple[Any, ...]) -> bool:
    try:
        encode(("res", [result]))
    except (ValueError, OverflowError, MemoryError):
        return False
    return True


def _too_large(result: tuple[Any, ...]) -> bytes:
    exc = P2prtError("the task's result is too large for the executor pipe (4 GiB per frame)")
    return encode(("res", [(result[0], "error", error_info(exc, loading=False, skip_file=__file__), [])]))


def _arm_cpu_limit(seconds: int) -> None:
    """Let the coming task use ``seconds`` more CPU seconds than used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _parse(argv: list[str]) -> tuple[int, int | None, int | None]:
    if not argv or not argv[0].isdigit():
        raise SystemExit("usage: python -m p2prt.worker.executor FD [--memory BYTES] [--cpu SECONDS]")
    fd = int(argv[0])
    memory = cpu = None
    rest = iter(argv[1:])
    for flag in rest:
        if flag == "--memory":
            memory = int(next(rest))
        elif flag == "--cpu":
            cpu = int(next(rest))
        else:
            raise SystemExit(f"p2prt executor: unknown option {flag!r}")
    return fd, memory, cpu


def _die_with_parent(interval: float = 1.0) -> None:
    """Exit when the worker dies (even by SIGKILL), so a task cannot outlive it.

    A watchdog thread polls the parent pid. (``PR_SET_PDEATHSIG`` would be cheaper but
    fires when the *thread* that forked exits, and trio forks from cached helper threads.)
    """
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="p2prt-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """Run the executor loop on the inherited socket until the worker closes it."""
    global _executor
    _die_with_parent()
    fd, memory, cpu = _parse(sys.argv[1:] if argv is None else argv)
    if memory is not None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    ex = _executor = _Executor(sock, cpu)
    signal.signal(signal.SIGINT, ex.on_sigint)
    ex.outputs = [TaskOutput(ex.send_output, "stdout", 1), TaskOutput(ex.send_output, "stderr", 2)]
    sys.stdout, sys.stderr = ex.outputs
    ex.send([encode(("ready", os.getpid()))])
    try:
        ex.loop()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the worker is gone
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__


if __name__ == "__main__":
    # Run as ``-m``, this file is ``__main__``; tasks import ``p2prt.worker.executor`` to
    # reach :func:`request`, so the state must live in that module, not in this copy.
    from p2prt.worker import executor

    executor.main()
