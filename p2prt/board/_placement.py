"""Where a lease goes: live workers of one (cluster, python) pool, indexed by free CPUs.

Theory of operation
-------------------
A lease can only run on a worker of its cluster with the same Python major.minor, so
the scheduler keeps one :class:`WorkerPool` per ``(cluster, python)``. Inside a pool,
workers are grouped by their *signature* — the set of custom resource names they offer
(``frozenset()`` for plain CPU machines, ``{"gpu"}`` for GPU machines) — and inside a
signature they sit in buckets by their number of free CPUs, with a sorted list of the
non-empty bucket levels.

Placement policy (:meth:`WorkerPool.find`): **best fit, plain machines first**.

- Signatures are tried from the fewest resource names up, so CPU-only leases land on
  plain workers before GPU machines, which stay free for work that needs them.
- Within a signature, the worker with the *fewest* free CPUs that still fit wins (the
  lowest bucket level ≥ ``num_cpus``), oldest in its bucket first. This packs leases
  onto few workers: a client needs fewer connections, sends each function to fewer
  workers, and whole machines stay free for multi-CPU leases.

A CPU-only lookup is ``O(log L)`` in the number of distinct free levels ``L`` (≤ the
largest slot count); a lookup with custom resources scans only workers of matching
signatures with enough free CPUs. Moving a worker between buckets is ``O(L)`` at worst.
Nothing here scans all workers of a cluster.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from ._sched_types import LeaseShape

__all__ = ["WorkerState", "WorkerPool", "unsatisfiable_reason", "version_key"]


class WorkerState:
    """A live worker and its free capacity (mutable; owned by the scheduler)."""

    __slots__ = (
        "cluster",
        "free_cpus",
        "free_resources",
        "host",
        "last_seen",
        "leases",
        "peer_id",
        "python",
        "resources",
        "signature",
        "slots",
        "total_resources",
        "user",
    )

    def __init__(
        self,
        peer_id: str,
        user: str,
        cluster: str,
        host: str,
        slots: int,
        resources: tuple[tuple[str, float], ...],
        python: str,
        now: float,
    ) -> None:
        self.peer_id = peer_id
        self.user = user
        self.cluster = cluster
        self.host = host
        self.slots = slots
        self.resources = resources
        self.total_resources = dict(resources)
        self.python = python
        self.signature = frozenset(name for name, _ in resources)
        self.free_cpus = slots
        self.free_resources = dict(resources)
        self.leases: dict[str, None] = {}
        self.last_seen = now

    def has_free(self, shape: LeaseShape) -> bool:
        """Whether a lease of ``shape`` fits in what is free now."""
        if self.free_cpus < shape.num_cpus:
            return False
        free = self.free_resources
        return all(free.get(name, 0.0) >= amount - 1e-9 for name, amount in shape.pairs)

    def could_ever_hold(self, shape: LeaseShape) -> bool:
        """Whether a lease of ``shape`` fits this worker when it is idle."""
        if self.python != shape.python or self.slots < shape.num_cpus:
            return False
        total = self.total_resources
        return all(total.get(name, 0.0) >= amount - 1e-9 for name, amount in shape.pairs)


class _Buckets:
    """Workers of one signature, bucketed by free CPUs (only free_cpus > 0 are kept)."""

    __slots__ = ("by_free", "levels")

    def __init__(self) -> None:
        self.by_free: dict[int, dict[str, WorkerState]] = {}
        self.levels: list[int] = []

    def add(self, worker: WorkerState) -> None:
        level = worker.free_cpus
        if level <= 0:
            return
        bucket = self.by_free.get(level)
        if bucket is None:
            bucket = self.by_free[level] = {}
            insort(self.levels, level)
        bucket[worker.peer_id] = worker

    def discard(self, worker: WorkerState) -> None:
        level = worker.free_cpus
        bucket = self.by_free.get(level)
        if bucket is None or bucket.pop(worker.peer_id, None) is None:
            return
        if not bucket:
            del self.by_free[level]
            self.levels.pop(bisect_left(self.levels, level))

    def find(self, shape: LeaseShape) -> WorkerState | None:
        levels = self.levels
        i = bisect_left(levels, shape.num_cpus)
        if i == len(levels):
            return None
        if not shape.pairs:
            return next(iter(self.by_free[levels[i]].values()))
        for level in levels[i:]:
            for worker in self.by_free[level].values():
                if worker.has_free(shape):
                    return worker
        return None


def _signature_key(signature: frozenset[str]) -> tuple[int, list[str]]:
    return (len(signature), sorted(signature))


class WorkerPool:
    """The live workers of one ``(cluster, python)``: capacity totals and placement index."""

    __slots__ = ("_buckets", "_caps", "_order", "_res_total", "_sig_slots", "capacity", "workers")

    def __init__(self) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.capacity = 0  # total slots of the live workers
        self._buckets: dict[frozenset[str], _Buckets] = {}
        self._order: list[frozenset[str]] = []  # signatures, plain first
        self._sig_slots: dict[frozenset[str], int] = {}
        self._res_total: dict[str, float] = {}
        self._caps: dict[LeaseShape, int] = {}

    def add(self, worker: WorkerState) -> None:
        """Add a new worker (with its current free capacity)."""
        self.workers[worker.peer_id] = worker
        self.capacity += worker.slots
        sig = worker.signature
        if sig not in self._buckets:
            self._buckets[sig] = _Buckets()
            self._order.append(sig)
            self._order.sort(key=_signature_key)
            self._sig_slots[sig] = 0
        self._sig_slots[sig] += worker.slots
        for name, amount in worker.resources:
            self._res_total[name] = self._res_total.get(name, 0.0) + amount
        self._buckets[sig].add(worker)
        self._caps.clear()

    def remove(self, worker: WorkerState) -> None:
        """Remove a worker (its leases must be gone already)."""
        del self.workers[worker.peer_id]
        self.capacity -= worker.slots
        sig = worker.signature
        self._buckets[sig].discard(worker)
        self._sig_slots[sig] -= worker.slots
        if self._sig_slots[sig] <= 0:
            del self._sig_slots[sig], self._buckets[sig]
            self._order.remove(sig)
        for name, amount in worker.resources:
            left = self._res_total[name] - amount
            if left <= 1e-9:
                del self._res_total[name]
            else:
                self._res_total[name] = left
        self._caps.clear()

    def allocate(self, worker: WorkerState, shape: LeaseShape) -> None:
        """Take ``shape`` from the worker's free capacity (the caller checked it fits)."""
        buckets = self._buckets[worker.signature]
        buckets.discard(worker)
        worker.free_cpus -= shape.num_cpus
        for name, amount in shape.pairs:
            worker.free_resources[name] -= amount
        buckets.add(worker)

    def release(self, worker: WorkerState, shape: LeaseShape) -> None:
        """Give ``shape`` back to the worker's free capacity."""
        buckets = self._buckets[worker.signature]
        buckets.discard(worker)
        worker.free_cpus += shape.num_cpus
        for name, amount in shape.pairs:
            worker.free_resources[name] += amount
        buckets.add(worker)

    def find(self, shape: LeaseShape) -> WorkerState | None:
        """The worker a lease of ``shape`` should go to now, or None if none has room."""
        names = shape.names
        for sig in self._order:
            if names <= sig:
                worker = self._buckets[sig].find(shape)
                if worker is not None:
                    return worker
        return None

    def cap(self, shape: LeaseShape) -> int:
        """An upper bound on the CPUs that leases of ``shape`` could hold at once here.

        Used to cap a client's demand for fair share, so that a user who waits for the
        only GPU does not get (and leave idle) half of the cluster's CPUs.
        """
        cached = self._caps.get(shape)
        if cached is not None:
            return cached
        names = shape.names
        slots = sum(n for sig, n in self._sig_slots.items() if names <= sig)
        leases = slots // shape.num_cpus
        for name, amount in shape.pairs:
            leases = min(leases, int(self._res_total.get(name, 0.0) / amount + 1e-9))
        cap = self._caps[shape] = leases * shape.num_cpus
        return cap


def version_key(version: str) -> tuple[int, ...]:
    """Sort key for ``"3.9" < "3.11"``."""
    return tuple(int(part) for part in version.split("."))


def unsatisfiable_reason(cluster: str, shape: LeaseShape, workers: list[WorkerState]) -> str | None:
    """None if some worker of ``workers`` (the cluster's live ones) could ever hold a lease
    of ``shape``; otherwise a sentence that says what is missing."""
    if any(worker.could_ever_hold(shape) for worker in workers):
        return None
    if not workers:
        return f"cluster {cluster} has no live workers"
    same = [w for w in workers if w.python == shape.python]
    if not same:
        versions = ", ".join(sorted({w.python for w in workers}, key=version_key))
        return f"no worker in {cluster} runs Python {shape.python} (workers run: {versions})"
    big = [w for w in same if w.slots >= shape.num_cpus]
    if not big:
        largest = max(w.slots for w in same)
        return (
            f"no worker in {cluster} running Python {shape.python} offers {shape.num_cpus} CPUs "
            f"(the largest offers {largest})"
        )
    need = ", ".join(f"{name}={amount:g}" for name, amount in shape.pairs)
    have = []
    for name, _ in shape.pairs:
        best = max(w.total_resources.get(name, 0.0) for w in big)
        have.append(f"{name}={best:g}")
    cpus = f"{shape.num_cpus} CPU" + ("s" if shape.num_cpus != 1 else "")
    return (
        f"no worker in {cluster} running Python {shape.python} with {cpus} offers {need} "
        f"(the most any such worker offers: {', '.join(have)})"
    )
