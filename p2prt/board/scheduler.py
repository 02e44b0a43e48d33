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

**Time.** ``now`` should not go backwards; a smaller value than one seen before is
treated as the latest one seen.

Costs: a request or a return costs ``O(log L)`` placement (``L`` = distinct free-CPU
levels) plus, when the pool is contended, ``O(n log n)`` fair-share work in the number
of clients with demand in that pool — independent of the number of workers.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from ._fairshare import pool_shares
from ._placement import WorkerState, unsatisfiable_reason
from ._sched_state import ClientState, Demand, LeaseIds, LeaseState, Pool, PoolKey, UserDemand
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

    def __init__(self, config: SchedulerConfig | None = None, *,
                 lease_id_factory: Callable[[], str] | None = None) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._new_lease_id: Callable[[], str] = lease_id_factory if lease_id_factory is not None else LeaseIds()
        self._now = -math.inf
        self._seq = 0
        self._workers: dict[str, WorkerState] = {}
        self._worker_order: OrderedDict[str, None] = OrderedDict()  # least recently heard first
        self._cluster_workers: dict[str, dict[str, WorkerState]] = {}
        self._user_workers: dict[str, dict[str, WorkerState]] = {}
        self._clients: dict[str, ClientState] = {}
        self._client_order: OrderedDict[str, None] = OrderedDict()
        self._user_clients: dict[str, dict[str, None]] = {}
        self._leases: dict[str, LeaseState] = {}
        self._pools: dict[PoolKey, Pool] = {}
        self._cluster_gen: dict[str, int] = {}
        self._feasible: dict[tuple[str, LeaseShape], tuple[int, str | None]] = {}
        self._plain_shapes: dict[tuple[int, str], LeaseShape] = {}
        self._n_grants = self._n_returns = self._n_revokes = self._n_reclaims = 0
        self._n_expiries = self._n_unsatisfiable = 0

    # ----------------------------------------------------------------- workers

    def register_worker(self, peer_id: str, *, user: str, cluster: str, host: str, slots: int,
                        resources: Mapping[str, float] | None = None, python: str = "3.11",
                        now: float) -> list[Event]:
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
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        old = self._workers.get(peer_id)
        if old is not None:
            if (old.user, old.cluster, old.slots, old.resources, old.python) == (user, cluster, slots, pairs, version):
                old.host = host
                self._touch_worker(old, now)
                return events
            self._drop_worker(old, REVOKE_WORKER_CHANGED, events, touched, lost)
        worker = WorkerState(peer_id, user, cluster, host, slots, pairs, version, now)
        self._workers[peer_id] = worker
        self._worker_order[peer_id] = None
        self._cluster_workers.setdefault(cluster, {})[peer_id] = worker
        self._user_workers.setdefault(user, {})[peer_id] = worker
        self._cluster_gen[cluster] = self._next_seq()
        key = (cluster, version)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(key)
        pool.workers.add(worker)
        pool.recap_all()
        touched.add(key)
        self._finish(events, touched, lost)
        return events

    def heartbeat_worker(self, peer_id: str, now: float) -> list[Event]:
        """Keep a worker alive. Raises :class:`UnknownWorkerError` if it is not registered
        (it timed out, or the board restarted): the worker should register again."""
        now = self._clock(now)
        worker = self._workers.get(peer_id)
        if worker is None:
            raise UnknownWorkerError(f"worker {peer_id} is not registered (timed out or the board restarted)")
        self._touch_worker(worker, now)
        return []

    def unregister_worker(self, peer_id: str, now: float) -> list[Event]:
        """Remove a worker (it is shutting down): its leases are revoked, and demand that
        no remaining worker could hold is dropped. Unknown ``peer_id``: nothing happens."""
        self._clock(now)
        worker = self._workers.get(peer_id)
        if worker is None:
            return []
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        self._drop_worker(worker, REVOKE_WORKER_UNREGISTERED, events, touched, lost)
        self._finish(events, touched, lost)
        return events

    # ----------------------------------------------------------------- clients

    def request_leases(self, client_peer_id: str, user: str, cluster: str, count: int, *, num_cpus: int = 1,
                       resources: Mapping[str, float] | None = None, python: str = "3.11",
                       now: float) -> list[Event]:
        """Add ``count`` leases of one shape to the client's waiting demand in ``cluster``.

        Returns the grants made at once (possibly fewer than ``count``; the rest waits)
        and any Reclaims that make room for the client's fair share. If no live worker
        of the cluster could ever hold such a lease, returns a single
        :class:`Unsatisfiable` and records nothing. Raises :class:`SchedulerError` for
        invalid arguments or if ``client_peer_id`` is known under another user.
        """
        now = self._clock(now)
        _name(cluster, "cluster")
        _count(count, "count")
        shape = self._shape(num_cpus, resources, python)
        client = self._client_for(client_peer_id, user, now)
        reason = self._unsatisfiable(cluster, shape)
        if reason is not None:
            self._n_unsatisfiable += 1
            self._forget_client_if_idle(client)
            return [Unsatisfiable(client_peer_id, cluster, reason, shape, count)]
        pool = self._pools[(cluster, shape.python)]
        demand = self._demand_for(pool, client)
        demand.waiting[shape] = demand.waiting.get(shape, 0) + count
        cpus = count * shape.num_cpus
        demand.waiting_cpus += cpus
        pool.total += cpus
        pool.waiting[client_peer_id] = demand
        demand.recap()
        events: list[Event] = []
        self._schedule(pool, events)
        return events

    def cancel_requests(self, client_peer_id: str, cluster: str, now: float) -> list[Event]:
        """Drop all of the client's waiting demand in ``cluster`` (held leases stay).

        Returns the grants the freed share enables for others. Unknown client: nothing.
        """
        now = self._clock(now)
        client = self._clients.get(client_peer_id)
        if client is None:
            return []
        self._touch_client(client, now)
        touched: set[PoolKey] = set()
        for key, demand in list(client.demands.items()):
            if key[0] == cluster and demand.waiting_cpus:
                self._drop_waiting(demand)
                touched.add(key)
        self._forget_client_if_idle(client)
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
        state = self._leases.get(lease_id)
        if state is None:
            return []
        client = state.demand.client
        if client_peer_id is not None and client_peer_id != client.peer_id:
            raise SchedulerError(f"lease {lease_id} is not held by client {client_peer_id}")
        self._touch_client(client, now)
        pool = state.demand.pool
        events: list[Event] = []
        self._end_lease(state, None, events)
        self._schedule(pool, events)
        return events

    def heartbeat_client(self, client_peer_id: str, now: float) -> list[Event]:
        """Keep a client alive and renew all its leases to ``now + lease_ttl``.

        A client with no leases and no waiting demand is not tracked: nothing happens.
        """
        now = self._clock(now)
        client = self._clients.get(client_peer_id)
        if client is None:
            return []
        self._touch_client(client, now)
        expires = now + self.config.lease_ttl
        for state in client.leases.values():
            if state.lease.expires < expires:
                state.lease = replace(state.lease, expires=expires)
        return []

    def disconnect_client(self, client_peer_id: str, now: float) -> list[Event]:
        """The client is gone: revoke its leases ("client disconnected"), drop its demand.
        Unknown client: nothing happens."""
        self._clock(now)
        client = self._clients.get(client_peer_id)
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
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        limit = self.config.worker_timeout
        while self._worker_order:
            worker = self._workers[next(iter(self._worker_order))]
            if now - worker.last_seen <= limit:
                break
            self._drop_worker(worker, REVOKE_WORKER_LOST, events, touched, lost, expiry=True)
        limit = self.config.client_timeout
        while self._client_order:
            client = self._clients[next(iter(self._client_order))]
            if now - client.last_seen <= limit:
                break
            self._drop_client(client, REVOKE_CLIENT_LOST, events, touched, expiry=True)
        for client in list(self._clients.values()):
            while client.leases:
                state = next(iter(client.leases.values()))
                if state.lease.expires > now:
                    break
                touched.add(state.demand.pool.key)
                self._end_lease(state, REVOKE_LEASE_EXPIRED, events, expiry=True)
        touched.update(key for key, pool in self._pools.items() if pool.waiting)
        self._finish(events, touched, lost)
        return events

    # ---------------------------------------------------------------- queries

    def lease(self, lease_id: str) -> Lease | None:
        """The current record of a lease (with its renewed ``expires``), or None."""
        state = self._leases.get(lease_id)
        return state.lease if state is not None else None

    def client_leases(self, client_peer_id: str) -> tuple[Lease, ...]:
        """The client's leases, oldest first."""
        client = self._clients.get(client_peer_id)
        return tuple(s.lease for s in client.leases.values()) if client is not None else ()

    def status(self, cluster: str | None = None) -> SchedulerStatus:
        """A snapshot of workers, leases per user and waiting demand (of one cluster, or
        all). Costs a scan of everything: meant for ``p2prt status``, not the hot path."""
        workers = []
        for w in sorted(self._workers.values(), key=lambda w: (w.cluster, w.peer_id)):
            if cluster is not None and w.cluster != cluster:
                continue
            busy = {name: total - w.free_resources[name] for name, total in w.resources}
            workers.append(WorkerStatus(
                w.peer_id, w.user, w.cluster, w.host, w.python, w.slots, w.slots - w.free_cpus,
                FrozenResources(dict(w.resources)), FrozenResources({k: v for k, v in busy.items() if v > 1e-9}),
                len(w.leases), w.last_seen))
        per_user: dict[tuple[str, str], list[int]] = {}
        for state in self._leases.values():
            lease = state.lease
            if cluster is None or lease.cluster == cluster:
                entry = per_user.setdefault((lease.cluster, lease.client_user), [0, 0])
                entry[0] += 1
                entry[1] += lease.num_cpus
        leases = [UserLeases(c, u, n, cpus) for (c, u), (n, cpus) in sorted(per_user.items())]
        waiting = []
        for pool in self._pools.values():
            if cluster is None or pool.cluster == cluster:
                for demand in pool.waiting.values():
                    for shape, count in demand.waiting.items():
                        waiting.append(WaitingRequest(demand.client.peer_id, demand.client.user, pool.cluster,
                                                      count, shape))
        waiting.sort(key=lambda r: (r.cluster, r.client_peer_id, r.shape.python, r.shape.num_cpus, r.shape.pairs))
        return SchedulerStatus(tuple(workers), tuple(leases), tuple(waiting))

    def statistics(self) -> SchedulerStatistics:
        """Counters since creation and current sizes (``waiting`` counts leases)."""
        waiting = sum(sum(d.waiting.values()) for pool in self._pools.values() for d in pool.waiting.values())
        return SchedulerStatistics(
            grants=self._n_grants, returns=self._n_returns, revokes=self._n_revokes, reclaims=self._n_reclaims,
            expiries=self._n_expiries, unsatisfiable=self._n_unsatisfiable, workers=len(self._workers),
            clients=len(self._clients), leases=len(self._leases), waiting=waiting)

    # ------------------------------------------------------- internal: state

    def _clock(self, now: float) -> float:
        if isinstance(now, bool) or not isinstance(now, int | float) or math.isnan(now):
            raise SchedulerError(f"now must be a number of seconds, got {now!r}")
        if now > self._now:
            self._now = float(now)
        return self._now

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _shape(self, num_cpus: int, resources: Mapping[str, float] | None, python: str) -> LeaseShape:
        if not resources and type(num_cpus) is int and type(python) is str:
            cached = self._plain_shapes.get((num_cpus, python))
            if cached is None:
                cached = LeaseShape(num_cpus, NO_RESOURCES, python)
                if len(self._plain_shapes) < 1024:
                    self._plain_shapes[(num_cpus, python)] = cached
            return cached
        return LeaseShape(num_cpus, resources if resources is not None else NO_RESOURCES, python)

    def _touch_worker(self, worker: WorkerState, now: float) -> None:
        worker.last_seen = now
        self._worker_order.move_to_end(worker.peer_id)

    def _touch_client(self, client: ClientState, now: float) -> None:
        client.last_seen = now
        self._client_order.move_to_end(client.peer_id)

    def _client_for(self, peer_id: str, user: str, now: float) -> ClientState:
        _name(peer_id, "client_peer_id")
        _name(user, "user")
        client = self._clients.get(peer_id)
        if client is None:
            client = self._clients[peer_id] = ClientState(peer_id, user, now)
            self._client_order[peer_id] = None
            self._user_clients.setdefault(user, {})[peer_id] = None
        elif client.user != user:
            raise SchedulerError(f"client {peer_id} belongs to user {client.user}, not {user}")
        else:
            self._touch_client(client, now)
        return client

    def _forget_client_if_idle(self, client: ClientState) -> None:
        if client.leases or client.demands or self._clients.get(client.peer_id) is not client:
            return
        del self._clients[client.peer_id]
        del self._client_order[client.peer_id]
        mine = self._user_clients[client.user]
        del mine[client.peer_id]
        if not mine:
            del self._user_clients[client.user]

    def _demand_for(self, pool: Pool, client: ClientState) -> Demand:
        demand = client.demands.get(pool.key)
        if demand is None:
            user = pool.users.get(client.user)
            if user is None:
                user = pool.users[client.user] = UserDemand(client.user, self._next_seq())
            demand = Demand(client, pool, user, self._next_seq())
            pool.demands[client.peer_id] = demand
            user.clients[client.peer_id] = demand
            client.demands[pool.key] = demand
        return demand

    def _forget_demand_if_empty(self, demand: Demand) -> None:
        if demand.held or demand.waiting_cpus:
            return
        pool, client = demand.pool, demand.client
        if pool.demands.get(client.peer_id) is not demand:
            return
        del pool.demands[client.peer_id]
        pool.waiting.pop(client.peer_id, None)
        user = demand.user
        del user.clients[client.peer_id]
        if not user.clients:
            del pool.users[user.user]
        del client.demands[pool.key]
        self._forget_client_if_idle(client)

    def _drop_waiting(self, demand: Demand, shape: LeaseShape | None = None) -> int:
        """Drop waiting leases (of one shape, or all); returns how many were dropped."""
        shapes = [shape] if shape is not None else list(demand.waiting)
        dropped = 0
        for s in shapes:
            count = demand.waiting.pop(s, 0)
            dropped += count
            demand.waiting_cpus -= count * s.num_cpus
            demand.pool.total -= count * s.num_cpus
        if not demand.waiting_cpus:
            demand.pool.waiting.pop(demand.client.peer_id, None)
        demand.recap()
        self._forget_demand_if_empty(demand)
        return dropped

    def _end_lease(self, state: LeaseState, reason: str | None, events: list[Event], expiry: bool = False) -> None:
        """Remove a lease: returned (``reason`` None) or revoked."""
        lease, shape, demand = state.lease, state.shape, state.demand
        del self._leases[lease.lease_id]
        del demand.client.leases[lease.lease_id]
        del state.worker.leases[lease.lease_id]
        pool = demand.pool
        pool.workers.release(state.worker, shape)
        n = shape.num_cpus
        demand.held -= n
        left = demand.held_by_shape[shape] - n
        if left:
            demand.held_by_shape[shape] = left
        else:
            del demand.held_by_shape[shape]
        if state.reclaimed:
            demand.reclaiming -= n
        demand.user.held -= n
        pool.total -= n
        if reason is None:
            self._n_returns += 1
        else:
            self._n_revokes += 1
            self._n_expiries += int(expiry)
            events.append(Revoke(lease.lease_id, lease.client_peer_id, lease.worker_peer_id, reason))
        demand.recap()
        self._forget_demand_if_empty(demand)

    def _drop_worker(self, worker: WorkerState, reason: str, events: list[Event], touched: set[PoolKey],
                     lost: set[str], expiry: bool = False) -> None:
        for lease_id in list(worker.leases):
            self._end_lease(self._leases[lease_id], reason, events, expiry)
        key = (worker.cluster, worker.python)
        pool = self._pools[key]
        pool.workers.remove(worker)
        pool.recap_all()
        del self._workers[worker.peer_id]
        del self._worker_order[worker.peer_id]
        for index, name in ((self._cluster_workers, worker.cluster), (self._user_workers, worker.user)):
            group = index[name]
            del group[worker.peer_id]
            if not group:
                del index[name]
        self._cluster_gen[worker.cluster] = self._next_seq()
        touched.add(key)
        lost.add(worker.cluster)

    def _drop_client(self, client: ClientState, reason: str, events: list[Event], touched: set[PoolKey],
                     expiry: bool) -> None:
        for state in list(client.leases.values()):
            touched.add(state.demand.pool.key)
            self._end_lease(state, reason, events, expiry)
        for key, demand in list(client.demands.items()):
            touched.add(key)
            self._drop_waiting(demand)
        self._forget_client_if_idle(client)

    def _remove(self, user: str, cluster: str | None) -> list[Event]:
        events: list[Event] = []
        touched: set[PoolKey] = set()
        lost: set[str] = set()
        reason = REVOKE_MEMBER_REMOVED if cluster is not None else REVOKE_USER_REMOVED
        for peer_id in list(self._user_clients.get(user, ())):
            client = self._clients[peer_id]
            for state in list(client.leases.values()):
                if cluster is None or state.lease.cluster == cluster:
                    touched.add(state.demand.pool.key)
                    self._end_lease(state, reason, events)
            for key, demand in list(client.demands.items()):
                if cluster is None or key[0] == cluster:
                    touched.add(key)
                    self._drop_waiting(demand)
            self._forget_client_if_idle(client)
        for worker in list(self._user_workers.get(user, {}).values()):
            if cluster is None or worker.cluster == cluster:
                self._drop_worker(worker, REVOKE_WORKER_REMOVED, events, touched, lost)
        self._finish(events, touched, lost)
        return events

    def _unsatisfiable(self, cluster: str, shape: LeaseShape) -> str | None:
        """Why no live worker of ``cluster`` could ever hold ``shape`` (cached per cluster
        generation), or None."""
        gen = self._cluster_gen.get(cluster, 0)
        hit = self._feasible.get((cluster, shape))
        if hit is not None and hit[0] == gen:
            return hit[1]
        reason = unsatisfiable_reason(cluster, shape, list(self._cluster_workers.get(cluster, {}).values()))
        if len(self._feasible) >= 4096:
            self._feasible.clear()
        self._feasible[(cluster, shape)] = (gen, reason)
        return reason

    def _finish(self, events: list[Event], touched: Iterable[PoolKey], lost: set[str]) -> None:
        """After workers left ``lost`` clusters, drop demand nothing can hold; then grant
        and rebalance the ``touched`` pools and forget empty ones."""
        keys = set(touched)
        for cluster in sorted(lost):
            for key in [k for k in self._pools if k[0] == cluster]:
                keys.add(key)
                for demand in list(self._pools[key].waiting.values()):
                    for shape in list(demand.waiting):
                        reason = self._unsatisfiable(cluster, shape)
                        if reason is not None:
                            dropped = self._drop_waiting(demand, shape)
                            self._n_unsatisfiable += 1
                            events.append(Unsatisfiable(demand.client.peer_id, cluster, reason, shape, dropped))
        for key in sorted(keys):
            pool = self._pools.get(key)
            if pool is None:
                continue
            self._schedule(pool, events)
            if not pool.workers.workers and not pool.demands:
                del self._pools[key]

    # -------------------------------------------------- internal: scheduling

    def _schedule(self, pool: Pool, events: list[Event]) -> None:
        """Grant waiting demand within fair share; ask over-share clients for leases back."""
        if not pool.waiting:
            return
        failed: set[LeaseShape] = set()  # shapes that found no room in this pass
        if pool.total <= pool.workers.capacity:  # uncontended: everyone's share is its demand
            for demand in list(pool.waiting.values()):
                while demand.waiting_cpus and self._grant_one(pool, demand, failed, events):
                    pass
            return
        user_share, client_share = pool_shares(pool)
        heap: list[tuple[float, int, str]] = []
        for peer_id, demand in pool.waiting.items():
            share = client_share[peer_id]
            if demand.held < share and demand.user.held < user_share[demand.user.user]:
                heap.append((demand.held / share, demand.seq, peer_id))
        heapq.heapify(heap)
        while heap:
            _, seq, peer_id = heapq.heappop(heap)
            demand = pool.demands[peer_id]
            share = client_share[peer_id]
            if demand.user.held >= user_share[demand.user.user]:  # another client of the user took it
                continue
            if not self._grant_one(pool, demand, failed, events):
                continue
            if demand.waiting_cpus and demand.held < share and demand.user.held < user_share[demand.user.user]:
                heapq.heappush(heap, (demand.held / share, seq, peer_id))
        starved = [shape for peer_id, demand in pool.waiting.items() if demand.held < client_share[peer_id]
                   for shape in demand.waiting]
        if not starved:
            return
        for peer_id, demand in pool.demands.items():
            share = client_share[peer_id]
            if demand.held - demand.reclaiming > share:
                self._reclaim(demand, share, starved, events)

    def _grant_one(self, pool: Pool, demand: Demand, failed: set[LeaseShape], events: list[Event]) -> bool:
        """Grant one waiting lease of the client's first shape that fits somewhere."""
        for shape in demand.waiting:
            if shape in failed:
                continue
            worker = pool.workers.find(shape)
            if worker is None:
                failed.add(shape)
                continue
            self._grant(pool, demand, shape, worker, events)
            return True
        return False

    def _grant(self, pool: Pool, demand: Demand, shape: LeaseShape, worker: WorkerState,
               events: list[Event]) -> None:
        lease_id = self._new_lease_id()
        if lease_id in self._leases:
            raise SchedulerError(f"lease id factory returned a duplicate id {lease_id!r}")
        client = demand.client
        now = self._now
        lease = Lease(lease_id, pool.cluster, client.peer_id, client.user, worker.peer_id, shape.num_cpus,
                      shape.resources, shape.python, now, now + self.config.lease_ttl)
        pool.workers.allocate(worker, shape)
        state = LeaseState(lease, shape, worker, demand, self._next_seq())
        self._leases[lease_id] = state
        client.leases[lease_id] = state
        worker.leases[lease_id] = None
        n = shape.num_cpus
        left = demand.waiting[shape] - 1
        if left:
            demand.waiting[shape] = left
        else:
            del demand.waiting[shape]
        demand.waiting_cpus -= n
        demand.held += n
        demand.held_by_shape[shape] = demand.held_by_shape.get(shape, 0) + n
        demand.user.held += n
        if not demand.waiting_cpus:
            del pool.waiting[client.peer_id]
        self._n_grants += 1
        events.append(Grant(lease))

    def _reclaim(self, demand: Demand, share: int, starved: list[LeaseShape], events: list[Event]) -> None:
        """Ask for the client's excess above ``share`` back, newest leases first,
        preferring workers that the ``starved`` shapes could use."""
        candidates = [s for s in reversed(demand.client.leases.values()) if s.demand is demand and not s.reclaimed]
        if any(shape.pairs or shape.num_cpus > 1 for shape in starved):
            def useless(state: LeaseState) -> bool:
                w = state.worker
                return not any(s.names <= w.signature and s.num_cpus <= w.slots for s in starved)
            candidates.sort(key=useless)  # stable: newest first within each group
        excess = demand.held - demand.reclaiming - share
        for state in candidates:
            n = state.shape.num_cpus
            if n > excess:
                continue
            state.reclaimed = True
            demand.reclaiming += n
            excess -= n
            lease = state.lease
            self._n_reclaims += 1
            events.append(Reclaim(lease.lease_id, lease.client_peer_id, lease.worker_peer_id))
            if excess <= 0:
                break

    def _audit(self) -> None:
        """Recompute every incremental counter from scratch and compare (tests, debugging).

        Raises AssertionError on the first mismatch. Costs a scan of everything.
        """
        for lease_id, state in self._leases.items():
            assert state.lease.lease_id == lease_id
            assert state.demand.client.leases.get(lease_id) is state, lease_id
            assert lease_id in state.worker.leases and self._workers.get(state.worker.peer_id) is state.worker
        for worker in self._workers.values():
            states = [self._leases[lease_id] for lease_id in worker.leases]
            assert worker.free_cpus == worker.slots - sum(s.shape.num_cpus for s in states), worker.peer_id
            for name, total in worker.resources:
                used = sum(dict(s.shape.pairs).get(name, 0.0) for s in states)
                assert abs(worker.free_resources[name] - (total - used)) < 1e-6, (worker.peer_id, name)
            assert self._pools[(worker.cluster, worker.python)].workers.workers.get(worker.peer_id) is worker
        for order, peers in ((self._worker_order, self._workers), (self._client_order, self._clients)):
            assert order.keys() == peers.keys()
            seen = [peers[p].last_seen for p in order]
            assert seen == sorted(seen), "heartbeat order"
        for client in self._clients.values():
            assert client.leases or client.demands, client.peer_id
            for key, demand in client.demands.items():
                assert self._pools[key].demands.get(client.peer_id) is demand
        for key, pool in self._pools.items():
            assert pool.workers.capacity == sum(w.slots for w in pool.workers.workers.values()), key
            total = 0
            for peer_id, demand in pool.demands.items():
                states = [s for s in demand.client.leases.values() if s.demand is demand]
                by_shape: dict[LeaseShape, int] = {}
                for s in states:
                    by_shape[s.shape] = by_shape.get(s.shape, 0) + s.shape.num_cpus
                assert demand.held_by_shape == by_shape, peer_id
                assert demand.held == sum(by_shape.values())
                assert demand.reclaiming == sum(s.shape.num_cpus for s in states if s.reclaimed)
                assert demand.waiting_cpus == sum(n * s.num_cpus for s, n in demand.waiting.items())
                assert all(n > 0 for n in demand.waiting.values())
                assert (peer_id in pool.waiting) == bool(demand.waiting_cpus)
                assert demand.held or demand.waiting_cpus
                capped = demand.capped
                demand.recap()
                assert demand.capped == capped, (peer_id, capped, demand.capped)
                assert pool.users[demand.user.user].clients.get(peer_id) is demand
                total += demand.held + demand.waiting_cpus
            assert pool.total == total, key
            for user in pool.users.values():
                assert user.clients
                assert user.held == sum(d.held for d in user.clients.values())
                assert user.capped == sum(d.capped for d in user.clients.values())
