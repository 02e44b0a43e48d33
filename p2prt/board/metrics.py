"""What the board learns of tasks: counts and recent failures, from workers' heartbeats.

The board never sees tasks. Workers report, with each heartbeat, how many tasks they
finished and how many failed since they started, and the few failures since their last
heartbeat (time, the task's name, the kind of failure — ``error``, ``crashed``,
``timeout`` — and the worker's own short message, never arguments, values or the task's
exception). The board keeps, in bounded memory, tasks finished per 5-second bucket for the
last hour and the last 50 failures; the dashboard draws them.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BoardMetrics", "BUCKET", "BUCKETS", "MAX_FAILURES"]

BUCKET = 5.0
"""Seconds per sample of tasks finished."""
BUCKETS = 720
"""Samples kept: an hour."""
MAX_FAILURES = 50
MAX_REPORTED = 20
"""Failures one heartbeat may carry (more are counted, not listed)."""


@dataclass
class _Counters:
    done: int = 0
    failed: int = 0


@dataclass
class BoardMetrics:
    """Tasks finished per bucket, and recent failures, over all workers."""

    clock: Any = time.time
    samples: collections.deque[list[float]] = field(default_factory=lambda: collections.deque(maxlen=BUCKETS))
    failures: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=MAX_FAILURES))
    _last: dict[str, _Counters] = field(default_factory=dict)

    def observe(self, peer_id: str, who: str, cluster: str, done: int, failed: int, failures: list[Any] | None) -> None:
        """A worker's heartbeat: its cumulative counters and its new failures."""
        last = self._last.setdefault(peer_id, _Counters())
        # Counters restart with a worker process (a new peer id), never go back within
        # one; anything else is a confused or hostile worker: count nothing.
        new_done = done - last.done if done >= last.done else 0
        new_failed = failed - last.failed if failed >= last.failed else 0
        last.done, last.failed = max(done, 0), max(failed, 0)
        now = self.clock()
        start = now - now % BUCKET
        if not self.samples or self.samples[-1][0] < start:
            self.samples.append([start, 0.0, 0.0])
        self.samples[-1][1] += max(0, min(new_done, 10**9))
        self.samples[-1][2] += max(0, min(new_failed, 10**9))
        for item in (failures or [])[:MAX_REPORTED]:
            if not (isinstance(item, list) and len(item) == 4):
                continue
            at, name, kind, message = item
            if not isinstance(at, (int, float)) or not all(isinstance(x, str) for x in (name, kind, message)):
                continue
            self.failures.append(
                {"time": float(at), "worker": who, "cluster": cluster, "task": name[:80], "kind": kind[:20],
                 "message": message[:200]}
            )

    def forget(self, peer_id: str) -> None:
        self._last.pop(peer_id, None)

    def rates(self) -> list[dict[str, float]]:
        """``{"time", "tasks_per_s", "failed_per_s"}`` per bucket, oldest first."""
        return [{"time": t, "tasks_per_s": d / BUCKET, "failed_per_s": f / BUCKET} for t, d, f in self.samples]

    def recent_failures(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self.failures))
