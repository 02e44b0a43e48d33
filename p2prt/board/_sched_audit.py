"""A from-scratch consistency check of the scheduler's incremental bookkeeping.

Used by the tests after every random step, and handy when debugging; never on the hot
path (it scans everything).
"""

from __future__ import annotations

from ._sched_state import Book
from ._sched_types import LeaseShape

__all__ = ["audit"]


def audit(book: Book) -> None:
    """Recompute every index and counter of ``book`` and compare.

    Raises AssertionError on the first mismatch.
    """
    for lease_id, state in book.leases.items():
        assert state.lease.lease_id == lease_id
        assert state.demand.client.leases.get(lease_id) is state, lease_id
        assert lease_id in state.worker.leases and book.workers.get(state.worker.peer_id) is state.worker
    for worker in book.workers.values():
        states = [book.leases[lease_id] for lease_id in worker.leases]
        assert worker.free_cpus == worker.slots - sum(s.shape.num_cpus for s in states), worker.peer_id
        for name, total in worker.resources:
            used = sum(dict(s.shape.pairs).get(name, 0.0) for s in states)
            assert abs(worker.free_resources[name] - (total - used)) < 1e-6, (worker.peer_id, name)
        assert book.pools[(worker.cluster, worker.python)].workers.workers.get(worker.peer_id) is worker
        assert book.cluster_workers[worker.cluster][worker.peer_id] is worker
        assert book.user_workers[worker.user][worker.peer_id] is worker
    assert book.worker_order.keys() == book.workers.keys()
    seen = [book.workers[p].last_seen for p in book.worker_order]
    assert seen == sorted(seen), "worker heartbeat order"
    assert book.client_order.keys() == book.clients.keys()
    seen = [book.clients[p].last_seen for p in book.client_order]
    assert seen == sorted(seen), "client heartbeat order"
    for client in book.clients.values():
        assert client.leases or client.demands, client.peer_id
        assert client.peer_id in book.user_clients[client.user]
        for key, demand in client.demands.items():
            assert book.pools[key].demands.get(client.peer_id) is demand
    for key, pool in book.pools.items():
        assert pool.workers.workers or pool.demands, key
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
