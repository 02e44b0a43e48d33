"""``p2prt.Executor``: the cluster behind a standard ``concurrent.futures.Executor``.

Code written for ``ProcessPoolExecutor`` runs on the cluster unchanged::

    with p2prt.Executor("alice/friends") as pool:       # or Executor() for the local cluster
        results = list(pool.map(simulate, range(1000), chunksize=10, progress=True))
        future = pool.submit(fit, data)
        print(future.result())

How it works: ``submit`` is ``f.remote(*args)`` under the hood; the returned
``concurrent.futures.Future`` is resolved by one completion thread per executor, which
learns of finished tasks from the runtime's own futures (no polling), unpickles the
value there, and runs done-callbacks there — as ``ProcessPoolExecutor`` runs them in its
management thread. A future counts as running once its task was sent to a worker (the
script cannot see the moment a worker starts it); until then ``cancel`` cancels the task,
which then never runs. To interrupt a running one, ``p2prt.cancel(future.ref)``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .progress import ProgressBar

__all__ = ["Executor"]

T = TypeVar("T")

_STOP = object()


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """One task for ``chunksize`` calls of ``fn`` (``map``)."""
    return [fn(*args) for args in chunk]


def _chunks(iterables: tuple[Iterable[Any], ...], size: int) -> Iterator[list[tuple[Any, ...]]]:
    it = zip(*iterables, strict=False)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class _TaskFuture(concurrent.futures.Future[Any]):
    """A Future for one task; ``cancel`` also cancels the task."""

    def __init__(self, ref: Any) -> None:
        super().__init__()
        self.ref = ref

    def running(self) -> bool:
        if super().running():
            return True
        from . import _api

        runtime = _api._runtime
        dispatched = getattr(runtime, "dispatched", None)
        return not self.done() and dispatched is not None and bool(dispatched(self.ref))

    def cancel(self) -> bool:
        if self.running():
            return False  # as the stdlib: a running call is not cancelled (p2prt.cancel(ref) interrupts it)
        if not super().cancel():
            return False
        from . import _api

        if _api.is_initialized():
            _api.cancel(self.ref)
        return True


class Executor(concurrent.futures.Executor):
    """Run calls on a p2prt cluster. ``cluster`` and ``init_kwargs`` go to
    :func:`p2prt.init` when no runtime runs yet (that runtime is then shut down with
    the executor); otherwise the running one is used. ``task_options`` (``num_cpus``,
    ``max_retries``, ``timeout``, ``resources``, ...) apply to every task it submits."""

    def __init__(self, cluster: str | None = None, *, task_options: dict[str, Any] | None = None, **init_kwargs: Any):
        from . import _api

        self._owns_runtime = False
        if not _api.is_initialized():
            _api.init(cluster, **init_kwargs)
            self._owns_runtime = True
        else:
            info = _api._info
            if cluster is not None and info is not None and info.cluster != cluster:
                raise ValueError(f"p2prt already runs on {info.cluster}, not {cluster}: call p2prt.shutdown() first")
        self._options = dict(task_options or {})
        self._remote: dict[int, Any] = {}
        self._pending: set[_TaskFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._complete, name="p2prt-executor", daemon=True)
        self._thread.start()

    # -- submitting

    def _remote_for(self, fn: Callable[..., Any]) -> Any:
        from . import _remote

        cached = self._remote.get(id(fn))
        if cached is None or cached[0] is not fn:
            base = _remote.remote(fn)
            cached = (fn, base.options(**self._options) if self._options else base)
            self._remote[id(fn)] = cached
        return cached[1]

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        from . import _api

        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            ref = self._remote_for(fn).remote(*args, **kwargs)
            future = _TaskFuture(ref)
            self._pending.add(future)
        runtime = _api.current_runtime()
        store = getattr(runtime, "store", None)
        if store is not None:
            store.future(ref.id).add_done_callback(lambda _f: self._done.put(future))
        else:  # inside a task: no store to watch; resolve in the completion thread
            self._done.put(future)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | str = False,
    ) -> Iterator[T]:
        """Like :meth:`concurrent.futures.Executor.map`: results in order, lazily;
        ``chunksize`` calls per task; ``progress`` shows a tqdm bar of finished tasks."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        futures: list[concurrent.futures.Future[Any]]
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        else:
            futures = [self.submit(_run_chunk, fn, chunk) for chunk in _chunks(iterables, chunksize)]
        bar = ProgressBar(len(futures), progress) if progress else None
        if bar is not None:
            for f in futures:
                f.add_done_callback(lambda _f: bar.advance())
        results = self._results(futures, timeout, bar)
        if chunksize == 1:
            return results
        return itertools.chain.from_iterable(results)

    @staticmethod
    def _results(
        futures: list[concurrent.futures.Future[Any]], timeout: float | None, bar: ProgressBar | None
    ) -> Iterator[Any]:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            futures.reverse()
            while futures:
                remaining = None if deadline is None else deadline - time.monotonic()
                yield futures.pop().result(remaining)
        finally:
            for f in futures:
                f.cancel()
            if bar is not None:
                bar.close()

    # -- completing (the completion thread)

    def _complete(self) -> None:
        from . import _api

        while True:
            future = self._done.get()
            if future is _STOP:
                return
            assert isinstance(future, _TaskFuture)
            with self._lock:
                self._pending.discard(future)
            if not future.set_running_or_notify_cancel():
                continue  # cancelled: its callbacks already ran
            try:
                value = _api.get(future.ref)
            except BaseException as exc:  # the task's error, as p2prt.get raises it
                future.set_exception(exc)
            else:
                future.set_result(value)

    # -- ending

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; ``cancel_futures`` cancels those not finished; ``wait`` blocks
        until the rest are. The runtime, if this executor started it, stops after that."""
        with self._lock:
            if self._shutdown and not self._thread.is_alive():
                return
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            self._finish(pending)
        else:
            threading.Thread(target=self._finish, args=(pending,), name="p2prt-executor-end", daemon=True).start()

    def _finish(self, pending: list[_TaskFuture]) -> None:
        from . import _api

        concurrent.futures.wait(pending)
        self._done.put(_STOP)
        self._thread.join()
        if self._owns_runtime:
            self._owns_runtime = False
            _api.shutdown()
