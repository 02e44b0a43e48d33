"""Fair share: who gets the free slots of a pool, and who is asked to hand leases back.

- :func:`water_fill` — max-min fair shares by water-filling, in whole CPU slots;
- :func:`pool_shares` — the two-level split of a pool's capacity: over users, then
  each user's share over its clients;
- :func:`schedule` — grants waiting demand within those shares and emits Reclaims
  (the rules are in :mod:`p2prt.board.scheduler`'s docstring).

Water-filling pours ``capacity`` evenly over the demands: a demand below the water level
is filled exactly and drops out, and the level rises for the rest. In whole units the
last level may not divide evenly; the leftover units go one each to the first demands
in ``rank`` order (the scheduler ranks by "holds more now", then "came first", so that a
rounding unit stays with whoever already has it and nothing is reclaimed just to move it).

Properties (tested): the shares sum to ``min(capacity, sum(demands))``; no share exceeds
its demand; a share is ``floor`` or ``ceil`` of the real-valued max-min share. The cost is
``O(n log n)`` in the number of demands, independent of the number of workers.

>>> water_fill(4, {"alice": 10, "bob": 10}, rank=lambda k: (0, 0, k))
{'alice': 2, 'bob': 2}
>>> water_fill(10, {"a": 1, "b": 3, "c": 20}, rank=lambda k: (0, 0, k))
{'a': 1, 'b': 3, 'c': 6}
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

from ._sched_state import Book, Demand, LeaseState, Pool
from ._sched_types import Event, LeaseShape, Reclaim

__all__ = ["water_fill", "pool_shares", "schedule", "Rank"]

K = TypeVar("K", bound=Hashable)
Rank = tuple[int, int, str]


def water_fill(capacity: int, demands: Mapping[K, int], rank: Callable[[K], Rank]) -> dict[K, int]:
    """Split ``capacity`` whole units among ``demands`` by max-min fairness.

    ``rank(key)`` orders the receivers of leftover units (smallest first). Demands must
    be ≥ 0.
    """
    if capacity <= 0:
        return dict.fromkeys(demands, 0)
    if sum(demands.values()) <= capacity:
        return dict(demands)
    order = sorted(demands, key=demands.__getitem__)  # stable: ties keep insertion order
    shares: dict[K, int] = {}
    remaining = capacity
    for i, key in enumerate(order):
        demand = demands[key]
        left = len(order) - i
        level = remaining // left
        if demand <= level:
            shares[key] = demand
            remaining -= demand
            continue
        # Every demand from here on is above the level (the order is ascending).
        rest = order[i:]
        for other in rest:
            shares[other] = level
        extra = remaining - level * left
        if extra:
            for other in sorted(rest, key=rank)[:extra]:
                shares[other] += 1
        break
    return shares


def pool_shares(pool: Pool) -> tuple[dict[str, int], dict[str, int]]:
    """Fair shares in one pool: ``(user → CPUs, client peer id → CPUs)``.

    The pool's capacity is water-filled over users' capped demands; each user's share is
    water-filled over its clients' the same way. Leftover units go to whoever holds more
    now, then to whoever came first. Costs ``O(n log n)`` in users and clients with demand.
    """
    users = pool.users
    user_share = water_fill(
        pool.workers.capacity,
        {name: user.capped for name, user in users.items()},
        rank=lambda name: (-users[name].held, users[name].seq, name),
    )
    demands = pool.demands
    client_share: dict[str, int] = {}
    for name, user in users.items():
        if len(user.clients) == 1:
            client_share[next(iter(user.clients))] = user_share[name]
            continue
        client_share.update(
            water_fill(
                user_share[name],
                {c: d.capped for c, d in user.clients.items()},
                rank=lambda c: (-demands[c].held, demands[c].seq, c),
            )
        )
    return user_share, client_share


def schedule(book: Book, pool: Pool, events: list[Event]) -> None:
    """Grant the pool's waiting demand within fair share; ask over-share clients for
    leases back when someone with waiting demand is still below its share."""
    if not pool.waiting:
        return
    failed: set[LeaseShape] = set()  # shapes that found no room in this pass (room only shrinks)
    if pool.total <= pool.workers.capacity:  # uncontended: everyone's share is its whole demand
        for demand in list(pool.waiting.values()):
            while demand.waiting_cpus and _grant_one(book, demand, failed, events):
                pass
        return
    user_share, client_share = pool_shares(pool)
    # Serve clients furthest below their share first, one lease at a time.
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
        if not _grant_one(book, demand, failed, events):
            continue
        if demand.waiting_cpus and demand.held < share and demand.user.held < user_share[demand.user.user]:
            heapq.heappush(heap, (demand.held / share, seq, peer_id))
    starved = [
        shape
        for peer_id, demand in pool.waiting.items()
        if demand.held < client_share[peer_id]
        for shape in demand.waiting
    ]
    if not starved:
        return
    for peer_id, demand in pool.demands.items():
        share = client_share[peer_id]
        if demand.held - demand.reclaiming > share:
            _reclaim(book, demand, share, starved, events)


def _grant_one(book: Book, demand: Demand, failed: set[LeaseShape], events: list[Event]) -> bool:
    """Grant one waiting lease of the client's first shape that fits somewhere."""
    for shape in demand.waiting:
        if shape in failed:
            continue
        worker = demand.pool.workers.find(shape)
        if worker is None:
            failed.add(shape)
            continue
        book.grant(demand, shape, worker, events)
        return True
    return False


def _reclaim(book: Book, demand: Demand, share: int, starved: list[LeaseShape], events: list[Event]) -> None:
    """Ask for the client's excess above ``share`` back: newest leases first, preferring
    workers the ``starved`` shapes could use; never a lease whose owner would then drop
    below its share, never the same lease twice."""
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
        book.reclaims += 1
        events.append(Reclaim(lease.lease_id, lease.client_peer_id, lease.worker_peer_id))
        if excess <= 0:
            break
