"""The scheduler's internal, mutable bookkeeping: records and the :class:`Book` of them.

:class:`Book` owns every record and the primitive changes (add a worker, grant a lease,
end a lease, add or drop waiting demand) that keep all indexes and counters consistent;
policy lives elsewhere (:mod:`._fairshare` decides who gets what, :mod:`.scheduler`
decides when). One :class:`Pool` per ``(cluster, python)`` holds its workers (:class:`~._placement.WorkerPool`)
and its demand: one :class:`Demand` per client with leases or waiting requests there,
grouped by user in :class:`UserDemand`. Counters are kept incrementally so that nothing
on the hot path sums over workers or leases:

- ``Demand.held`` / ``UserDemand.held``: CPUs of live leases;
- ``Demand.waiting`` / ``waiting_cpus``: leases (CPUs) not granted yet, per shape;
- ``Demand.capped`` / ``UserDemand.capped``: held + waiting CPUs, each shape capped by
  what the pool could ever give it (:meth:`~._placement.WorkerPool.cap`) — the demand
  that fair share sees. A grant moves a lease from waiting to held within one shape and
  leaves it unchanged; everything else calls :meth:`Demand.recap`.
- ``Pool.total``: held + waiting CPUs of all clients (uncapped), for the cheap
  "is the pool contended at all" test.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from collections.abc import Callable

from ._placement import WorkerPool, WorkerState
from ._sched_types import Event, Grant, Lease, LeaseShape, Revoke, SchedulerConfig, SchedulerError

__all__ = ["PoolKey", "LeaseIds", "Pool", "UserDemand", "Demand", "ClientState", "LeaseState", "Book"]

PoolKey = tuple[str, str]  # (cluster, python)


class LeaseIds:
    """Default lease ids: a random prefix per scheduler and a counter, e.g. ``"3f9a…-17"``.

    The prefix keeps ids of a restarted board from colliding with tickets still held.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6)
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}-{self._next}"


class Pool:
    """Workers and demand of one (cluster, python)."""

    __slots__ = ("cluster", "demands", "key", "python", "total", "users", "waiting", "workers")

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.cluster, self.python = key
        self.workers = WorkerPool()
        self.demands: dict[str, Demand] = {}  # client peer id → demand (held or waiting > 0)
        self.users: dict[str, UserDemand] = {}
        self.waiting: dict[str, Demand] = {}  # clients with waiting demand, in arrival order
        self.total = 0  # CPUs held + waiting, all clients

    def recap_all(self) -> None:
        """Recompute every capped demand (after the pool's workers changed)."""
        for demand in self.demands.values():
            demand.recap()


class UserDemand:
    """One user's demand in one pool: the sum over its clients."""

    __slots__ = ("capped", "clients", "held", "seq", "user")

    def __init__(self, user: str, seq: int) -> None:
        self.user = user
        self.seq = seq  # arrival order, for tie-breaks
        self.held = 0
        self.capped = 0
        self.clients: dict[str, Demand] = {}


class Demand:
    """One client's demand in one pool."""

    __slots__ = (
        "capped",
        "client",
        "held",
        "held_by_shape",
        "pool",
        "reclaiming",
        "seq",
        "user",
        "waiting",
        "waiting_cpus",
    )

    def __init__(self, client: ClientState, pool: Pool, user: UserDemand, seq: int) -> None:
        self.client = client
        self.pool = pool
        self.user = user
        self.seq = seq
        self.held = 0  # CPUs
        self.reclaiming = 0  # CPUs of held leases with a Reclaim outstanding
        self.waiting: dict[LeaseShape, int] = {}  # leases
        self.waiting_cpus = 0
        self.held_by_shape: dict[LeaseShape, int] = {}  # CPUs
        self.capped = 0

    def recap(self) -> None:
        """Recompute ``capped`` (and the user's sum) after held, waiting or capacity changed."""
        cap = self.pool.workers.cap
        held, waiting = self.held_by_shape, self.waiting
        total = 0
        for shape, count in waiting.items():
            want = count * shape.num_cpus + held.get(shape, 0)
            limit = cap(shape)
            total += want if want < limit else limit
        for shape, cpus in held.items():
            if shape not in waiting:
                total += cpus  # what is held always fits under the cap
        self.user.capped += total - self.capped
        self.capped = total


class ClientState:
    """A client peer with leases or waiting demand."""

    __slots__ = ("demands", "last_seen", "leases", "peer_id", "user")

    def __init__(self, peer_id: str, user: str, now: float) -> None:
        self.peer_id = peer_id
        self.user = user
        self.last_seen = now
        self.leases: dict[str, LeaseState] = {}  # grant order = expiry order
        self.demands: dict[PoolKey, Demand] = {}


class LeaseState:
    """A live lease: its current public record and where it sits."""

    __slots__ = ("demand", "lease", "reclaimed", "seq", "shape", "worker")

    def __init__(self, lease: Lease, shape: LeaseShape, worker: WorkerState, demand: Demand, seq: int) -> None:
        self.lease = lease
        self.shape = shape
        self.worker = worker
        self.demand = demand
        self.seq = seq
        self.reclaimed = False  # a Reclaim was sent


class Book:
    """All scheduling state, and the primitive changes that keep it consistent."""

    def __init__(self, config: SchedulerConfig, new_lease_id: Callable[[], str]) -> None:
        self.config = config
        self.new_lease_id = new_lease_id
        self.now = -math.inf  # the latest time seen
        self.seq = 0
        self.workers: dict[str, WorkerState] = {}
        self.worker_order: OrderedDict[str, None] = OrderedDict()  # least recently heard first
        self.cluster_workers: dict[str, dict[str, WorkerState]] = {}
        self.user_workers: dict[str, dict[str, WorkerState]] = {}
        self.clients: dict[str, ClientState] = {}
        self.client_order: OrderedDict[str, None] = OrderedDict()  # least recently heard first
        self.user_clients: dict[str, dict[str, None]] = {}
        self.leases: dict[str, LeaseState] = {}
        self.pools: dict[PoolKey, Pool] = {}
        self.grants = self.returns = self.revokes = self.reclaims = self.expiries = self.unsatisfiable = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- workers

    def add_worker(self, worker: WorkerState) -> Pool:
        """Index a new worker and add its capacity to its pool (made if needed)."""
        self.workers[worker.peer_id] = worker
        self.worker_order[worker.peer_id] = None
        self.cluster_workers.setdefault(worker.cluster, {})[worker.peer_id] = worker
        self.user_workers.setdefault(worker.user, {})[worker.peer_id] = worker
        key = (worker.cluster, worker.python)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(key)
        pool.workers.add(worker)
        pool.recap_all()
        return pool

    def remove_worker(self, worker: WorkerState) -> Pool:
        """Unindex a worker whose leases have ended; returns its pool."""
        assert not worker.leases
        pool = self.pools[(worker.cluster, worker.python)]
        pool.workers.remove(worker)
        pool.recap_all()
        del self.workers[worker.peer_id]
        del self.worker_order[worker.peer_id]
        for index, name in ((self.cluster_workers, worker.cluster), (self.user_workers, worker.user)):
            group = index[name]
            del group[worker.peer_id]
            if not group:
                del index[name]
        return pool

    def touch_worker(self, worker: WorkerState, now: float) -> None:
        worker.last_seen = now
        self.worker_order.move_to_end(worker.peer_id)

    # -- clients and demand

    def client_for(self, peer_id: str, user: str, now: float) -> ClientState:
        """The client's record (made if new, touched if known). Raises
        :class:`SchedulerError` if the peer id is known under another user."""
        client = self.clients.get(peer_id)
        if client is None:
            client = self.clients[peer_id] = ClientState(peer_id, user, now)
            self.client_order[peer_id] = None
            self.user_clients.setdefault(user, {})[peer_id] = None
        elif client.user != user:
            raise SchedulerError(f"client {peer_id} belongs to user {client.user}, not {user}")
        else:
            self.touch_client(client, now)
        return client

    def touch_client(self, client: ClientState, now: float) -> None:
        client.last_seen = now
        self.client_order.move_to_end(client.peer_id)

    def forget_client_if_idle(self, client: ClientState) -> None:
        """Drop the record of a client with no leases and no demand."""
        if client.leases or client.demands or self.clients.get(client.peer_id) is not client:
            return
        del self.clients[client.peer_id]
        del self.client_order[client.peer_id]
        mine = self.user_clients[client.user]
        del mine[client.peer_id]
        if not mine:
            del self.user_clients[client.user]

    def demand_for(self, pool: Pool, client: ClientState) -> Demand:
        demand = client.demands.get(pool.key)
        if demand is None:
            user = pool.users.get(client.user)
            if user is None:
                user = pool.users[client.user] = UserDemand(client.user, self.next_seq())
            demand = Demand(client, pool, user, self.next_seq())
            pool.demands[client.peer_id] = demand
            user.clients[client.peer_id] = demand
            client.demands[pool.key] = demand
        return demand

    def forget_demand_if_empty(self, demand: Demand) -> None:
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
        self.forget_client_if_idle(client)

    def add_waiting(self, demand: Demand, shape: LeaseShape, count: int) -> None:
        demand.waiting[shape] = demand.waiting.get(shape, 0) + count
        cpus = count * shape.num_cpus
        demand.waiting_cpus += cpus
        demand.pool.total += cpus
        demand.pool.waiting[demand.client.peer_id] = demand
        demand.recap()

    def drop_waiting(self, demand: Demand, shape: LeaseShape | None = None) -> int:
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
        self.forget_demand_if_empty(demand)
        return dropped

    # -- leases

    def grant(self, demand: Demand, shape: LeaseShape, worker: WorkerState, events: list[Event]) -> None:
        """Turn one waiting lease of ``shape`` into a lease on ``worker`` (which has room)."""
        lease_id = self.new_lease_id()
        if lease_id in self.leases:
            raise SchedulerError(f"lease id factory returned a duplicate id {lease_id!r}")
        client, pool = demand.client, demand.pool
        lease = Lease(
            lease_id,
            pool.cluster,
            client.peer_id,
            client.user,
            worker.peer_id,
            shape.num_cpus,
            shape.resources,
            shape.python,
            self.now,
            self.now + self.config.lease_ttl,
        )
        pool.workers.allocate(worker, shape)
        state = LeaseState(lease, shape, worker, demand, self.next_seq())
        self.leases[lease_id] = state
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
        # capped demand is unchanged: the lease moved from waiting to held within its shape
        self.grants += 1
        events.append(Grant(lease))

    def end_lease(self, state: LeaseState, reason: str | None, events: list[Event], expiry: bool = False) -> None:
        """Remove a lease: returned (``reason`` None) or revoked (a :class:`Revoke` event)."""
        lease, shape, demand = state.lease, state.shape, state.demand
        del self.leases[lease.lease_id]
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
            self.returns += 1
        else:
            self.revokes += 1
            self.expiries += int(expiry)
            events.append(Revoke(lease.lease_id, lease.client_peer_id, lease.worker_peer_id, reason))
        demand.recap()
        self.forget_demand_if_empty(demand)
