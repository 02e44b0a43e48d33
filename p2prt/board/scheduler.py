"""The board's lease scheduler: live workers, leases, waiting demand and fair share.

Theory of operation
-------------------
:class:`Scheduler` is pure state, in the sans-IO style of h11: every call takes ``now``
(seconds on any monotonic clock), changes the state and returns the resulting events
(:class:`Grant`, :class:`Reclaim`, :class:`Revoke`, :class:`Unsatisfiable`) in a
deterministic order. It does no I/O, reads no clock, starts nothing and logs nothing;
the board server moves messages in and out and checks membership before calling.

**Pools.** A lease needs a worker of its cluster with the same Python major.minor, so
each ``(cluster, python)`` is scheduled as its own pool (:mod:`._placement`): its
capacity is the total slots of its live workers, and fair share is computed inside it.

**Demand.** A client's demand in a pool is what it holds plus what it waits for, in
CPUs. :meth:`Scheduler.request_leases` adds waiting leases of one *shape* (CPUs, custom
resources, Python); leases are granted at once where share and capacity allow, the rest
waits and is granted whenever capacity frees (a return, a new worker, a revocation,
:meth:`~Scheduler.tick`). A shape that no live worker of the cluster could ever hold is
answered with :class:`Unsatisfiable` and never waits; waiting demand that becomes
impossible when workers leave is dropped the same way.

**Fair share** (:mod:`._fairshare`). When the pool's total demand exceeds its capacity,
the capacity is split between *users* by max-min fairness (water-filling, in whole
CPUs), and each user's share between its *clients* the same way. A client's demand for
a shape is first capped by what the pool could ever give that shape (e.g. the number of
GPUs), so a user waiting for the only GPU does not claim half the CPUs and leave them
idle. Then:

- a client gets a new lease only while it holds less than its share *and* its user
  holds less than the user's share (a multi-CPU lease may straddle the share line by
  less than one lease); clients furthest below their share are served first;
- if, after granting, some client with waiting demand is still below its share, every
  client holding more than its share is asked to hand back the excess: one
  :class:`Reclaim` per lease (never twice for the same lease), newest leases first,
  preferring leases on workers that the starved demand could use. The client returns
  the lease at its next task boundary with :meth:`~Scheduler.return_lease`, and the
  freed slot goes to the starved client in that same call. A lease is reclaimed only
  if its owner stays at or above its share without it, so a returned lease is never
  granted straight back (no ping-pong). A Reclaim is not withdrawn if the need passes.

With total demand at or below capacity every client's share is its whole demand, and
the scheduler skips the water-filling (the common, uncontended fast path).

**Placement** is best fit with plain machines first (see :mod:`._placement`).

**Liveness.** ``heartbeat_worker``/``heartbeat_client`` keep peers alive; a client's
heartbeat also renews all its leases to ``now + lease_ttl``. :meth:`~Scheduler.tick`
removes workers silent for more than ``worker_timeout`` (their leases are revoked,
"worker lost"), clients silent for more than ``client_timeout`` (leases revoked,
"client lost", waiting demand dropped) and leases whose ``expires <= now`` ("lease
expired"), then re-runs granting and fair share in every pool with waiting demand.
Workers and clients are kept in heartbeat order, so a tick costs the number of expired
peers plus the number of clients, never a scan of all workers.

**Modules.** This file is the public API and decides *when* things happen;
:mod:`._sched_types` holds the records and events, :mod:`._sched_state` the bookkeeping
(:class:`~._sched_state.Book`), :mod:`._placement` the per-pool worker index,
:mod:`._fairshare` the share computation and granting, :mod:`._sched_audit` a
from-scratch consistency check used by the tests.

**Time.** ``now`` should not go backwards; a smaller value than one seen before is
treated as the latest one seen.

Costs: a request or a return costs ``O(log L)`` placement (``L`` = distinct free-CPU
levels) plus, when the pool is contended, ``O(n log n)`` fair-share work in the number
of clients with demand in that pool — independent of the number of workers.

**Limits.** Shares are counted in CPUs only: custom resources are checked for capacity
and cap a shape's demand, but are not a fairness dimension of their own (no dominant
resource fairness), so a user holding the only GPU keeps it until it returns the lease
or is over its CPU share. Reclaims are requests: a client that ignores them keeps its
leases until they are revoked or expire; the scheduler does not escalate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from ._fairshare import schedule
from ._placement import WorkerState, unsatisfiable_reason
from ._sched_audit import audit
from ._sched_state import Book, ClientState, LeaseIds, PoolKey
from ._sched_types import (
    NO_RESOURCES,
    REVOKE_CLIENT_DISCONNECTED,
    REVOKE_CLIENT_LOST,
    REVOKE_LEASE_EXPIRED,
    REVOKE_MEMBER_REMOVED,
    REVOKE_USER_REMOVED,
    REVOKE_WORKER_CHANGED,
    REVOKE_WORKER_LOST,
    REVOKE_WORKER_REMOVED,
    REVOKE_WORKER_UNREGISTERED,
    Event,
    FrozenResources,
    Grant,
    Lease,
    LeaseShape,
    Reclaim,
    Revoke,
    SchedulerConfig,
    SchedulerError,
    SchedulerStatistics,
    SchedulerStatus,
    UnknownWorkerError,
    Unsatisfiable,
    UserLeases,
    WaitingRequest,
    WorkerStatus,
    normalize_python,
)

__all__ = [
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "UnknownWorkerError",
    "FrozenResources",
    "LeaseShape",
    "Lease",
    "Event",
    "Grant",
    "Reclaim",
    "Revoke",
    "Unsatisfiable",
    "SchedulerStatus",
    "SchedulerStatistics",
    "WorkerStatus",
    "UserLeases",
    "WaitingRequest",
    "REVOKE_WORKER_LOST",
    "REVOKE_CLIENT_LOST",
    "REVOKE_LEASE_EXPIRED",
    "REVOKE_MEMBER_REMOVED",
    "REVOKE_USER_REMOVED",
    "REVOKE_WORKER_REMOVED",
    "REVOKE_WORKER_UNREGISTERED",
    "REVOKE_WORKER_CHANGED",
    "REVOKE_CLIENT_DISCONNECTED",
]


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchedulerError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SchedulerError(f"{what} must be an integer >= 1, got {value!r}")
    return value


class Scheduler:
    """The board's scheduling state. See the module docstring for how it decides.

    >>> s = Scheduler()
    >>> s.register_worker("w1", user="bob", cluster="alice/friends", host="bob-pc", slots=4, now=0.0)
    []
    >>> [type(e).__name__ for e in s.request_leases("c1", "alice", "alice/friends", 2, now=1.0)]
    ['Grant', 'Grant']

    ``lease_id_factory`` makes lease ids (default: a random prefix and a counter); a
    duplicate id raises :class:`SchedulerError`.
    """

    def __init__(
        self, config: SchedulerConfig | None = None, *, lease_id_factory: Callable[[], str] | None = None
    ) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._book = Book(self.config, lease_id_factory if lease_id_factory is not None else LeaseIds())
        self._cluster_gen: dict[str, int] = {}  # changes whenever a cluster's set of workers does
        self._feasible: dict[tuple[str, LeaseShape], tuple[int, str | None]] = {}
        self._plain_shapes: dict[tuple[int, str], LeaseShape] = {}

    # ----------------------------------------------------------------- workers

    def register_worker(
        self,
        peer_id: str,
        *,
        user: str,
        cluster: str,
        host: str,
        slots: int,
        resources: Mapping[str, float] | None = None,
        python: str = "3.11",
        now: float,
    ) -> list[Event]:
        """Add a live worker offering ``slots`` CPUs and ``resources`` to ``cluster``.

        Returns the grants its capacity enables. Registering a known ``peer_id`` again
        with the same user, cluster, slots, resources and Python only refreshes it; with
        any of those changed, its leases are revoked ("worker re-registered with another
        configuration") and it starts afresh. Raises :class:`SchedulerError` for invalid
        arguments.
        """
        now = self._clock(now)
        _name(peer_id, "peer_id")
        _name(user, "user")
        _name(cluster, "cluster")
        if not isinstance(host, str):
            raise SchedulerError(f"host must be a string, got {host!r}")
        _count(slots, "slots")
        pairs = FrozenResources(resources, what=f"worker {peer_id}").pairs
        version = normalize_python(python)
        book = self._book
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        old = book.workers.get(peer_id)
        if old is not None:
            if (old.user, old.cluster, old.slots, old.resources, old.python) == (user, cluster, slots, pairs, version):
                old.host = host
                book.touch_worker(old, now)
                return events
            self._drop_worker(old, REVOKE_WORKER_CHANGED, events, touched, lost)
        pool = book.add_worker(WorkerState(peer_id, user, cluster, host, slots, pairs, version, now))
        self._cluster_gen[cluster] = book.next_seq()
        touched.add(pool.key)
        self._finish(events, touched, lost)
        return events

    def heartbeat_worker(self, peer_id: str, now: float) -> list[Event]:
        """Keep a worker alive. Raises :class:`UnknownWorkerError` if it is not registered
        (it timed out, or the board restarted): the worker should register again."""
        now = self._clock(now)
        worker = self._book.workers.get(peer_id)
        if worker is None:
            raise UnknownWorkerError(f"worker {peer_id} is not registered (timed out or the board restarted)")
        self._book.touch_worker(worker, now)
        return []

    def unregister_worker(self, peer_id: str, now: float) -> list[Event]:
        """Remove a worker (it is shutting down): its leases are revoked, and demand that
        no remaining worker could hold is dropped. Unknown ``peer_id``: nothing happens."""
        self._clock(now)
        worker = self._book.workers.get(peer_id)
        if worker is None:
            return []
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        self._drop_worker(worker, REVOKE_WORKER_UNREGISTERED, events, touched, lost)
        self._finish(events, touched, lost)
        return events

    # ----------------------------------------------------------------- clients

    def request_leases(
        self,
        client_peer_id: str,
        user: str,
        cluster: str,
        count: int,
        *,
        num_cpus: int = 1,
        resources: Mapping[str, float] | None = None,
        python: str = "3.11",
        now: float,
    ) -> list[Event]:
        """Add ``count`` leases of one shape to the client's waiting demand in ``cluster``.

        Returns the grants made at once (possibly fewer than ``count``; the rest waits)
        and any Reclaims that make room for the client's fair share. If no live worker
        of the cluster could ever hold such a lease, returns a single
        :class:`Unsatisfiable` and records nothing. Raises :class:`SchedulerError` for
        invalid arguments or if ``client_peer_id`` is known under another user.
        """
        now = self._clock(now)
        _name(client_peer_id, "client_peer_id")
        _name(user, "user")
        _name(cluster, "cluster")
        _count(count, "count")
        shape = self._shape(num_cpus, resources, python)
        book = self._book
        client = book.client_for(client_peer_id, user, now)
        reason = self._unsatisfiable(cluster, shape)
        if reason is not None:
            book.unsatisfiable += 1
            book.forget_client_if_idle(client)
            return [Unsatisfiable(client_peer_id, cluster, reason, shape, count)]
        pool = book.pools[(cluster, shape.python)]  # exists: some worker there could hold the shape
        book.add_waiting(book.demand_for(pool, client), shape, count)
        events: list[Event] = []
        schedule(book, pool, events)
        return events

    def cancel_requests(self, client_peer_id: str, cluster: str, now: float) -> list[Event]:
        """Drop all of the client's waiting demand in ``cluster`` (held leases stay).

        Returns the grants the freed share enables for others. Unknown client: nothing.
        """
        now = self._clock(now)
        book = self._book
        client = book.clients.get(client_peer_id)
        if client is None:
            return []
        book.touch_client(client, now)
        touched: set[PoolKey] = set()
        for key, demand in list(client.demands.items()):
            if key[0] == cluster and demand.waiting_cpus:
                book.drop_waiting(demand)
                touched.add(key)
        book.forget_client_if_idle(client)
        events: list[Event] = []
        self._finish(events, touched, set())
        return events

    def return_lease(self, lease_id: str, now: float, *, client_peer_id: str | None = None) -> list[Event]:
        """The client gives a lease back: its slots are free at once and waiting demand
        is granted in the same call (those Grants are returned).

        An unknown ``lease_id`` is a no-op returning ``[]``: a return can cross a
        revocation or expiry on the wire, and a second return of the same lease is
        harmless. If ``client_peer_id`` is given (the server should pass the sender) and
        the lease belongs to another client, raises :class:`SchedulerError`.
        """
        now = self._clock(now)
        book = self._book
        state = book.leases.get(lease_id)
        if state is None:
            return []
        client = state.demand.client
        if client_peer_id is not None and client_peer_id != client.peer_id:
            raise SchedulerError(f"lease {lease_id} is not held by client {client_peer_id}")
        book.touch_client(client, now)
        pool = state.demand.pool
        events: list[Event] = []
        book.end_lease(state, None, events)
        schedule(book, pool, events)
        return events

    def heartbeat_client(self, client_peer_id: str, now: float) -> list[Event]:
        """Keep a client alive and renew all its leases to ``now + lease_ttl``.

        A client with no leases and no waiting demand is not tracked: nothing happens.
        """
        now = self._clock(now)
        client = self._book.clients.get(client_peer_id)
        if client is None:
            return []
        self._book.touch_client(client, now)
        expires = now + self.config.lease_ttl
        for state in client.leases.values():
            if state.lease.expires < expires:
                state.lease = replace(state.lease, expires=expires)
        return []

    def disconnect_client(self, client_peer_id: str, now: float) -> list[Event]:
        """The client is gone: revoke its leases ("client disconnected"), drop its demand.
        Unknown client: nothing happens."""
        self._clock(now)
        client = self._book.clients.get(client_peer_id)
        if client is None:
            return []
        events: list[Event] = []
        touched: set[PoolKey] = set()
        self._drop_client(client, REVOKE_CLIENT_DISCONNECTED, events, touched, expiry=False)
        self._finish(events, touched, set())
        return events

    # ------------------------------------------------------------- membership

    def remove_member(self, cluster: str, user: str, now: float) -> list[Event]:
        """``user`` left ``cluster``: revoke the user's leases there ("member removed"),
        drop the user's waiting demand there, and unregister the user's workers of that
        cluster (other users' leases on them end with "worker removed: ...")."""
        self._clock(now)
        return self._remove(user, cluster)

    def remove_user(self, user: str, now: float) -> list[Event]:
        """``user`` is gone from the board: :meth:`remove_member` for every cluster, with
        reason "user removed" for the user's own leases."""
        self._clock(now)
        return self._remove(user, None)

    # ------------------------------------------------------------------- time

    def tick(self, now: float) -> list[Event]:
        """Expire silent workers and clients and overdue leases (see the module
        docstring), then grant and rebalance every pool with waiting demand."""
        now = self._clock(now)
        book = self._book
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        limit = self.config.worker_timeout
        while book.worker_order:
            worker = book.workers[next(iter(book.worker_order))]
            if now - worker.last_seen <= limit:
                break
            self._drop_worker(worker, REVOKE_WORKER_LOST, events, touched, lost, expiry=True)
        limit = self.config.client_timeout
        while book.client_order:
            client = book.clients[next(iter(book.client_order))]
            if now - client.last_seen <= limit:
                break
            self._drop_client(client, REVOKE_CLIENT_LOST, events, touched, expiry=True)
        for client in list(book.clients.values()):
            while client.leases:  # in grant order, which is expiry order
                state = next(iter(client.leases.values()))
                if state.lease.expires > now:
                    break
                touched.add(state.demand.pool.key)
                book.end_lease(state, REVOKE_LEASE_EXPIRED, events, expiry=True)
        touched.update(key for key, pool in book.pools.items() if pool.waiting)
        self._finish(events, touched, lost)
        return events

    # ---------------------------------------------------------------- queries

    def lease(self, lease_id: str) -> Lease | None:
        """The current record of a lease (with its renewed ``expires``), or None."""
        state = self._book.leases.get(lease_id)
        return state.lease if state is not None else None

    def client_leases(self, client_peer_id: str) -> tuple[Lease, ...]:
        """The client's leases, oldest first."""
        client = self._book.clients.get(client_peer_id)
        return tuple(s.lease for s in client.leases.values()) if client is not None else ()

    def status(self, cluster: str | None = None) -> SchedulerStatus:
        """A snapshot of workers, leases per user and waiting demand (of one cluster, or
        all). Costs a scan of everything: meant for ``p2prt status``, not the hot path."""
        book = self._book
        workers = []
        for w in sorted(book.workers.values(), key=lambda w: (w.cluster, w.peer_id)):
            if cluster is not None and w.cluster != cluster:
                continue
            busy = {name: total - w.free_resources[name] for name, total in w.resources}
            workers.append(
                WorkerStatus(
                    w.peer_id,
                    w.user,
                    w.cluster,
                    w.host,
                    w.python,
                    w.slots,
                    w.slots - w.free_cpus,
                    FrozenResources(dict(w.resources)),
                    FrozenResources({k: v for k, v in busy.items() if v > 1e-9}),
                    len(w.leases),
                    w.last_seen,
                )
            )
        per_user: dict[tuple[str, str], list[int]] = {}
        for state in book.leases.values():
            lease = state.lease
            if cluster is None or lease.cluster == cluster:
                entry = per_user.setdefault((lease.cluster, lease.client_user), [0, 0])
                entry[0] += 1
                entry[1] += lease.num_cpus
        leases = [UserLeases(c, u, n, cpus) for (c, u), (n, cpus) in sorted(per_user.items())]
        waiting = []
        for pool in book.pools.values():
            if cluster is None or pool.cluster == cluster:
                for demand in pool.waiting.values():
                    for shape, count in demand.waiting.items():
                        waiting.append(
                            WaitingRequest(demand.client.peer_id, demand.client.user, pool.cluster, count, shape)
                        )
        waiting.sort(key=lambda r: (r.cluster, r.client_peer_id, r.shape.python, r.shape.num_cpus, r.shape.pairs))
        return SchedulerStatus(tuple(workers), tuple(leases), tuple(waiting))

    def statistics(self) -> SchedulerStatistics:
        """Counters since creation and current sizes (``waiting`` counts leases)."""
        b = self._book
        waiting = sum(sum(d.waiting.values()) for pool in b.pools.values() for d in pool.waiting.values())
        return SchedulerStatistics(
            grants=b.grants,
            returns=b.returns,
            revokes=b.revokes,
            reclaims=b.reclaims,
            expiries=b.expiries,
            unsatisfiable=b.unsatisfiable,
            workers=len(b.workers),
            clients=len(b.clients),
            leases=len(b.leases),
            waiting=waiting,
        )

    # ---------------------------------------------------------------- internal

    def _audit(self) -> None:
        """Check all incremental bookkeeping from scratch (tests): AssertionError if off."""
        audit(self._book)

    def _clock(self, now: float) -> float:
        if isinstance(now, bool) or not isinstance(now, int | float) or math.isnan(now):
            raise SchedulerError(f"now must be a number of seconds, got {now!r}")
        if now > self._book.now:
            self._book.now = float(now)
        return self._book.now

    def _shape(self, num_cpus: int, resources: Mapping[str, float] | None, python: str) -> LeaseShape:
        if not resources and type(num_cpus) is int and type(python) is str:  # the common case, cached
            cached = self._plain_shapes.get((num_cpus, python))
            if cached is None:
                cached = LeaseShape(num_cpus, NO_RESOURCES, python)
                if len(self._plain_shapes) < 1024:
                    self._plain_shapes[(num_cpus, python)] = cached
            return cached
        return LeaseShape(num_cpus, resources if resources is not None else NO_RESOURCES, python)

    def _drop_worker(
        self,
        worker: WorkerState,
        reason: str,
        events: list[Event],
        touched: set[PoolKey],
        lost: set[str],
        expiry: bool = False,
    ) -> None:
        book = self._book
        for lease_id in list(worker.leases):
            book.end_lease(book.leases[lease_id], reason, events, expiry)
        touched.add(book.remove_worker(worker).key)
        self._cluster_gen[worker.cluster] = book.next_seq()
        lost.add(worker.cluster)

    def _drop_client(
        self, client: ClientState, reason: str, events: list[Event], touched: set[PoolKey], expiry: bool
    ) -> None:
        book = self._book
        for state in list(client.leases.values()):
            touched.add(state.demand.pool.key)
            book.end_lease(state, reason, events, expiry)
        for key, demand in list(client.demands.items()):
            touched.add(key)
            book.drop_waiting(demand)
        book.forget_client_if_idle(client)

    def _remove(self, user: str, cluster: str | None) -> list[Event]:
        book = self._book
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        reason = REVOKE_MEMBER_REMOVED if cluster is not None else REVOKE_USER_REMOVED
        for peer_id in list(book.user_clients.get(user, ())):
            client = book.clients[peer_id]
            for state in list(client.leases.values()):
                if cluster is None or state.lease.cluster == cluster:
                    touched.add(state.demand.pool.key)
                    book.end_lease(state, reason, events)
            for key, demand in list(client.demands.items()):
                if cluster is None or key[0] == cluster:
                    touched.add(key)
                    book.drop_waiting(demand)
            book.forget_client_if_idle(client)
        for worker in list(book.user_workers.get(user, {}).values()):
            if cluster is None or worker.cluster == cluster:
                self._drop_worker(worker, REVOKE_WORKER_REMOVED, events, touched, lost)
        self._finish(events, touched, lost)
        return events

    def _unsatisfiable(self, cluster: str, shape: LeaseShape) -> str | None:
        """Why no live worker of ``cluster`` could ever hold ``shape``, or None. Cached
        until the cluster's set of workers changes."""
        gen = self._cluster_gen.get(cluster, 0)
        hit = self._feasible.get((cluster, shape))
        if hit is not None and hit[0] == gen:
            return hit[1]
        reason = unsatisfiable_reason(cluster, shape, list(self._book.cluster_workers.get(cluster, {}).values()))
        if len(self._feasible) >= 4096:
            self._feasible.clear()
        self._feasible[(cluster, shape)] = (gen, reason)
        return reason

    def _finish(self, events: list[Event], touched: Iterable[PoolKey], lost: set[str]) -> None:
        """After workers left the ``lost`` clusters, drop waiting demand that nothing can
        hold any more; then grant and rebalance the ``touched`` pools, forget empty ones."""
        book = self._book
        keys = set(touched)
        for cluster in sorted(lost):
            for key in [k for k in book.pools if k[0] == cluster]:
                keys.add(key)
                for demand in list(book.pools[key].waiting.values()):
                    for shape in list(demand.waiting):
                        reason = self._unsatisfiable(cluster, shape)
                        if reason is not None:
                            dropped = book.drop_waiting(demand, shape)
                            book.unsatisfiable += 1
                            events.append(Unsatisfiable(demand.client.peer_id, cluster, reason, shape, dropped))
        for key in sorted(keys):
            pool = book.pools.get(key)
            if pool is None:
                continue
            schedule(book, pool, events)
            if not pool.workers.workers and not pool.demands:
                del book.pools[key]
