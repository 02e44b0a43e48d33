"""A joblib backend: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on a p2prt cluster.

    import joblib
    import p2prt.joblib                      # registers the backend "p2prt"

    with joblib.parallel_backend("p2prt"):  # or parallel_config(backend="p2prt")
        scores = cross_val_score(model, X, y, cv=10, n_jobs=-1)

The backend submits joblib's batches of calls as tasks through a :class:`p2prt.Executor`;
when no runtime runs yet it starts one (the embedded local cluster, or
``parallel_backend("p2prt", cluster="alice/friends")``) and leaves it running for the
process, as ``p2prt.init`` would. ``n_jobs=-1`` means every CPU the cluster's live
workers offer, ``-2`` one less, and so on — but at least 2: with 1, joblib would run the
calls in this process. Batch sizes adapt to the tasks' duration (joblib's auto-batching). Inside a task, nested joblib calls run
sequentially. Importing :mod:`p2prt` does not import joblib; this module does.
"""

from __future__ import annotations

import os
import time
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

__all__ = ["P2prtBackend", "register"]


class P2prtBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ParallelBackendBase, backed by :class:`p2prt.Executor`. ``cluster`` and
    ``init_kwargs`` are used only if no runtime runs yet."""

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, cluster: str | None = None, nesting_level: int | None = None, **init_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level)
        self._cluster = cluster
        self._init_kwargs = init_kwargs
        self._executor: Any = None

    def _ensure_executor(self) -> Any:
        if self._executor is None:
            from . import _api
            from .executor import Executor

            if not _api.is_initialized():  # started once, for the process: joblib
                _api.init(self._cluster, **self._init_kwargs)  # ends each Parallel call with terminate()
            self._executor = Executor(self._cluster)
        return self._executor

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        if n_jobs is None or n_jobs < 0:
            self._ensure_executor()
            from . import _api

            total = max(2, _cluster_cpus(_api.current_runtime()))
            return max(2, total + 1 + n_jobs) if n_jobs is not None and n_jobs < -1 else total
        return int(n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        self._ensure_executor()
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        future = self._ensure_executor().submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def get_nested_backend(self) -> Any:
        from joblib._parallel_backends import SequentialBackend

        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


def _cluster_cpus(runtime: Any, patience: float = 3.0) -> int:
    """CPUs of the cluster's live workers (waiting up to ``patience`` seconds for a first
    worker, e.g. the embedded one still registering); a guess if nobody can tell."""
    cluster_cpus = getattr(runtime, "cluster_cpus", None)
    if cluster_cpus is None:  # inside a task
        return os.cpu_count() or 1
    deadline = time.monotonic() + patience
    while True:
        try:
            cpus = int(cluster_cpus())
        except Exception:  # the board does not answer
            return os.cpu_count() or 1
        if cpus or time.monotonic() > deadline:
            return cpus
        time.sleep(0.05)  # sleep-ok: poll interval of a bounded wait for a worker


def register() -> None:
    """Register the backend under the name ``"p2prt"`` (done on import)."""
    joblib.register_parallel_backend("p2prt", P2prtBackend)


register()
