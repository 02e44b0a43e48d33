"""The client runtime: owns tasks and their results, leases workers, pushes tasks to them.

Theory of operation
-------------------
The runtime runs a trio event loop in one background thread. User threads never wait
for it when they submit: ``submit`` pickles the arguments in the caller's thread,
appends the task to a ``deque`` and asks the trio thread to wake (``run_sync_soon``)
only if no wake is already pending. In the trio thread, one synchronous pass (``_pump``)
drains the deque, places ready tasks on leases, asks the board for more leases, and
queues one ``SubmitTasks`` message per worker connection; each connection's writer task
sends whatever accumulated in one write. Results arrive in batches and resolve
``concurrent.futures.Future`` objects in the :class:`ObjectStore`; ``get`` waits on
those futures in the user's thread and unpickles there.

Leases: while tasks of a shape wait, the runtime asks the board for up to that many
leases; grants arrive as pushes, the runtime connects to the worker (one connection per
worker, reused), presents the ticket, and starts pushing tasks. Each lease keeps a small
number of tasks in flight — two for slow tasks, up to 128 for tiny ones, from the
observed time between completions — so long tasks spread over all leases while tiny ones
are pipelined. A lease idle for ``linger`` seconds is detached and returned; a lease the
board reclaims (fair share) takes no new tasks and is returned when its last task ends.

Failures: a crashed executor, a lost worker connection or a timed-out attempt is retried
up to ``max_retries`` times (-1: forever); an exception raised by the task is retried
only with ``retry_exceptions=True``. A task that crashed its worker three times in a row
fails (Dask's allowed-failures rule). Dependents of a failed task fail the same way.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import heapq
import itertools
import logging
import math
import pickle
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from ..board.client import BoardClient
from ..board.link import BoardLink
from ..errors import (
    GetTimeoutError,
    NoCompatibleWorkerError,
    P2prtError,
    RuntimeUsageError,
    TaskCancelledError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from ..identity.certificate import NodeIdentity
from ..identity.known_boards import KnownBoards
from ..serialization import dumps, ship_by_value, ship_user_modules
from ..serialization.held import HeldRef
from ..transport._errors import unwrap_single_group
from ..wire import board as bm
from ..wire import peer as pm
from ..wire.handshake import local_versions
from ..wire.messages import Buffer, Message, readable
from .connection import ClientLease, WorkerConnection
from .failures import task_error_from_info
from .held_values import HeldValues
from .links import WorkerLinks
from .objects import Failed, Held, ObjectRef, ObjectStore, Stored, new_object_id
from .paths import Dialer
from .tasks import Inline, Shape, Task, TaskOptions

if TYPE_CHECKING:
    from ..dht import DhtNode

__all__ = ["ClientRuntime"]

log = logging.getLogger(__name__)

LINGER = 1.0
"""Seconds an idle lease is kept before it is returned to the board."""
HOLD_OVER = 1 << 20
"""Values of at least this many bytes stay on the worker that produced them."""
MAX_LEASES_PER_SHAPE = 256
ALLOWED_CRASHES = 3


def _blake(data: bytes) -> bytes:
    import hashlib

    return hashlib.blake2b(data, digest_size=16).digest()


class ClientRuntime(WorkerLinks, HeldValues):
    """Submit tasks to a cluster and collect their results. Thread-safe entry points:
    :meth:`submit`, :meth:`put`, :meth:`get`, :meth:`wait`, :meth:`cancel`, :meth:`shutdown`."""

    def __init__(
        self,
        *,
        board_address: str,
        cluster: str,
        identity: NodeIdentity,
        known_boards: KnownBoards | None = None,
        pin: bool = True,
        output: Callable[[str, str], None] | None = None,
        linger: float = LINGER,
        background: Callable[[trio.Nursery], Awaitable[str]] | None = None,
        hold_over: int = HOLD_OVER,
    ) -> None:
        self.board_address = board_address
        self.cluster = cluster
        self.identity = identity
        self.store = ObjectStore()
        self.python = local_versions().python
        self.linger = linger
        self.hold_over = hold_over
        self._known_boards = known_boards
        self._pin = pin
        self._output = output or _print_output
        self._background = background
        self._inbox: collections.deque[Task] = collections.deque()
        self._wake_pending = False
        self._task_ids = itertools.count(1)
        self._fn_cache: dict[int, tuple[Any, bytes, bytes]] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        # trio-thread state
        self._tasks: dict[bytes, Task] = {}  # by object id, while pending or running
        self._queues: dict[Shape, collections.deque[Task]] = collections.defaultdict(collections.deque)
        self._waiting_on: dict[bytes, list[Task]] = collections.defaultdict(list)
        self._leases: dict[str, ClientLease] = {}
        self._requested: dict[Shape, int] = collections.defaultdict(int)
        self._asked: set[Shape] = set()  # shapes the board may hold demand for
        self._conns: dict[bytes, WorkerConnection] = {}
        self._connecting: dict[bytes, trio.Event] = {}
        self._service_ema: dict[bytes, float] = {}  # by function id
        self._nursery: trio.Nursery | None = None
        self._board: BoardClient | None = None
        self._stop = threading.Event()
        self.stats = collections.Counter[str]()
        # Values held by the workers that produced them: the task that made each (to
        # rebuild it if its holder is lost), workers' addresses, and values to release.
        self._lineage: dict[bytes, Task] = {}
        self.dht: DhtNode | None = None
        self._dht_started = False
        self._peer_addrs: dict[bytes, list[bm.Address]] = {}
        self.dialer = Dialer(identity, board_address, lambda: self._board, self.stats)
        self._traffic: dict[bytes, list[Any]] = {}  # peer -> [user, sent, received] of closed connections
        self._to_release: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.store.on_drop_held = lambda oid, held: self._to_release.append((held.holder, oid))

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start the runtime thread; returns once the board session is up."""
        ObjectRef._tracker = self.store  # refs made in this process count towards freeing
        self._thread = threading.Thread(target=self._thread_main, name="p2prt-runtime", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeUsageError(f"the p2prt runtime did not start within {timeout:g} s")
        if self._startup_error is not None:
            raise self._startup_error

    def _thread_main(self) -> None:
        try:
            with unwrap_single_group():
                trio.run(self._main)
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("p2prt runtime stopped with an error")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._background is not None:
                # The embedded cluster starts its board here and tells us its address.
                self.board_address = await self._background(nursery)
            link = BoardLink(
                self.board_address,
                self.identity,
                on_connect=self._on_board_connect,
                on_push=self._on_board_push,
                known_boards=self._known_boards,
                pin=self._pin,
                local_port=0,  # a port a hole punch can later reuse
            )
            await nursery.start(link.run)
            self._link = link
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self._watch_stop)
            self._ready.set()

    async def _watch_stop(self) -> None:
        await trio.to_thread.run_sync(self._stop.wait, abandon_on_cancel=True)
        for lease in list(self._leases.values()):
            self._release(lease)
        if self._board is not None:
            try:
                with trio.move_on_after(1):
                    await self._board.send(bm.LeaseCancel(self.cluster))
            except P2prtError:
                pass
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def shutdown(self) -> None:
        """Return leases, close connections, stop the thread. Pending refs fail."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for task in list(self._tasks.values()):
            self.store.resolve(task.object_id, Failed(lambda: TaskCancelledError("the runtime was shut down")))
        if ObjectRef._tracker is self.store:
            ObjectRef._tracker = None

    # ------------------------------------------------------------------ any thread

    def _function(self, fn: Any) -> tuple[bytes, bytes]:
        cached = self._fn_cache.get(id(fn))
        if cached is not None and cached[0] is fn:
            return cached[1], cached[2]
        ship_by_value(fn)
        payload, buffers = dumps(fn)
        if buffers:
            payload = pickle.dumps(fn, protocol=5)  # in-band; functions rarely carry buffers
        fn_id = _blake(payload)
        self._fn_cache[id(fn)] = (fn, fn_id, payload)
        return fn_id, payload

    def _function_by_id(self, fn_id: bytes) -> Any:
        for fn, cached_id, _ in list(self._fn_cache.values()):
            if cached_id == fn_id:
                return fn
        return None

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: TaskOptions) -> ObjectRef:
        """Queue ``fn(*args, **kwargs)``; returns its ref at once."""
        if self._closed:
            raise RuntimeUsageError("p2prt was shut down; call p2prt.init() again")
        ship_user_modules()  # before pickling: a by-value function may use other user modules
        fn_id, payload = self._function(fn)
        deps = [a.id for a in args if isinstance(a, ObjectRef)]
        deps += [v.id for v in kwargs.values() if isinstance(v, ObjectRef)]
        object_id = new_object_id()
        self.store.create(object_id)
        name = str(options.name or getattr(fn, "__qualname__", "task"))
        if deps:
            task = Task(next(self._task_ids), object_id, fn_id, payload, name, options, None, [], (args, kwargs), deps)
        else:
            data, bufs = dumps((args, kwargs))
            task = Task(
                next(self._task_ids), object_id, fn_id, payload, name, options, data, [b.raw() for b in bufs]
            )
        self._inbox.append(task)
        self._wake()
        return ObjectRef(object_id)

    def put(self, value: Any) -> ObjectRef:
        object_id = new_object_id()
        data, bufs = dumps(value)
        self.store.put_value(object_id, value, Stored(data, [b.raw() for b in bufs]))
        return ObjectRef(object_id)

    def get(self, refs: Iterable[ObjectRef], timeout: float | None = None, progress: bool | str = False) -> list[Any]:
        refs = list(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            from ..progress import track

            try:
                track({self.store.future(ref.id) for ref in refs}, progress, timeout)
            except concurrent.futures.TimeoutError:
                raise GetTimeoutError(f"get timed out after {timeout:g} s") from None
        for ref in refs:
            fut = self.store.future(ref.id)
            if not fut.done():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    fut.result(remaining)
                except concurrent.futures.TimeoutError:
                    raise GetTimeoutError(f"get timed out after {timeout:g} s ({ref!r} not ready)") from None
        self._load_held([ref.id for ref in refs])
        return [self.store.value(ref.id) for ref in refs]


    def wait(
        self, refs: list[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        futures = {self.store.future(r.id): r for r in refs}
        deadline = None if timeout is None else time.monotonic() + timeout
        done_ids: set[bytes] = {r.id for f, r in futures.items() if f.done()}
        pending = [f for f in futures if not f.done()]
        while len(done_ids) < num_returns and pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            finished, _ = concurrent.futures.wait(
                pending, timeout=remaining, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if not finished:
                break
            done_ids |= {futures[f].id for f in finished}
            pending = [f for f in pending if f not in finished]
        ready: list[ObjectRef] = []
        for r in refs:
            if r.id in done_ids and len(ready) < num_returns:
                ready.append(r)
        ready_set = {id(r) for r in ready}
        return ready, [r for r in refs if id(r) not in ready_set]

    async def get_async(self, ref: ObjectRef) -> Any:
        fut = self.store.future(ref.id)
        if not fut.done():
            await self._wait_future(fut)
        if isinstance(self.store.outcome(ref.id), Held):
            await trio.to_thread.run_sync(self._load_held, [ref.id])
        return self.store.value(ref.id)

    @staticmethod
    async def _wait_future(fut: concurrent.futures.Future[Any]) -> None:
        """Wait in trio (any trio run) for a future resolved from another thread."""
        event = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_f: object) -> None:
            try:
                token.run_sync_soon(event.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        await event.wait()

    def cancel(self, ref: ObjectRef, *, force: bool = False) -> None:
        self._call_soon(self._cancel, ref.id, force)

    def cluster_cpus(self, timeout: float = 10.0) -> int:
        """CPUs the cluster's live workers offer (the board's status); any thread."""

        async def ask() -> int:
            board = self._board
            if board is None:
                raise P2prtError("not connected to the board")
            with trio.fail_after(timeout):
                status = await board.call(lambda rid: bm.StatusRequest(rid, self.cluster))
            return sum(int(w.get("slots", 0)) for w in status.get("workers", []) if w.get("cluster") == self.cluster)

        if self._token is None:
            raise RuntimeUsageError("the runtime is not running")
        return int(trio.from_thread.run(ask, trio_token=self._token))

    def dispatched(self, ref: ObjectRef) -> bool:
        """Was the task sent to a worker (it may be running there)? Any thread; a
        snapshot that may be out of date by the time it is read."""
        task = self._tasks.get(ref.id)
        return task is not None and task.lease_id is not None

    def _wake(self) -> None:
        if not self._wake_pending and self._token is not None:
            self._wake_pending = True
            try:
                self._token.run_sync_soon(self._on_wake)
            except trio.RunFinishedError:
                pass

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        if self._token is None:
            raise RuntimeUsageError("the runtime is not running")
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    # ------------------------------------------------------------------ trio thread

    def _on_wake(self) -> None:
        self._wake_pending = False
        self._pump()

    def _pump(self) -> None:
        """Drain submissions, place ready tasks, ask for leases. Synchronous."""
        inbox = self._inbox
        while inbox:
            task = inbox.popleft()
            self._tasks[task.object_id] = task
            self._admit(task)
        self._place()

    def _admit(self, task: Task) -> None:
        missing = [d for d in task.deps if not self.store.done(d)]
        if missing:
            for dep in missing:
                self._waiting_on[dep].append(task)
                self.store.future(dep).add_done_callback(functools.partial(self._dep_ready, dep))
            return
        for dep in task.deps:
            outcome = self.store.outcome(dep)
            if isinstance(outcome, Failed):
                self._finish(task, outcome)
                return
        self._queues[task.options.shape].append(task)

    def _dep_ready(self, dep: bytes, _future: object) -> None:
        self._call_soon(self._dep_done, dep)

    def _dep_done(self, dep: bytes) -> None:
        for task in self._waiting_on.pop(dep, []):
            if task.object_id in self._tasks:
                self._admit(task)
        self._place()

    def _limit(self, fn_id: bytes) -> int:
        ema = self._service_ema.get(fn_id)
        if ema is None:
            return 2
        return int(min(128, max(2, 0.004 / max(ema, 1e-6) + 2)))

    def _place(self) -> None:
        batches: dict[WorkerConnection, list[pm.TaskSpec]] = {}
        for shape, queue in self._queues.items():
            if queue:
                leases = [
                    lease
                    for lease in self._leases.values()
                    if lease.shape == shape
                    and lease.active
                    and not lease.draining
                    and lease.conn is not None
                    and not lease.conn.retired
                ]
                # Each task goes to the least-loaded lease (a heap), so work spreads
                # over all leases before any lease queues more than one task.
                heap = [(len(lease.inflight), i, lease) for i, lease in enumerate(leases)]
                heapq.heapify(heap)
                while queue and heap:
                    task = queue[0]
                    if task.cancelled or task.object_id not in self._tasks:
                        queue.popleft()
                        continue
                    load, i, lease = heap[0]
                    if load >= self._limit(task.fn_id):
                        break
                    queue.popleft()
                    conn = lease.conn
                    assert conn is not None
                    spec = self._spec(task, lease, conn)
                    if spec is not None:
                        batches.setdefault(conn, []).append(spec)
                    heapq.heapreplace(heap, (len(lease.inflight), i, lease))
            self._want_leases(shape, len(queue))
        for conn, specs in batches.items():
            conn.enqueue(pm.SubmitTasks(specs))

    def _spec(self, task: Task, lease: ClientLease, conn: WorkerConnection) -> pm.TaskSpec | None:
        if task.args is None:
            try:
                task.args, task.buffers = self._resolve_args(task)
            except Exception as exc:
                err = P2prtError(f"cannot serialize the arguments of {task.name}: {exc}")
                self._finish(task, Failed(lambda: err))
                return None
        if task.fn_id not in conn.sent_fns:
            conn.enqueue(pm.DefineFunction(task.fn_id, task.fn_payload))
            conn.sent_fns.add(task.fn_id)
        task.attempts += 1
        task.lease_id = lease.lease_id
        lease.inflight.add(task.task_id)
        conn.inflight[task.task_id] = task
        return pm.TaskSpec(
            task.task_id,
            lease.lease_id,
            task.fn_id,
            task.args,
            task.buffers,
            task.name,
            task.options.timeout,
            task.object_id,
            self.hold_over,
            task.fetch,
        )

    def _resolve_args(self, task: Task) -> tuple[bytes, list[Buffer]]:
        assert task.raw is not None
        args, kwargs = task.raw

        task.fetch = []

        def sub(value: Any) -> Any:
            if isinstance(value, ObjectRef):
                outcome = self.store.outcome(value.id)
                if isinstance(outcome, Held):
                    # The worker running the task fetches it from its holder.
                    addrs = self._peer_addrs.get(outcome.holder, [])
                    task.fetch.append(pm.HeldArg(value.id, outcome.holder, addrs))
                    return HeldRef(value.id)
                assert isinstance(outcome, Stored)
                return Inline(outcome.data, outcome.buffers)
            return value

        data, bufs = dumps((tuple(sub(a) for a in args), {k: sub(v) for k, v in kwargs.items()}))
        return data, [b.raw() for b in bufs]

    def _want_leases(self, shape: Shape, waiting: int) -> None:
        """Ask the board for enough leases to run every unfinished task of ``shape`` at once
        (capped); the board grants what fair share and capacity allow."""
        if self._board is None or self._nursery is None or not waiting:
            return
        leases = [lease for lease in self._leases.values() if lease.shape == shape and not lease.draining]
        running = sum(len(lease.inflight) for lease in leases)
        want = min(waiting + running, MAX_LEASES_PER_SHAPE)
        missing = want - len(leases) - self._requested[shape]
        if missing > 0:
            self._requested[shape] += missing
            self._asked.add(shape)
            num_cpus, resources = shape
            self._nursery.start_soon(self._request_leases, self._board, shape, num_cpus, dict(resources), missing)

    async def _request_leases(
        self, board: BoardClient, shape: Shape, num_cpus: int, resources: dict[str, float], count: int
    ) -> None:
        try:
            await board.call(
                lambda rid: bm.LeaseRequest(rid, self.cluster, count, num_cpus, resources or None, self.python)
            )
        except P2prtError as exc:
            err = exc
            self._requested[shape] = max(0, self._requested[shape] - count)
            self._fail_shape(shape, lambda: err)

    def _fail_shape(self, shape: Shape, make: Callable[[], BaseException]) -> None:
        queue = self._queues.get(shape)
        while queue:
            self._finish(queue.popleft(), Failed(make))

    # -- board

    async def _on_board_connect(self, client: BoardClient) -> None:
        self._board = client
        self._requested.clear()
        self._pump()
        if client.welcome.dht is not None and not self._dht_started and self._nursery is not None:
            self._dht_started = True
            self._nursery.start_soon(self._run_dht, client)



    async def _on_board_push(self, msg: Message) -> None:
        if isinstance(msg, bm.LeaseGranted):
            shape = (msg.ticket.num_cpus, tuple(sorted(msg.ticket.resources.items())))
            self._requested[shape] = max(0, self._requested[shape] - 1)
            lease = ClientLease(msg.ticket, shape, idle_since=trio.current_time())
            self._leases[lease.lease_id] = lease
            assert self._nursery is not None
            self._nursery.start_soon(self._activate, lease, list(msg.worker_addrs))
        elif isinstance(msg, bm.LeaseReclaim):
            reclaimed = self._leases.get(msg.lease_id)
            if reclaimed is not None:
                reclaimed.draining = True
                if not reclaimed.inflight:
                    self._release(reclaimed)
        elif isinstance(msg, bm.LeaseRevoked):
            revoked = self._leases.pop(msg.lease_id, None)
            if revoked is not None:
                revoked.draining = True
                revoked.active = False
                if revoked.conn is not None:
                    revoked.conn.leases.pop(revoked.lease_id, None)
                # Waiting demand may have been dropped with it: ask again (a removed
                # member then learns why, as NotMemberError).
                self._requested[revoked.shape] = 0
            self._place()
        elif isinstance(msg, bm.LeaseUnsatisfiable):
            reason = msg.reason
            wanted = (msg.num_cpus, tuple(sorted((msg.resources or {}).items())))
            for shape in list(self._queues):
                if msg.num_cpus is None or shape == wanted:
                    self._requested[shape] = 0
                    self._fail_shape(shape, lambda: NoCompatibleWorkerError(reason))


    def _board_send_soon(self, msg: Message) -> None:
        board = self._board
        if board is None or self._nursery is None:
            return

        async def send() -> None:
            try:
                await board.send(msg)
            except P2prtError:
                pass

        self._nursery.start_soon(send)

    # -- results

    def _on_worker_message(self, conn: WorkerConnection, msg: Message) -> None:
        if isinstance(msg, pm.TaskResults):
            self._on_results(conn, msg.results)
        elif isinstance(msg, pm.TaskOutput):
            task = conn.inflight.get(msg.task_id)
            name = task.name if task else f"task {msg.task_id}"
            self._output(msg.stream, "".join(f"({name} {conn.label}) {line}\n" for line in msg.text.splitlines()))
        elif isinstance(msg, pm.NestedSubmit):
            self._nested_submit(conn, msg)
        elif isinstance(msg, pm.NestedGet):
            assert self._nursery is not None
            self._nursery.start_soon(self._nested_get, conn, msg)
        else:
            log.warning("unexpected %s from worker %s", type(msg).__name__, conn.label)

    def _on_results(self, conn: WorkerConnection, results: list[pm.TaskResult]) -> None:
        now = trio.current_time()
        for r in results:
            task = conn.inflight.pop(r.task_id, None)
            if task is None:
                self.stats["stale_results"] += 1  # e.g. for a task cancelled meanwhile
                continue
            lease = self._leases.get(task.lease_id or "")
            if lease is not None:
                lease.inflight.discard(task.task_id)
                if lease.last_result and len(lease.inflight) > 0:
                    # Time between completions on a busy lease ~ this function's service time.
                    sample = now - lease.last_result
                    old = self._service_ema.get(task.fn_id, sample)
                    self._service_ema[task.fn_id] = 0.8 * old + 0.2 * sample
                lease.last_result = now
                lease.idle_since = now
                if lease.draining and not lease.inflight:
                    self._release(lease)
                elif conn.retired and lease.conn is conn and not lease.inflight:
                    successor = self._conns.get(conn.peer_id)
                    if successor is not None and not successor.closed:
                        self._move_lease(lease, successor)
            if r.status == "ok":
                task.crashes_in_a_row = 0
                self._finish(task, Stored(r.data, r.buffers))
            elif r.status == "held":
                task.crashes_in_a_row = 0
                self._lineage[task.object_id] = task
                self._finish(task, Held(conn.peer_id, r.size))
            elif r.status == "lost":
                task.attempts -= 1
                task.args = None  # resolved again once the lost argument is rebuilt
                self._rebuild(bytes(readable(r.data)), r.message)
                self._admit(task)
            elif r.status == "error":
                self._on_task_error(task, r, conn)
            elif r.status in ("rejected", "revoked"):
                task.attempts -= 1
                if lease is not None and lease.active:
                    # The worker no longer runs work under this lease (the board's revoke
                    # may still be on its way): place nothing more on it.
                    lease.active = False
                    lease.draining = True
                    if not lease.inflight:
                        self._release(lease)
                self._requeue(task)
            elif r.status == "cancelled":
                self._finish(task, Failed(functools.partial(TaskCancelledError, f"task {task.name} was cancelled")))
            elif r.status == "timeout":
                self._retry_or_fail(task, "timeout", r.message or f"task {task.name} timed out", worker=conn.label)
            else:
                self._retry_or_fail(
                    task, "crashed", r.message or "the worker process crashed", crash=True, worker=conn.label
                )
        if conn.retired:
            self._close_if_idle(conn)
        self._place()

    def _on_task_error(self, task: Task, r: pm.TaskResult, conn: WorkerConnection) -> None:
        task.crashes_in_a_row = 0
        if task.options.retry_exceptions and task.options.retries_left(task.attempts):
            self._requeue(task)
            return
        worker, name, data = conn.label, task.name, r.data
        fn = self._function_by_id(task.fn_id)

        def make() -> BaseException:
            # Unpickled by the thread that calls get, never by the runtime thread.
            try:
                info = pickle.loads(readable(data))
            except Exception as exc:
                return P2prtError(f"task {name} failed on {worker} and its error could not be read: {exc}")
            return task_error_from_info(info, name=name, worker=worker, fn=fn)

        self._finish(task, Failed(make))

    def _retry_or_fail(self, task: Task, kind: str, message: str, *, crash: bool = False, worker: str = "") -> None:
        if crash:
            task.crashes_in_a_row += 1
        if task.cancelled:
            self._finish(task, Failed(lambda: TaskCancelledError(f"task {task.name} was cancelled")))
            return
        if task.options.retries_left(task.attempts) and task.crashes_in_a_row < ALLOWED_CRASHES:
            self.stats["retries"] += 1
            self._requeue(task)
            return
        where = f" on {worker}" if worker else ""
        if kind == "timeout":
            text = f"task {task.name} timed out after {task.options.timeout:g} s{where} (attempt {task.attempts}): {message}"
            self._finish(task, Failed(lambda: TaskTimeoutError(text, worker=worker)))
        else:
            extra = (
                f"; it crashed its worker {task.crashes_in_a_row} times in a row, so it was not retried again"
                if task.crashes_in_a_row >= ALLOWED_CRASHES
                else f" (attempt {task.attempts}, max_retries={task.options.max_retries})"
            )
            text = f"task {task.name}: the worker crashed{where}: {message}{extra}"
            self._finish(task, Failed(lambda: WorkerCrashedError(text, worker=worker)))

    def _requeue(self, task: Task) -> None:
        task.lease_id = None
        self._queues[task.options.shape].appendleft(task)






    def _finish(self, task: Task, outcome: Stored | Failed | Held) -> None:
        self._tasks.pop(task.object_id, None)
        self.store.resolve(task.object_id, outcome)
        if isinstance(outcome, Failed):
            for dependent in self._waiting_on.pop(task.object_id, []):
                if dependent.object_id in self._tasks:
                    self._finish(dependent, outcome)

    def _cancel(self, object_id: bytes, force: bool) -> None:
        task = self._tasks.get(object_id)
        if task is None:
            return
        task.cancelled = True
        if task.lease_id is None:
            self._finish(task, Failed(lambda: TaskCancelledError(f"task {task.name} was cancelled")))
            return
        lease = self._leases.get(task.lease_id)
        if lease is not None and lease.conn is not None:
            lease.conn.enqueue(pm.CancelTask(task.task_id, force))

    # -- nested tasks (a running task submits or waits)

    def _nested_submit(self, conn: WorkerConnection, msg: pm.NestedSubmit) -> None:
        fn = pickle.loads(msg.fn_payload)
        options = pickle.loads(msg.options)
        ids = []
        for call in msg.calls:
            args, kwargs = pickle.loads(call)
            ref = self.submit(fn, args, kwargs, options)
            self.store.escape(ref.id)  # the running task holds it: keep the value
            ids.append(ref.id)
        conn.enqueue(pm.NestedSubmitted(msg.rid, ids))
        self._pump()

    async def _nested_get(self, conn: WorkerConnection, msg: pm.NestedGet) -> None:
        parent = conn.inflight.get(msg.parent_task_id)
        lease = self._leases.get(parent.lease_id or "") if parent is not None else None
        if lease is not None and parent is not None:
            # The worker lends the waiting task's slot out; so do we, or a chain of
            # nested tasks deeper than the pipeline could wait for itself.
            lease.inflight.discard(parent.task_id)
            self._place()
        if parent is not None:
            parent.nested_waits += 1
        try:
            await self._answer_nested_get(conn, msg)
        finally:
            if parent is not None:
                parent.nested_waits -= 1
            if lease is not None and parent is not None and parent.task_id in conn.inflight:
                lease.inflight.add(parent.task_id)

    async def _answer_nested_get(self, conn: WorkerConnection, msg: pm.NestedGet) -> None:
        values = []
        with trio.move_on_after(msg.timeout if msg.timeout is not None else math.inf):
            for oid in msg.object_ids:
                fut = self.store.future(oid)
                if not fut.done():
                    await self._wait_future(fut)
        held = [oid for oid in msg.object_ids if isinstance(self.store.outcome(oid), Held)]
        fetched = await self._fetch_held(held) if held else {}
        for oid in msg.object_ids:
            outcome = fetched.get(oid) or self.store.outcome(oid)
            if isinstance(outcome, Held):
                outcome = None
            if outcome is None:
                values.append(pm.ObjectValue(oid, "timeout", b"", [], "not ready before the timeout"))
            elif isinstance(outcome, Stored):
                values.append(pm.ObjectValue(oid, "ok", outcome.data, outcome.buffers))
            else:
                try:
                    outcome.make()
                    error: BaseException = P2prtError("failed")
                except BaseException as exc:
                    error = exc
                try:
                    data = pickle.dumps(error)
                except Exception:
                    data = pickle.dumps(P2prtError(str(error)))
                values.append(pm.ObjectValue(oid, "error", data, [], str(error)))
        conn.enqueue(pm.NestedValues(msg.rid, values))

    # -- leases coming back

    def _release(self, lease: ClientLease) -> None:
        self._leases.pop(lease.lease_id, None)
        if lease.conn is not None:
            lease.conn.leases.pop(lease.lease_id, None)
            if not lease.conn.closed:
                lease.conn.enqueue(pm.Detach(lease.lease_id))
        self._board_send_soon(bm.LeaseReturn([lease.lease_id]))

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(min(0.25, self.linger / 2))
            self.store.collect()
            self._send_releases()
            now = trio.current_time()
            for lease in list(self._leases.values()):
                if not lease.active or lease.inflight:
                    continue
                if self._queues.get(lease.shape):
                    continue
                if now - lease.idle_since >= self.linger:
                    self._release(lease)
            # Shapes we asked the board for and no longer need. (Not only those we think
            # are still outstanding: after a revocation or a reconnection our count is
            # reset while the board may still hold the demand.)
            stale = [shape for shape in self._asked if not self._queues.get(shape)]
            if stale and self._board is not None:
                # Demand left over from a finished batch would keep arriving as grants
                # (and be returned) while other shapes wait: drop all, then re-ask for
                # the rest — in this order, so the cancel cannot overtake the new request.
                self._requested.clear()
                self._asked.clear()
                try:
                    await self._board.send(bm.LeaseCancel(self.cluster))
                except P2prtError:
                    pass
                self._place()


def _print_output(stream: str, text: str) -> None:
    target = sys.stderr if stream == "stderr" else sys.stdout
    target.write(text)
    target.flush()
