"""Records, events and errors of the board's lease scheduler (:mod:`p2prt.board.scheduler`).

Everything here is a small frozen dataclass that validates itself in ``__init__``, in the
style of h11's events. The scheduler returns events; the board server turns them into
messages:

- :class:`Grant` — a new lease: tell the client (with a signed ticket).
- :class:`Reclaim` — a soft request: the client should return this lease at its next task
  boundary, because another user (or another client of the same user) is below its fair
  share.
- :class:`Revoke` — the lease is gone now: tell the client and the worker.
- :class:`Unsatisfiable` — no live worker of the cluster could ever hold a lease of this
  shape; the demand was dropped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from ..errors import ConfigError, P2prtError, SchedulerError, UnknownWorkerError  # noqa: F401  (re-exported)

__all__ = [
    "SchedulerError",
    "UnknownWorkerError",
    "SchedulerConfig",
    "FrozenResources",
    "NO_RESOURCES",
    "LeaseShape",
    "Lease",
    "Grant",
    "Reclaim",
    "Revoke",
    "Unsatisfiable",
    "Event",
    "WorkerStatus",
    "UserLeases",
    "WaitingRequest",
    "SchedulerStatus",
    "SchedulerStatistics",
    "REVOKE_WORKER_LOST",
    "REVOKE_CLIENT_LOST",
    "REVOKE_LEASE_EXPIRED",
    "REVOKE_MEMBER_REMOVED",
    "REVOKE_USER_REMOVED",
    "REVOKE_WORKER_REMOVED",
    "REVOKE_WORKER_UNREGISTERED",
    "REVOKE_WORKER_CHANGED",
    "REVOKE_CLIENT_DISCONNECTED",
    "normalize_python",
    "normalize_resources",
]

# Reasons carried by Revoke events.
REVOKE_WORKER_LOST = "worker lost"
REVOKE_CLIENT_LOST = "client lost"
REVOKE_LEASE_EXPIRED = "lease expired"
REVOKE_MEMBER_REMOVED = "member removed"
REVOKE_USER_REMOVED = "user removed"
REVOKE_WORKER_REMOVED = "worker removed: its owner is no longer a member of the cluster"
REVOKE_WORKER_UNREGISTERED = "worker unregistered"
REVOKE_WORKER_CHANGED = "worker re-registered with another configuration"
REVOKE_CLIENT_DISCONNECTED = "client disconnected"


_PYTHON_RE = re.compile(r"(\d{1,3})\.(\d{1,4})(?:\.[0-9A-Za-z.+-]*)?")


def normalize_python(version: str) -> str:
    """``"3.11.7"`` → ``"3.11"``; leases match workers on major.minor only.

    Raises :class:`SchedulerError` for anything that is not ``MAJOR.MINOR[.rest]``.
    """
    if not isinstance(version, str):
        raise SchedulerError(f"python version must be a string like '3.11', got {type(version).__name__}")
    m = _PYTHON_RE.fullmatch(version)
    if m is None:
        raise SchedulerError(f"python version must look like '3.11', got {version!r}")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def normalize_resources(resources: Mapping[str, float] | None, what: str) -> tuple[tuple[str, float], ...]:
    """Validate custom resources and return them as sorted ``(name, amount)`` pairs.

    Amounts must be finite numbers ≥ 0; zero amounts are dropped. CPUs are not a custom
    resource (use ``num_cpus``/``slots``). ``what`` names the caller in error messages.
    """
    if not resources:
        return ()
    if not isinstance(resources, Mapping):
        raise SchedulerError(f"{what}: resources must be a mapping of name to amount")
    pairs: list[tuple[str, float]] = []
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise SchedulerError(f"{what}: resource names must be non-empty strings, got {name!r}")
        if name.lower() in ("cpu", "cpus", "num_cpus"):
            raise SchedulerError(f"{what}: CPUs are not a custom resource; use num_cpus / slots")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise SchedulerError(f"{what}: resource {name!r} must be a number, got {type(amount).__name__}")
        if not math.isfinite(amount) or amount < 0:
            raise SchedulerError(f"{what}: resource {name!r} must be finite and >= 0, got {amount!r}")
        if amount > 0:
            pairs.append((name, float(amount)))
    pairs.sort()
    return tuple(pairs)


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SchedulerError(f"{what} must be an integer >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class SchedulerConfig:
    """Timeouts of the scheduler, in seconds.

    - ``worker_timeout``: a worker silent for longer is removed; its leases are revoked.
    - ``client_timeout``: a client silent for longer loses its leases and waiting demand.
    - ``lease_ttl``: a lease expires this long after its grant or its client's last
      heartbeat, whichever is later (the ``expires`` written in the lease ticket).

    Raises :class:`~p2prt.errors.ConfigError` for a value that is not a positive number.
    """

    worker_timeout: float = 15.0
    client_timeout: float = 15.0
    lease_ttl: float = 30.0

    def __post_init__(self) -> None:
        for name in ("worker_timeout", "client_timeout", "lease_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"SchedulerConfig.{name} must be a positive number of seconds, got {value!r}")


class FrozenResources(Mapping[str, float]):
    """An immutable, hashable, picklable mapping of custom resource name → amount (> 0).

    Built from any mapping; validates like :func:`normalize_resources` and drops zero
    amounts. Compares equal to a dict with the same items::

        >>> FrozenResources({"gpu": 1, "ram_gb": 0}) == {"gpu": 1.0}
        True
    """

    __slots__ = ("_dict", "_hash", "pairs")

    def __init__(self, resources: Mapping[str, float] | None = None, *, what: str = "resources") -> None:
        pairs = normalize_resources(resources, what)
        self.pairs: tuple[tuple[str, float], ...] = pairs
        """The items as sorted ``(name, amount)`` pairs."""
        self._dict = dict(pairs)
        self._hash = hash(pairs)

    def __getitem__(self, name: str) -> float:
        return self._dict[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[FrozenResources], tuple[dict[str, float]]]:
        return (FrozenResources, (self._dict,))  # the hash is per process: recompute it

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenResources):
            return self.pairs == other.pairs
        return super().__eq__(other)

    def __repr__(self) -> str:
        return f"FrozenResources({self._dict!r})"

    def __str__(self) -> str:
        return ", ".join(f"{name}={amount:g}" for name, amount in self.pairs)


NO_RESOURCES = FrozenResources()


@dataclass(frozen=True, slots=True)
class LeaseShape:
    """What one lease needs: ``num_cpus`` slots, custom ``resources``, a Python version.

    ``resources`` may be given as any mapping and is stored as :class:`FrozenResources`;
    ``python`` may be ``"3.11.7"`` and is stored as ``"3.11"``. Raises
    :class:`SchedulerError` for invalid values::

        >>> LeaseShape(2, {"gpu": 1}, "3.12.1")
        LeaseShape(num_cpus=2, resources=FrozenResources({'gpu': 1.0}), python='3.12')
    """

    num_cpus: int = 1
    resources: Mapping[str, float] = NO_RESOURCES
    python: str = "3.11"
    pairs: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)
    """``resources`` as sorted ``(name, amount)`` pairs."""
    names: frozenset[str] = field(init=False, repr=False, compare=False)
    """The names of the custom resources."""
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive_int(self.num_cpus, "num_cpus")
        resources = self.resources
        if not isinstance(resources, FrozenResources):
            resources = FrozenResources(resources, what="lease request")
            object.__setattr__(self, "resources", resources)
        object.__setattr__(self, "python", normalize_python(self.python))
        object.__setattr__(self, "pairs", resources.pairs)
        object.__setattr__(self, "names", frozenset(resources))
        object.__setattr__(self, "_hash", hash((self.num_cpus, resources, self.python)))

    def __hash__(self) -> int:  # cached: shapes are dict keys on the hot path
        return self._hash

    def __reduce__(self) -> tuple[type[LeaseShape], tuple[int, Mapping[str, float], str]]:
        return (LeaseShape, (self.num_cpus, self.resources, self.python))

    def describe(self) -> str:
        """Human-readable, e.g. ``"2 CPUs, gpu=1, Python 3.11"``."""
        parts = [f"{self.num_cpus} CPU" + ("s" if self.num_cpus != 1 else "")]
        if self.pairs:
            parts.append(str(self.resources))
        parts.append(f"Python {self.python}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Lease:
    """A grant of ``num_cpus`` slots plus ``resources`` on one worker to one client.

    ``expires`` is renewed by the client's heartbeats (the scheduler then holds a new
    record with the same ``lease_id``). ``resources`` is a :class:`FrozenResources`.
    """

    lease_id: str
    cluster: str
    client_peer_id: str
    client_user: str
    worker_peer_id: str
    num_cpus: int
    resources: Mapping[str, float]
    python: str
    granted_at: float
    expires: float


@dataclass(frozen=True, slots=True)
class Grant:
    """A new lease for ``lease.client_peer_id``."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Please return this lease at the next task boundary (fair share); sent once per lease."""

    lease_id: str
    client_peer_id: str
    worker_peer_id: str


@dataclass(frozen=True, slots=True)
class Revoke:
    """The lease ended now, for ``reason`` (one of the ``REVOKE_*`` strings)."""

    lease_id: str
    client_peer_id: str
    worker_peer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """No live worker of ``cluster`` could ever hold a lease of ``shape``.

    ``count`` leases of demand were dropped (or never recorded). ``reason`` says what is
    missing, e.g. ``"no worker in alice/friends runs Python 3.11 (workers run: 3.12)"``.
    """

    client_peer_id: str
    cluster: str
    reason: str
    shape: LeaseShape
    count: int


Event: TypeAlias = Grant | Reclaim | Revoke | Unsatisfiable


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One live worker, for ``p2prt status``."""

    peer_id: str
    user: str
    cluster: str
    host: str
    python: str
    slots: int
    busy_cpus: int
    resources: Mapping[str, float]
    busy_resources: Mapping[str, float]
    leases: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class UserLeases:
    """How many leases (and CPUs) one user holds in one cluster."""

    cluster: str
    user: str
    leases: int
    cpus: int


@dataclass(frozen=True, slots=True)
class WaitingRequest:
    """Demand not granted yet: ``count`` leases of ``shape`` for one client."""

    client_peer_id: str
    user: str
    cluster: str
    count: int
    shape: LeaseShape


@dataclass(frozen=True, slots=True)
class SchedulerStatus:
    """A snapshot for ``p2prt status``, sorted by cluster then id."""

    workers: tuple[WorkerStatus, ...]
    leases: tuple[UserLeases, ...]
    waiting: tuple[WaitingRequest, ...]


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """Counters since the scheduler was made, and current sizes.

    ``revokes`` counts every revoked lease; ``expiries`` those of them revoked because a
    worker, a client or the lease itself timed out.
    """

    grants: int
    returns: int
    revokes: int
    reclaims: int
    expiries: int
    unsatisfiable: int
    workers: int
    clients: int
    leases: int
    waiting: int
