"""Well-formed requests with hostile values, straight into the board's request handling.

Messages that decode fine can still carry anything their types allow: empty, huge or
negative counts, NaN and infinite amounts, names that break every rule, leases and peers
that do not exist. Sequences of them, from several sessions (a registered user, another
session of the same user, a second user, an unregistered key), go through the board's
real reader (``BoardServer._reader``) on a real store and scheduler, with a fixed clock.

After every request:

- the handlers raised nothing but p2prt errors, which the reader turned into an
  ``ErrorReply`` (anything else would escape the reader and fail the test);
- a request with a request id got exactly one answer: an ``Ok`` or an ``ErrorReply``;
- a refused request changed nothing (scheduler status, clusters and members, the
  session's registration);
- the scheduler's bookkeeping passes its from-scratch audit.

Runs through the ``fuzz`` fixture (tests/conftest.py): few examples by default, many in
the ``[slow]`` variant.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import strategies as st

from p2prt.board.config import BoardConfig
from p2prt.board.scheduler import SchedulerConfig
from p2prt.board.server import BoardServer, Session
from p2prt.board.status import status_to_wire
from p2prt.identity import NodeIdentity, SshKey, generate_ed25519
from p2prt.wire import board as m
from p2prt.wire.control import ErrorReply, Versions
from p2prt.wire.handshake import PeerInfo
from p2prt.wire.messages import Message

pytestmark = pytest.mark.timeout(120)

NOW = 1_700_000_000.0
USERS = ("alice", "bob")
CLUSTER = "alice/friends"

_KEYS: dict[str, SshKey] = {}


def _key(user: str) -> SshKey:
    if user not in _KEYS:
        _KEYS[user] = generate_ed25519(comment=user)
    return _KEYS[user]


# -- hostile values -------------------------------------------------------------------

INTS = st.one_of(
    st.integers(min_value=-2, max_value=4),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]),
)
FLOATS = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 1e-300, 1e308, math.inf, -math.inf, math.nan])
CLUSTERS = st.one_of(
    st.sampled_from([CLUSTER, "alice/personal", "bob/personal", "bob/other", "carol/x", "alice/", "/", "", "a" * 200]),
    st.text(max_size=12),
)
NAMES = st.one_of(st.sampled_from(["friends", "other", "personal", "", "x" * 100, "a/b", "ok-name"]), st.text(max_size=8))
USER_NAMES = st.one_of(st.sampled_from(["alice", "bob", "carol", "", "Alice", "x" * 65]), st.text(max_size=8))
PYTHONS = st.one_of(st.sampled_from(["3.11", "3.10", "", "3", "3.11.7", "py3", "999.999"]), st.text(max_size=6))
RESOURCES = st.dictionaries(st.one_of(st.sampled_from(["gpu", "mem", "", "CPU"]), st.text(max_size=5)), FLOATS, max_size=3)
ADDRESSES = st.lists(
    st.builds(m.Address, st.sampled_from(["127.0.0.1", "::1", "", "192.0.2.1", "host.invalid"]), INTS), max_size=3
)
RIDS = st.integers(min_value=0, max_value=2**64 - 1)


def _requests(peer_ids: list[bytes], lease_ids: list[str]) -> st.SearchStrategy[Message]:
    peers = st.sampled_from([*peer_ids, b"", bytes(32), b"\xff" * 40])
    leases = st.lists(st.one_of(st.sampled_from(lease_ids or ["L0"]), st.text(max_size=6)), max_size=3)
    return st.one_of(
        st.builds(m.Register, RIDS, USER_NAMES),
        st.builds(m.Heartbeat, INTS, st.none() | st.dictionaries(st.text(max_size=8), INTS, max_size=3)),
        st.builds(m.ClusterCreate, RIDS, NAMES),
        st.builds(m.ClusterDelete, RIDS, CLUSTERS),
        st.builds(m.ClusterAdd, RIDS, CLUSTERS, st.lists(USER_NAMES, max_size=3)),
        st.builds(m.ClusterRemove, RIDS, CLUSTERS, st.lists(USER_NAMES, max_size=3)),
        st.builds(m.ClusterList, RIDS),
        st.builds(m.ClusterMembers, RIDS, CLUSTERS),
        st.builds(m.WorkerRegister, RIDS, CLUSTERS, INTS, RESOURCES, PYTHONS, st.text(max_size=8), ADDRESSES),
        st.builds(m.LeaseRequest, RIDS, CLUSTERS, INTS, INTS, st.none() | RESOURCES, PYTHONS),
        st.builds(m.LeaseCancel, CLUSTERS),
        st.builds(m.LeaseReturn, leases),
        st.builds(m.StatusRequest, RIDS, st.none() | CLUSTERS),
        st.builds(m.RelayOpen, RIDS, peers),
        st.builds(m.PunchRequest, RIDS, peers),
        st.builds(m.Ok, RIDS, st.none()),  # not a request: refused with an error
    )


# -- a board without sockets ----------------------------------------------------------


class _Feed:
    """Stands in for a session's MessageChannel: the reader iterates over it."""

    def __init__(self, msgs: list[Message]) -> None:
        self.msgs = msgs

    async def __aiter__(self) -> AsyncIterator[Message]:
        for msg in self.msgs:
            yield msg


def _session(server: BoardServer, user: str | None, signer: str) -> tuple[Session, trio.MemoryReceiveChannel[Message]]:
    """A session as the board makes one after the handshake, and its outbox's other end."""
    ident = NodeIdentity.create(_key(signer), user or signer)
    peer = PeerInfo(ident.certificate, Versions("0.1.0", "3.11", "3.0"))
    send, receive = trio.open_memory_channel[Message](100_000)
    s = Session(peer, str(peer.peer_id), user, _Feed([]), m.Address("192.0.2.9", 4000), send)  # type: ignore[arg-type]
    server.sessions[s.peer_id] = s
    return s, receive


def _drain(outbox: trio.MemoryReceiveChannel[Message]) -> list[Message]:
    out = []
    while True:
        try:
            out.append(outbox.receive_nowait())
        except trio.WouldBlock:
            return out


def _snapshot(server: BoardServer, s: Session) -> Any:
    clusters = sorted(
        (c.name, tuple(server.store.members(c.name))) for user in USERS for c in server.store.clusters_for(user)
    )
    return (
        server.scheduler.status(),
        clusters,
        (s.user, s.worker_cluster, s.registration, tuple(s.listen)),
        {name: len(parked) for name, parked in server._parked.items()},
    )


def _answers(rid: int, pushed: list[Message]) -> list[Message]:
    return [p for p in pushed if (isinstance(p, m.Ok) and p.rid == rid) or (isinstance(p, ErrorReply) and p.request_id == rid)]


async def _run(data: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        config = BoardConfig(
            data_dir=Path(folder), port=0, registration="open", scheduler=SchedulerConfig(lease_ttl=60.0)
        )
        server = BoardServer(config, clock=lambda: NOW)
        try:
            for user in USERS:
                server.store.add_user(user, [_key(user).public], now=time.time())
            server.store.create_cluster("alice", "friends", now=NOW)
            server.store.add_members(CLUSTER, ["bob"], by="alice")
            made = [
                _session(server, "alice", "alice"),
                _session(server, "alice", "alice"),
                _session(server, "bob", "bob"),
                _session(server, None, "mallory"),
            ]
            outboxes = {s.peer_id: outbox for s, outbox in made}
            sessions = [s for s, _ in made]
            peer_ids = [bytes(x.peer.peer_id) for x in sessions]
            for _ in range(data.draw(st.integers(min_value=1, max_value=25))):
                s = sessions[data.draw(st.integers(min_value=0, max_value=len(sessions) - 1))]
                msg = data.draw(_requests(peer_ids, list(server.scheduler._book.leases)))
                before = _snapshot(server, s)
                s.channel = _Feed([msg])  # type: ignore[assignment]
                await server._reader(s)
                pushed = _drain(outboxes[s.peer_id])
                rid = getattr(msg, "rid", None)
                if rid is not None:
                    answers = _answers(rid, pushed)
                    assert len(answers) == 1, (msg, answers)
                    if isinstance(answers[0], ErrorReply):
                        assert _snapshot(server, s) == before, f"refused {msg!r} but changed the board"
                for outbox in outboxes.values():
                    _drain(outbox)
                server.scheduler._audit()
                status_to_wire(server.scheduler.status(), {CLUSTER, "alice/personal", "bob/personal"})
        finally:
            server.store.close()


def test_hostile_requests_get_one_clear_answer_and_change_nothing_when_refused(fuzz: Any) -> None:
    fuzz(st.data(), lambda data: trio.run(_run, data), default=25, slow=1_000)
