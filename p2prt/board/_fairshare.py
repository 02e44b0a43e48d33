"""Max-min fair shares by water-filling, in whole CPU slots.

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

from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

__all__ = ["water_fill", "Rank"]

K = TypeVar("K", bound=Hashable)
Rank = tuple[int, int, str]


def water_fill(capacity: int, demands: Mapping[K, int], rank: Callable[[K], Rank]) -> dict[K, int]:
    """Split ``capacity`` whole units among ``demands`` by max-min fairness.

    ``rank(key)`` orders the receivers of leftover units (smallest first). Negative
    demands count as zero.
    """
    if capacity <= 0:
        return {key: 0 for key in demands}
    if sum(max(d, 0) for d in demands.values()) <= capacity:
        return {key: max(d, 0) for key, d in demands.items()}
    order = sorted(demands, key=lambda key: demands[key])  # stable: ties keep insertion order
    shares: dict[K, int] = {}
    remaining = capacity
    for i, key in enumerate(order):
        demand = max(demands[key], 0)
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
        for other in sorted(rest, key=rank)[: remaining - level * left]:
            shares[other] += 1
        break
    return {key: shares[key] for key in demands}
