"""Tests of the board's pure lease scheduler: placement, fair share, liveness, revocation.

Everything is synchronous and deterministic: time is the ``now`` argument.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2prt.board._fairshare import water_fill
from p2prt.board.scheduler import (
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
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    UnknownWorkerError,
    Unsatisfiable,
)
from p2prt.errors import ConfigError, P2prtError

C = "alice/friends"


def id_factory() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"L{next(counter)}"


def make(config: SchedulerConfig | None = None) -> Scheduler:
    return Scheduler(config, lease_id_factory=id_factory())


def add_worker(s: Scheduler, peer_id: str, slots: int = 4, *, user: str = "bob", cluster: str = C,
               python: str = "3.11", resources: dict[str, float] | None = None, now: float = 0.0) -> list[Event]:
    return s.register_worker(peer_id, user=user, cluster=cluster, host=f"{peer_id}.lan", slots=slots,
                             resources=resources, python=python, now=now)


def grants(events: Iterable[Event]) -> list[Lease]:
    return [e.lease for e in events if isinstance(e, Grant)]


E = TypeVar("E", Grant, Reclaim, Revoke, Unsatisfiable)


def of(events: Iterable[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


def held(s: Scheduler, cluster: str = C) -> dict[str, int]:
    """CPUs held per user."""
    return {u.user: u.cpus for u in s.status(cluster).leases}


def held_by_client(s: Scheduler, *clients: str) -> dict[str, int]:
    return {c: sum(lease.num_cpus for lease in s.client_leases(c)) for c in clients}


def honour(s: Scheduler, events: Iterable[Event], now: float) -> list[Event]:
    """Return every reclaimed lease (as a well-behaved client would), until none is asked for."""
    pending = [e.lease_id for e in events if isinstance(e, Reclaim)]
    seen: list[Event] = []
    while pending:
        more = s.return_lease(pending.pop(0), now)
        seen += more
        pending += [e.lease_id for e in more if isinstance(e, Reclaim)]
    return seen


# ------------------------------------------------------------------ basics


def test_grant_and_return() -> None:
    s = make()
    assert add_worker(s, "w1") == []
    events = s.request_leases("c1", "alice", C, 2, now=1.0)
    leases = grants(events)
    assert events == [Grant(lease) for lease in leases]
    assert [(x.lease_id, x.worker_peer_id, x.client_peer_id, x.client_user, x.cluster) for x in leases] == [
        ("L1", "w1", "c1", "alice", C),
        ("L2", "w1", "c1", "alice", C),
    ]
    first = leases[0]
    assert (first.num_cpus, dict(first.resources), first.python, first.granted_at, first.expires) == (
        1, {}, "3.11", 1.0, 31.0)
    assert s.status().workers[0].busy_cpus == 2
    assert s.return_lease("L1", now=2.0) == []
    assert s.status().workers[0].busy_cpus == 1
    assert s.lease("L1") is None and s.lease("L2") == leases[1]
    stats = s.statistics()
    assert (stats.grants, stats.returns, stats.leases, stats.workers, stats.clients) == (2, 1, 1, 1, 1)


def test_return_frees_slots_at_once_and_grants_waiting_in_same_call() -> None:
    s = make()
    add_worker(s, "w1", slots=2)
    assert len(grants(s.request_leases("c1", "alice", C, 3, now=1.0))) == 2
    assert [(r.client_peer_id, r.count) for r in s.status().waiting] == [("c1", 1)]
    events = s.return_lease("L1", now=2.0)
    [lease] = grants(events)
    assert (lease.lease_id, lease.worker_peer_id, lease.granted_at) == ("L3", "w1", 2.0)
    assert s.status().waiting == ()


def test_waiting_demand_is_granted_when_a_worker_registers() -> None:
    s = make()
    add_worker(s, "w1", slots=1)
    assert len(grants(s.request_leases("c1", "alice", C, 3, now=1.0))) == 1
    events = add_worker(s, "w2", slots=4, now=2.0)
    assert [lease.worker_peer_id for lease in grants(events)] == ["w2", "w2"]
    assert s.statistics().waiting == 0


def test_unknown_lease_return_is_a_noop_and_foreign_return_is_refused() -> None:
    s = make()
    add_worker(s, "w1")
    s.request_leases("c1", "alice", C, 1, now=0.0)
    assert s.return_lease("nope", now=1.0) == []
    with pytest.raises(SchedulerError, match="not held by client c2"):
        s.return_lease("L1", now=1.0, client_peer_id="c2")
    assert s.return_lease("L1", now=1.0, client_peer_id="c1") == []
    assert s.return_lease("L1", now=1.0) == []  # twice: harmless
    assert s.statistics().returns == 1


def test_invalid_arguments() -> None:
    s = make()
    add_worker(s, "w1")
    for kwargs in ({"count": 0}, {"count": True}, {"num_cpus": 0}, {"resources": {"gpu": -1}},
                   {"resources": {"gpu": math.inf}}, {"resources": {"cpu": 1}}, {"python": "three"}):
        args = {"count": 1, **kwargs}
        count = args.pop("count")
        with pytest.raises(SchedulerError):
            s.request_leases("c1", "alice", C, count, now=0.0, **args)  # type: ignore[arg-type]
    s.request_leases("c1", "alice", C, 1, now=0.0)
    with pytest.raises(SchedulerError, match="belongs to user alice"):
        s.request_leases("c1", "mallory", C, 1, now=0.0)
    with pytest.raises(SchedulerError):
        add_worker(s, "w2", slots=0)
    with pytest.raises(SchedulerError):
        s.tick(math.nan)
    with pytest.raises(ConfigError):
        SchedulerConfig(lease_ttl=0)
    assert issubclass(SchedulerError, P2prtError)


def test_lease_shape_normalises() -> None:
    shape = LeaseShape(2, {"gpu": 1, "fpga": 0}, "3.12.1")
    assert shape == LeaseShape(2, FrozenResources({"gpu": 1.0}), "3.12")
    assert hash(shape) == hash(LeaseShape(2, {"gpu": 1.0}, "3.12"))
    assert shape.describe() == "2 CPUs, gpu=1, Python 3.12"
    assert FrozenResources({"gpu": 2}) == {"gpu": 2.0}


def test_records_pickle_and_default_lease_ids_are_unique() -> None:
    a, b = Scheduler(), Scheduler()
    for s in (a, b):
        add_worker(s, "w1", resources={"gpu": 1})
    [la] = grants(a.request_leases("c1", "alice", C, 1, resources={"gpu": 1}, now=0.0))
    [lb] = grants(b.request_leases("c1", "alice", C, 1, now=0.0))
    assert la.lease_id != lb.lease_id and la.lease_id.endswith("-1")
    copy_ = pickle.loads(pickle.dumps(la))
    assert copy_ == la and hash(copy_) == hash(la) and dict(copy_.resources) == {"gpu": 1.0}
    shape = LeaseShape(2, {"gpu": 1})
    assert {pickle.loads(pickle.dumps(shape)): 1}[shape] == 1


# ---------------------------------------------------------------- capacity


def test_capacity_is_never_exceeded_cpus_and_custom_resources() -> None:
    s = make()
    add_worker(s, "gpu-box", slots=4, resources={"gpu": 1})
    events = s.request_leases("c1", "alice", C, 3, resources={"gpu": 1}, now=0.0)
    assert len(grants(events)) == 1  # one GPU, although 4 CPUs
    events = s.request_leases("c2", "carol", C, 2, num_cpus=2, now=0.0)
    assert [lease.num_cpus for lease in grants(events)] == [2]  # 1 + 2 of 4 CPUs busy; a second 2-CPU lease won't fit
    worker = s.status().workers[0]
    assert (worker.busy_cpus, dict(worker.busy_resources)) == (3, {"gpu": 1.0})
    assert sorted((r.client_peer_id, r.count) for r in s.status().waiting) == [("c1", 2), ("c2", 1)]


def test_placement_is_best_fit_and_keeps_gpu_machines_for_gpu_work() -> None:
    s = make()
    add_worker(s, "gpu-box", slots=4, resources={"gpu": 1})
    add_worker(s, "plain-a", slots=4)
    add_worker(s, "plain-b", slots=4)
    workers = [lease.worker_peer_id for lease in grants(s.request_leases("c1", "alice", C, 5, now=0.0))]
    assert workers == ["plain-a"] * 4 + ["plain-b"]  # packed, plain machines first
    s.return_lease("L2", now=1.0)  # plain-a has 1 free, plain-b 3: best fit is plain-a
    assert [lease.worker_peer_id for lease in grants(s.request_leases("c1", "alice", C, 1, now=1.0))] == ["plain-a"]
    [gpu] = grants(s.request_leases("c1", "alice", C, 1, resources={"gpu": 1}, now=1.0))
    assert gpu.worker_peer_id == "gpu-box" and dict(gpu.resources) == {"gpu": 1.0}


def test_python_mismatch_is_unsatisfiable_with_a_helpful_reason() -> None:
    s = make()
    add_worker(s, "w1", python="3.12.3")
    events = s.request_leases("c1", "alice", C, 4, python="3.11", now=0.0)
    assert events == [Unsatisfiable("c1", C, "no worker in alice/friends runs Python 3.11 (workers run: 3.12)",
                                    LeaseShape(1, {}, "3.11"), 4)]
    assert s.status().waiting == () and s.statistics().clients == 0
    # 3.12.x on both sides matches on major.minor
    assert len(grants(s.request_leases("c1", "alice", C, 1, python="3.12.0", now=0.0))) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"num_cpus": 8}, "no worker in alice/friends running Python 3.11 offers 8 CPUs (the largest offers 4)"),
        ({"resources": {"gpu": 2}},
         "no worker in alice/friends running Python 3.11 with 1 CPU offers gpu=2 "
         "(the most any such worker offers: gpu=1)"),
        ({"resources": {"tpu": 1}},
         "no worker in alice/friends running Python 3.11 with 1 CPU offers tpu=1 "
         "(the most any such worker offers: tpu=0)"),
    ],
)
def test_unsatisfiable_reasons(kwargs: dict[str, object], reason: str) -> None:
    s = make()
    add_worker(s, "w1", resources={"gpu": 1})
    [event] = s.request_leases("c1", "alice", C, 1, now=0.0, **kwargs)  # type: ignore[arg-type]
    assert isinstance(event, Unsatisfiable) and event.reason == reason


def test_empty_cluster_is_unsatisfiable() -> None:
    s = make()
    [event] = s.request_leases("c1", "alice", "bob/empty", 1, now=0.0)
    assert isinstance(event, Unsatisfiable) and event.reason == "cluster bob/empty has no live workers"


# -------------------------------------------------------------- fair share


def test_a_user_alone_gets_all_slots() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    events = s.request_leases("ca", "alice", C, 10, now=0.0)
    assert len(grants(events)) == 4 and not of(events, Reclaim)
    assert held(s) == {"alice": 4}


def test_two_users_split_two_plus_two_via_reclaim() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    assert len(grants(s.request_leases("ca", "alice", C, 10, now=0.0))) == 4
    events = s.request_leases("cb", "bob", C, 10, now=1.0)
    # bob gets nothing yet; alice is asked to hand back her two newest leases
    assert events == [Reclaim("L4", "ca", "w1"), Reclaim("L3", "ca", "w1")]
    # more demand from bob does not repeat the Reclaims
    assert s.request_leases("cb", "bob", C, 5, now=1.5) == []
    # alice returns one at a task boundary: bob gets the slot in the same call
    events = s.return_lease("L4", now=2.0)
    assert [(lease.client_user, lease.worker_peer_id) for lease in grants(events)] == [("bob", "w1")]
    assert not of(events, Reclaim)
    assert [lease.client_user for lease in grants(s.return_lease("L3", now=3.0))] == ["bob"]
    assert held(s) == {"alice": 2, "bob": 2}
    # alice wants more; still 2 + 2
    assert s.request_leases("ca", "alice", C, 3, now=4.0) == []
    assert held(s) == {"alice": 2, "bob": 2}
    # bob's demand ends: alice grows back
    s.cancel_requests("cb", C, now=5.0)
    bob_leases = [lease.lease_id for lease in s.client_leases("cb")]
    events = s.return_lease(bob_leases[0], now=6.0)
    assert [lease.client_user for lease in grants(events)] == ["alice"]
    events = s.return_lease(bob_leases[1], now=6.0)
    assert [lease.client_user for lease in grants(events)] == ["alice"]
    assert held(s) == {"alice": 4}
    assert s.statistics().reclaims == 2


def test_no_new_grant_beyond_share_while_another_user_is_below_share() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    s.request_leases("ca", "alice", C, 4, now=0.0)
    s.request_leases("cb", "bob", C, 4, now=0.0)  # reclaims two of alice's
    s.request_leases("ca", "alice", C, 4, now=0.0)
    # a slot frees up from someone else's point of view: it must go to bob, not alice
    events = s.return_lease("L1", now=1.0)  # alice returns an *old* lease, not a reclaimed one
    assert [lease.client_user for lease in grants(events)] == ["bob"]


def test_water_filling_with_three_users_of_unequal_demand() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    add_worker(s, "w2", slots=4)
    assert len(grants(s.request_leases("cc", "carol", C, 10, now=0.0))) == 8
    honour(s, s.request_leases("ca", "alice", C, 1, now=1.0), now=2.0)
    honour(s, s.request_leases("cb", "bob", C, 3, now=3.0), now=4.0)
    # alice wants 1 < 8/3, bob 3 < 7/2: carol gets the rest
    assert held(s) == {"alice": 1, "bob": 3, "carol": 4}
    # alice leaves: carol takes her slot (bob already has all he asked for)
    [lease] = s.client_leases("ca")
    events = s.return_lease(lease.lease_id, now=5.0)
    assert [g.client_user for g in grants(events)] == ["carol"]
    assert held(s) == {"bob": 3, "carol": 5}


def test_three_users_on_four_slots_round_without_churn() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    s.request_leases("ca", "alice", C, 10, now=0.0)
    events = s.request_leases("cb", "bob", C, 10, now=1.0)
    events += s.request_leases("cc", "carol", C, 10, now=1.0)
    assert len(of(events, Reclaim)) == 2  # 4 = 2 + 1 + 1: the odd slot stays with alice, who holds it
    honour(s, events, now=2.0)
    assert held(s) == {"alice": 2, "bob": 1, "carol": 1}


def test_two_clients_of_one_user_split_its_share() -> None:
    s = make()
    add_worker(s, "w1", slots=4)
    s.request_leases("a1", "alice", C, 10, now=0.0)
    events = s.request_leases("a2", "alice", C, 10, now=1.0)
    assert [(e.client_peer_id, e.lease_id) for e in of(events, Reclaim)] == [("a1", "L4"), ("a1", "L3")]
    honour(s, events, now=2.0)
    assert held_by_client(s, "a1", "a2") == {"a1": 2, "a2": 2}
    # bob arrives: alice's share (2) is split 1 + 1 between her clients
    honour(s, s.request_leases("cb", "bob", C, 10, now=3.0), now=4.0)
    assert held(s) == {"alice": 2, "bob": 2}
    assert held_by_client(s, "a1", "a2") == {"a1": 1, "a2": 1}


def test_fair_share_is_per_python_pool() -> None:
    s = make()
    add_worker(s, "w311", slots=4, python="3.11")
    add_worker(s, "w312", slots=4, python="3.12")
    s.request_leases("ca", "alice", C, 4, python="3.11", now=0.0)
    events = s.request_leases("cb", "bob", C, 4, python="3.12", now=0.0)
    assert len(grants(events)) == 4 and not of(events, Reclaim)  # bob cannot use alice's workers anyway


def test_demand_for_a_scarce_resource_does_not_claim_cpus_it_cannot_use() -> None:
    s = make()
    add_worker(s, "gpu-box", slots=4, resources={"gpu": 1})
    add_worker(s, "plain", slots=4)
    assert len(grants(s.request_leases("cb", "bob", C, 5, resources={"gpu": 1}, now=0.0))) == 1
    # bob can use at most 1 CPU (one GPU): alice gets the other 7
    events = s.request_leases("ca", "alice", C, 10, now=0.0)
    assert len(grants(events)) == 7 and not of(events, Reclaim)


def test_reclaim_prefers_leases_the_starved_demand_can_use() -> None:
    s = make()
    add_worker(s, "plain", slots=2)
    add_worker(s, "gpu-box", slots=2, resources={"gpu": 2})
    assert len(grants(s.request_leases("ca", "alice", C, 4, now=0.0))) == 4
    events = s.request_leases("cb", "bob", C, 2, resources={"gpu": 1}, now=1.0)
    reclaimed = [s.lease(e.lease_id) for e in of(events, Reclaim)]
    assert [lease.worker_peer_id for lease in reclaimed if lease] == ["gpu-box", "gpu-box"]
    honour(s, events, now=2.0)
    assert held(s) == {"alice": 2, "bob": 2}


# ------------------------------------------------------------------- time


def test_lease_expires_when_client_stops_heartbeating() -> None:
    s = make(SchedulerConfig(worker_timeout=15, client_timeout=15, lease_ttl=30))
    add_worker(s, "w1")
    s.request_leases("c1", "alice", C, 2, now=0.0)
    s.heartbeat_worker("w1", now=10.0)
    s.heartbeat_client("c1", now=10.0)
    assert s.lease("L1") is not None and s.lease("L1").expires == 40.0  # type: ignore[union-attr]
    s.heartbeat_worker("w1", now=20.0)
    assert s.tick(now=25.0) == []
    s.heartbeat_worker("w1", now=25.0)
    events = s.tick(now=25.5)  # silent for 15.5 s > 15 s
    assert events == [Revoke("L1", "c1", "w1", REVOKE_CLIENT_LOST), Revoke("L2", "c1", "w1", REVOKE_CLIENT_LOST)]
    assert s.status().workers[0].busy_cpus == 0
    assert s.statistics().expiries == 2 and s.statistics().clients == 0


def test_lease_ttl_expiry_and_renewal() -> None:
    s = make(SchedulerConfig(worker_timeout=100, client_timeout=100, lease_ttl=5))
    add_worker(s, "w1")
    s.request_leases("c1", "alice", C, 1, now=0.0)
    s.request_leases("c1", "alice", C, 1, now=3.0)  # L2 expires at 8
    assert s.tick(now=4.9) == []
    s.heartbeat_client("c1", now=4.9)  # both renewed to 9.9
    assert [lease.expires for lease in s.client_leases("c1")] == [9.9, 9.9]
    events = s.tick(now=9.9)
    assert events == [Revoke("L1", "c1", "w1", REVOKE_LEASE_EXPIRED), Revoke("L2", "c1", "w1", REVOKE_LEASE_EXPIRED)]


def test_worker_expiry_revokes_its_leases_and_moves_demand() -> None:
    s = make()
    add_worker(s, "w1", slots=2)
    add_worker(s, "w2", slots=2)
    s.request_leases("c1", "alice", C, 3, now=0.0)  # w1: L1 L2, w2: L3
    for t in (5.0, 10.0, 15.0):
        s.heartbeat_worker("w2", now=t)
        s.heartbeat_client("c1", now=t)
    events = s.tick(now=15.5)
    assert of(events, Revoke) == [Revoke("L1", "c1", "w1", REVOKE_WORKER_LOST),
                                  Revoke("L2", "c1", "w1", REVOKE_WORKER_LOST)]
    assert [w.peer_id for w in s.status().workers] == ["w2"]
    with pytest.raises(UnknownWorkerError):
        s.heartbeat_worker("w1", now=16.0)
    # the client asks again for what it lost: one more fits on w2
    assert [lease.worker_peer_id for lease in grants(s.request_leases("c1", "alice", C, 2, now=16.0))] == ["w2"]


def test_waiting_demand_that_becomes_impossible_is_dropped_with_a_reason() -> None:
    s = make()
    add_worker(s, "w1", slots=1)
    s.request_leases("c1", "alice", C, 3, now=0.0)
    events = s.unregister_worker("w1", now=1.0)
    assert events == [
        Revoke("L1", "c1", "w1", REVOKE_WORKER_UNREGISTERED),
        Unsatisfiable("c1", C, "cluster alice/friends has no live workers", LeaseShape(), 2),
    ]
    assert s.statistics().clients == 0 and s.status().waiting == ()


def test_now_going_backwards_is_treated_as_the_latest_time() -> None:
    s = make()
    add_worker(s, "w1", now=10.0)
    [lease] = grants(s.request_leases("c1", "alice", C, 1, now=5.0))
    assert lease.granted_at == 10.0


# -------------------------------------------------------------- revocation


def test_remove_member_revokes_leases_workers_and_demand() -> None:
    s = make()
    add_worker(s, "bob-pc", slots=2, user="bob")
    add_worker(s, "alice-pc", slots=2, user="alice")
    s.request_leases("ca", "alice", C, 6, now=0.0)  # 4 granted, 2 waiting
    s.request_leases("cb", "bob", C, 1, now=0.0)  # reclaims one of alice's
    by_worker = {lease.lease_id: lease.worker_peer_id for lease in s.client_leases("ca")}
    events = s.remove_member(C, "alice", now=1.0)
    assert of(events, Revoke) == [Revoke(lid, "ca", w, REVOKE_MEMBER_REMOVED) for lid, w in by_worker.items()]
    [grant] = grants(events)  # bob's waiting lease fits now
    assert grant.client_user == "bob"
    assert [w.peer_id for w in s.status().workers] == ["bob-pc"]
    assert s.client_leases("ca") == () and all(r.user != "alice" for r in s.status().waiting)
    # bob leaves: his worker goes, and carol's lease on it is revoked with a reason that says why
    [carols] = grants(s.request_leases("cc", "carol", C, 1, now=2.0))
    events = s.remove_member(C, "bob", now=3.0)
    assert events == [
        Revoke(grant.lease_id, "cb", "bob-pc", REVOKE_MEMBER_REMOVED),
        Revoke(carols.lease_id, "cc", "bob-pc", REVOKE_WORKER_REMOVED),
    ]
    assert s.status().workers == () and s.statistics().leases == 0


def test_remove_user_and_disconnect_client() -> None:
    s = make()
    add_worker(s, "w1", cluster="a/x")
    add_worker(s, "w2", cluster="a/y")
    s.request_leases("c1", "alice", "a/x", 1, now=0.0)
    s.request_leases("c1", "alice", "a/y", 1, now=0.0)
    s.request_leases("c2", "carol", "a/y", 1, now=0.0)
    assert [e.reason for e in of(s.remove_user("alice", now=1.0), Revoke)] == [REVOKE_USER_REMOVED] * 2
    assert s.disconnect_client("c2", now=2.0) == [Revoke("L3", "c2", "w2", REVOKE_CLIENT_DISCONNECTED)]
    assert s.disconnect_client("c2", now=2.0) == []
    assert s.statistics().leases == 0


def test_reregistering_a_worker() -> None:
    s = make()
    add_worker(s, "w1", slots=2)
    s.request_leases("c1", "alice", C, 2, now=0.0)
    assert add_worker(s, "w1", slots=2, now=1.0) == []  # same configuration: a refresh
    assert s.statistics().leases == 2
    events = add_worker(s, "w1", slots=4, now=2.0)
    assert of(events, Revoke) == [Revoke("L1", "c1", "w1", REVOKE_WORKER_CHANGED),
                                  Revoke("L2", "c1", "w1", REVOKE_WORKER_CHANGED)]
    assert s.status().workers[0].slots == 4


def test_status_and_statistics() -> None:
    s = make()
    add_worker(s, "w1", slots=2, resources={"gpu": 1})
    add_worker(s, "w2", slots=2, cluster="other/c")
    s.request_leases("c1", "alice", C, 3, now=0.0)
    st_ = s.status(C)
    assert [(w.peer_id, w.user, w.host, w.cluster, w.slots, w.busy_cpus, w.python, dict(w.resources), w.leases)
            for w in st_.workers] == [("w1", "bob", "w1.lan", C, 2, 2, "3.11", {"gpu": 1.0}, 2)]
    assert [(u.cluster, u.user, u.leases, u.cpus) for u in st_.leases] == [(C, "alice", 2, 2)]
    assert [(r.client_peer_id, r.user, r.cluster, r.count, r.shape) for r in st_.waiting] == [
        ("c1", "alice", C, 1, LeaseShape())]
    assert len(s.status().workers) == 2
    stats = s.statistics()
    assert (stats.grants, stats.waiting, stats.clients, stats.workers) == (2, 1, 1, 2)


# --------------------------------------------------------------- water_fill


def _rank(key: str) -> tuple[int, int, str]:
    return (0, 0, key)


def test_water_fill_examples() -> None:
    assert water_fill(4, {"a": 10, "b": 10}, _rank) == {"a": 2, "b": 2}
    assert water_fill(4, {"a": 10}, _rank) == {"a": 4}
    assert water_fill(8, {"a": 1, "b": 3, "c": 10}, _rank) == {"a": 1, "b": 3, "c": 4}
    assert water_fill(4, {"a": 9, "b": 9, "c": 9}, _rank) == {"a": 2, "b": 1, "c": 1}
    assert water_fill(0, {"a": 3}, _rank) == {"a": 0}


def _maxmin(capacity: float, demands: dict[str, int]) -> dict[str, float]:
    """Reference real-valued max-min fair shares."""
    shares: dict[str, float] = {}
    remaining = float(capacity)
    order = sorted(demands, key=demands.__getitem__)
    for i, key in enumerate(order):
        give = min(float(demands[key]), remaining / (len(order) - i))
        shares[key] = give
        remaining -= give
    return shares


@given(st.integers(0, 64), st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 40), max_size=8))
def test_water_fill_properties(capacity: int, demands: dict[str, int]) -> None:
    shares = water_fill(capacity, demands, _rank)
    assert sum(shares.values()) == min(capacity, sum(demands.values()))
    ideal = _maxmin(capacity, demands)
    for key, share in shares.items():
        assert 0 <= share <= demands[key]
        assert math.floor(ideal[key] + 1e-9) <= share <= math.ceil(ideal[key] - 1e-9)


# ------------------------------------------------------- stateful, random


WORKERS = ["w0", "w1", "w2", "w3"]
CLIENTS = {"c0": "alice", "c1": "alice", "c2": "bob", "c3": "carol"}


class SchedulerMachine(RuleBasedStateMachine):
    """Random operations and time; a model of live leases built from the events alone.

    Homogeneous by default (one cluster, one Python, 1-CPU leases, no custom resources),
    where fair share is exact and checked; subclasses add variety and check the rest.
    """

    clusters: tuple[str, ...] = (C,)
    pythons: tuple[str, ...] = ("3.11",)
    max_cpus = 1
    gpus = False
    # (peer_id, cluster, python, slots, gpus)
    initial_workers: tuple[tuple[str, str, str, int, int], ...] = (("w0", C, "3.11", 2, 0), ("w1", C, "3.11", 2, 0))

    config = SchedulerConfig(worker_timeout=10, client_timeout=10, lease_ttl=20)

    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(self.config, lease_id_factory=id_factory())
        self.now = 0.0
        self.leases: dict[str, Lease] = {}
        self.pending: set[str] = set()  # reclaimed, not yet returned
        self.ever_reclaimed: set[str] = set()

    # -- bookkeeping

    def apply(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, Grant):
                assert e.lease.lease_id not in self.leases
                assert e.lease.granted_at == self.now
                self.leases[e.lease.lease_id] = e.lease
            elif isinstance(e, Revoke):
                assert self.leases.pop(e.lease_id).worker_peer_id == e.worker_peer_id
                self.pending.discard(e.lease_id)
            elif isinstance(e, Reclaim):
                assert e.lease_id in self.leases, "reclaim of a lease that is not live"
                assert e.lease_id not in self.ever_reclaimed, "duplicate Reclaim"
                self.pending.add(e.lease_id)
                self.ever_reclaimed.add(e.lease_id)
            else:
                assert isinstance(e, Unsatisfiable) and e.reason
                workers = [w for w in self.s.status(e.cluster).workers]
                assert not any(w.python == e.shape.python and w.slots >= e.shape.num_cpus
                               and all(w.resources.get(k, 0) >= v for k, v in e.shape.pairs) for w in workers)

    # -- rules

    @initialize()
    def start(self) -> None:
        for peer_id, cluster, python, slots, gpus in self.initial_workers:
            resources = {"gpu": gpus} if gpus else None
            self.apply(self.s.register_worker(peer_id, user="bob", cluster=cluster, host="h", slots=slots,
                                              resources=resources, python=python, now=self.now))

    @rule(peer_id=st.sampled_from(WORKERS), slots=st.integers(1, 4), data=st.data())
    def register_worker(self, peer_id: str, slots: int, data: st.DataObject) -> None:
        cluster = data.draw(st.sampled_from(self.clusters))
        python = data.draw(st.sampled_from(self.pythons))
        resources = {"gpu": data.draw(st.integers(0, 2))} if self.gpus else None
        user = data.draw(st.sampled_from(["bob", "alice", "dave"]))
        self.apply(self.s.register_worker(peer_id, user=user, cluster=cluster, host="h", slots=slots,
                                          resources=resources, python=python, now=self.now))

    @rule(peer_id=st.sampled_from(WORKERS))
    def unregister_worker(self, peer_id: str) -> None:
        self.apply(self.s.unregister_worker(peer_id, self.now))

    @rule(peer_id=st.sampled_from(WORKERS))
    def heartbeat_worker(self, peer_id: str) -> None:
        try:
            self.apply(self.s.heartbeat_worker(peer_id, self.now))
        except UnknownWorkerError:
            assert peer_id not in {w.peer_id for w in self.s.status().workers}

    @rule(client=st.sampled_from(sorted(CLIENTS)), count=st.integers(1, 5), data=st.data())
    def request(self, client: str, count: int, data: st.DataObject) -> None:
        cluster = data.draw(st.sampled_from(self.clusters))
        python = data.draw(st.sampled_from(self.pythons))
        num_cpus = data.draw(st.integers(1, self.max_cpus))
        resources = {"gpu": data.draw(st.sampled_from([0, 0, 0, 1]))} if self.gpus else None
        self.apply(self.s.request_leases(client, CLIENTS[client], cluster, count, num_cpus=num_cpus,
                                         resources=resources, python=python, now=self.now))

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data())
    def return_lease(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.leases)))
        lease = self.leases.pop(lease_id)
        self.pending.discard(lease_id)
        self.apply(self.s.return_lease(lease_id, self.now, client_peer_id=lease.client_peer_id))

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def honour_reclaim(self, data: st.DataObject) -> None:
        lease_id = data.draw(st.sampled_from(sorted(self.pending)))
        self.pending.discard(lease_id)
        del self.leases[lease_id]
        self.apply(self.s.return_lease(lease_id, self.now))

    @rule(client=st.sampled_from(sorted(CLIENTS)), data=st.data())
    def cancel(self, client: str, data: st.DataObject) -> None:
        self.apply(self.s.cancel_requests(client, data.draw(st.sampled_from(self.clusters)), self.now))

    @rule(client=st.sampled_from(sorted(CLIENTS)))
    def heartbeat_client(self, client: str) -> None:
        self.apply(self.s.heartbeat_client(client, self.now))

    @rule(client=st.sampled_from(sorted(CLIENTS)))
    def disconnect(self, client: str) -> None:
        self.apply(self.s.disconnect_client(client, self.now))

    @rule(user=st.sampled_from(["alice", "bob", "carol", "dave"]), data=st.data())
    def remove_member(self, user: str, data: st.DataObject) -> None:
        self.apply(self.s.remove_member(data.draw(st.sampled_from(self.clusters)), user, self.now))

    @rule(dt=st.floats(0, 12, allow_nan=False))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.apply(self.s.tick(self.now))

    # -- invariants

    @invariant()
    def counters_are_consistent(self) -> None:
        self.s._audit()

    @invariant()
    def model_matches_and_capacity_holds(self) -> None:
        status = self.s.status()
        workers = {w.peer_id: w for w in status.workers}
        busy: dict[str, int] = dict.fromkeys(workers, 0)
        gpus: dict[str, float] = dict.fromkeys(workers, 0.0)
        for lease_id, lease in self.leases.items():
            current = self.s.lease(lease_id)
            assert current is not None and current.worker_peer_id == lease.worker_peer_id
            worker = workers[lease.worker_peer_id]  # every lease is on a live worker
            assert (worker.cluster, worker.python) == (lease.cluster, lease.python)
            busy[worker.peer_id] += lease.num_cpus
            gpus[worker.peer_id] += lease.resources.get("gpu", 0.0)
        assert sum(u.leases for u in status.leases) == len(self.leases)
        for peer_id, worker in workers.items():
            assert busy[peer_id] == worker.busy_cpus <= worker.slots
            assert gpus[peer_id] <= worker.resources.get("gpu", 0.0)
        assert self.pending <= self.leases.keys()
        for request in status.waiting:  # nothing waits that no live worker could ever hold
            assert any(w.cluster == request.cluster and w.python == request.shape.python
                       and w.slots >= request.shape.num_cpus
                       and all(w.resources.get(k, 0) >= v for k, v in request.shape.pairs) for w in workers.values())

    @invariant()
    def fair_after_reclaims_are_honoured(self) -> None:
        if self.max_cpus > 1 or self.gpus or len(self.pythons) > 1:
            return  # shares are exact only for interchangeable slots
        s = copy.deepcopy(self.s)
        leases = dict(self.leases)
        pending = sorted(self.pending)
        for _ in range(10_000):
            if not pending:
                break
            lease_id = pending.pop(0)
            del leases[lease_id]
            for e in s.return_lease(lease_id, self.now):
                if isinstance(e, Grant):
                    leases[e.lease.lease_id] = e.lease
                elif isinstance(e, Reclaim):
                    pending.append(e.lease_id)
                else:
                    raise AssertionError(f"unexpected {e}")
        else:
            raise AssertionError("reclaims do not settle")
        status = s.status()
        for cluster in self.clusters:
            capacity = sum(w.slots for w in status.workers if w.cluster == cluster)
            holding: dict[str, int] = {}
            waiting: dict[str, int] = {}
            for lease in leases.values():
                if lease.cluster == cluster:
                    holding[lease.client_user] = holding.get(lease.client_user, 0) + lease.num_cpus
            for r in status.waiting:
                if r.cluster == cluster:
                    waiting[r.user] = waiting.get(r.user, 0) + r.count * r.shape.num_cpus
            demand = {u: holding.get(u, 0) + waiting.get(u, 0) for u in holding.keys() | waiting.keys()}
            ideal = _maxmin(capacity, demand)
            for user, wait in waiting.items():
                # a user who still waits holds at least (the floor of) its max-min share,
                # so nobody can be above its share at that user's expense
                assert wait > 0 and holding.get(user, 0) >= math.floor(ideal[user] + 1e-9), (user, holding, ideal)


class MixedSchedulerMachine(SchedulerMachine):
    """Two clusters, two Pythons, multi-CPU leases and GPUs: capacity and liveness only."""

    clusters = (C, "bob/lab")
    pythons = ("3.11", "3.12")
    max_cpus = 3
    gpus = True
    initial_workers = (("w0", C, "3.11", 4, 1), ("w1", C, "3.12", 2, 0), ("w2", "bob/lab", "3.11", 3, 2))
    config = SchedulerConfig(worker_timeout=10, client_timeout=30, lease_ttl=8)  # leases expire before clients


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestMixedScheduler = MixedSchedulerMachine.TestCase
TestMixedScheduler.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
