"""Scheduler status as plain data for ``p2prt status`` (CBOR on the wire, JSON for users)."""

from __future__ import annotations

from typing import Any

from .scheduler import SchedulerStatus

__all__ = ["status_to_wire"]


def status_to_wire(status: SchedulerStatus, clusters: set[str]) -> dict[str, Any]:
    """Only what concerns ``clusters`` (the ones the asking user belongs to)."""
    return {
        "workers": [
            {
                "peer_id": w.peer_id,
                "user": w.user,
                "host": w.host,
                "cluster": w.cluster,
                "slots": w.slots,
                "busy": w.busy_cpus,
                "python": w.python,
                "resources": dict(w.resources),
                "leases": w.leases,
            }
            for w in status.workers
            if w.cluster in clusters
        ],
        "leases": [
            {"cluster": u.cluster, "user": u.user, "leases": u.leases, "cpus": u.cpus}
            for u in status.leases
            if u.cluster in clusters
        ],
        "waiting": [
            {
                "client": r.client_peer_id,
                "user": r.user,
                "cluster": r.cluster,
                "count": r.count,
                "num_cpus": r.shape.num_cpus,
                "resources": dict(r.shape.resources),
            }
            for r in status.waiting
            if r.cluster in clusters
        ],
    }
