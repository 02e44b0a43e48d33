"""The board server in-process on real loopback sockets: admission, membership, leases
end to end, fair share over the wire, revocation, expiry, and hostile input.

Every wait is for an event (a push, a reply, a closed socket) under ``trio.fail_after``;
nothing sleeps. Ordering on one connection is relied on where it makes a check exact:
the board answers a session's requests in order through one outbox, so a status reply
comes after every push queued for that session before it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import time

import cbor2
import pytest
import trio

from p2prt.board.client import BOARD_MAX_FRAME, BoardClient
from p2prt.board.store import Store
from p2prt.errors import (
    BoardRequestError,
    ConnectionRejectedError,
    NotMemberError,
    NotRegisteredError,
    RegistrationClosedError,
    SchedulerError,
    TransportError,
)
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.transport import MessageChannel, open_secure_stream
from p2prt.wire import board as m
from p2prt.wire.control import ErrorReply
from p2prt.wire.frames import FRAME_HEADER, NOISE_HEADER, encode_frame
from p2prt.wire.handshake import NoiseHandshake

from .conftest import (
    PUSH_TIMEOUT,
    WORKER_LISTEN,
    RunningBoard,
    StartBoard,
    create_cluster,
    expect_pushes,
    next_push,
    pushes_so_far,
    register_worker,
    request_leases,
    status,
)

pytestmark = pytest.mark.timeout(60)


def busy(st: dict, cluster: str) -> int:
    return sum(w["busy"] for w in st["workers"] if w["cluster"] == cluster)


def leases_by_user(st: dict, cluster: str) -> dict[str, int]:
    return {row["user"]: row["leases"] for row in st["leases"] if row["cluster"] == cluster}


async def wait_session_ends(client: BoardClient) -> None:
    """The board dropped this session: the push channel ends and calls fail."""
    with trio.fail_after(PUSH_TIMEOUT):
        async for _ in client.pushes:
            pass
    with pytest.raises(TransportError):
        await client.call(lambda rid: m.StatusRequest(rid, None))


async def wait_closed_by_peer(stream: trio.abc.Stream, timeout: float) -> float:
    """Read until the other side closes (EOF or reset); return when that happened."""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
    return trio.current_time()


# -- 1. welcome ---------------------------------------------------------------------------


async def test_welcome_reports_user_and_observed_address(board: RunningBoard) -> None:
    async with board.connect("alice") as alice:
        local = alice.channel.stream.transport_stream.socket.getsockname()
        assert alice.welcome.user == "alice"
        assert alice.user == "alice"
        assert alice.welcome.observed == m.Address("127.0.0.1", local[1])
        assert alice.welcome.registration == "closed"
        assert alice.welcome.heartbeat_interval == pytest.approx(0.1)
        assert alice.board_key == board.server.board_key.public


# -- 2. registration policies -------------------------------------------------------------


async def test_closed_policy_refuses_unknown_key_with_advice(board: RunningBoard) -> None:
    stranger = generate_ed25519(comment="dave")
    with trio.fail_after(PUSH_TIMEOUT), pytest.raises(ConnectionRejectedError) as info:
        async with board.connect(NodeIdentity.create(stranger, "dave")):
            pass
    text = str(info.value)
    assert stranger.public.fingerprint in text
    assert "p2prt board add-user" in text
    assert "dave" in text
    # Following the advice (from another process's connection to the store) lets dave in.
    with Store.open(board.data_dir) as operator:
        operator.add_user("dave", [stranger.public], now=time.time())
    async with board.connect(NodeIdentity.create(stranger, "dave")) as dave:
        assert dave.welcome.user == "dave"
    # A known user cannot self-register on a closed board either.
    async with board.connect("alice") as alice:
        with pytest.raises(RegistrationClosedError):
            await alice.call(lambda rid: m.Register(rid, "alice2"))


async def test_open_policy_register_then_use(start_board: StartBoard) -> None:
    b = await start_board(registration="open")
    dave = generate_ed25519(comment="dave")
    async with b.connect(NodeIdentity.create(dave, "dave")) as client:
        assert client.welcome.user is None
        assert client.welcome.registration == "open"
        with pytest.raises(NotRegisteredError):
            await client.call(lambda rid: m.ClusterCreate(rid, "lab"))
        with pytest.raises(NotRegisteredError):
            await client.call(lambda rid: m.StatusRequest(rid, None))
        assert await client.call(lambda rid: m.Register(rid, "dave")) == "dave"
        assert await client.call(lambda rid: m.ClusterCreate(rid, "lab")) == "dave/lab"
        with pytest.raises(BoardRequestError, match="already belongs to account 'dave'"):
            await client.call(lambda rid: m.Register(rid, "dave2"))
    # The account persists: a new session with the same key is welcomed by name.
    async with b.connect(NodeIdentity.create(dave, "dave")) as again:
        assert again.welcome.user == "dave"


# -- 3. impersonation ---------------------------------------------------------------------


async def test_registered_key_cannot_claim_another_account(board: RunningBoard) -> None:
    with trio.fail_after(PUSH_TIMEOUT), pytest.raises(ConnectionRejectedError) as info:
        async with board.connect(board.identity("bob", claim="alice")):
            pass
    assert "belongs to account 'bob'" in str(info.value)
    assert "claims 'alice'" in str(info.value)


# -- 4. membership ------------------------------------------------------------------------


async def test_non_members_are_refused(board: RunningBoard) -> None:
    async with board.connect("alice") as alice, board.connect("bob") as bob, board.connect("carol") as carol:
        friends = await create_cluster(alice, "friends", ["bob"])
        assert friends == "alice/friends"

        with pytest.raises(NotMemberError, match="carol is not a member of alice/friends"):
            await register_worker(carol, friends, 2)
        with pytest.raises(NotMemberError, match="p2prt cluster add alice/friends carol"):
            await request_leases(carol, friends, 1)
        with pytest.raises(NotMemberError):
            await carol.call(lambda rid: m.ClusterMembers(rid, friends))

        with pytest.raises(NotMemberError):
            await register_worker(bob, "alice/personal", 2)
        with pytest.raises(NotMemberError):
            await request_leases(bob, "alice/personal", 1)

        # The member and the owner are admitted.
        assert await bob.call(lambda rid: m.ClusterMembers(rid, friends)) == ["alice", "bob"]
        await register_worker(alice, "alice/personal", 1)
        await request_leases(alice, "alice/personal", 1)
        (grant,) = await expect_pushes(alice, m.LeaseGranted, 1)
        assert grant.ticket.cluster == "alice/personal"
        # Refused requests left nothing behind.
        st = await status(alice)
        assert [(w["cluster"], w["user"]) for w in st["workers"]] == [("alice/personal", "alice")]
        assert st["waiting"] == []


# -- 5. leases end to end -----------------------------------------------------------------


async def test_leases_end_to_end(board: RunningBoard) -> None:
    alice_id = board.identity("alice")
    worker_id = board.identity("bob")
    async with board.connect(alice_id) as alice, board.connect(worker_id) as worker:
        friends = await create_cluster(alice, "friends", ["bob"])
        reply = await register_worker(worker, friends, 4)
        assert reply == {"observed": ["127.0.0.1", worker.welcome.observed.port]}

        before = time.time()
        await request_leases(alice, friends, 2)
        grants = await expect_pushes(alice, m.LeaseGranted, 2)
        lease_ids = [g.ticket.lease_id for g in grants]
        assert len(set(lease_ids)) == 2
        for g in grants:
            t = g.ticket
            assert t.verify(alice.board_key)
            assert not t.verify(generate_ed25519().public)
            assert t.cluster == friends
            assert t.client_peer_id == alice_id.peer_id
            assert t.client_user == "alice"
            assert t.worker_peer_id == worker_id.peer_id
            assert t.num_cpus == 1
            assert before < t.expires <= time.time() + 1.2 + 0.5
            assert g.worker_addrs == WORKER_LISTEN

        # The worker hears of each lease (tickets identical, no addresses).
        to_worker = await expect_pushes(worker, m.LeaseGranted, 2)
        assert sorted(g.ticket.lease_id for g in to_worker) == sorted(lease_ids)
        assert all(g.worker_addrs == [] for g in to_worker)
        assert {g.ticket.lease_id: g.ticket for g in to_worker} == {g.ticket.lease_id: g.ticket for g in grants}

        st = await status(alice, friends)
        assert busy(st, friends) == 2
        assert leases_by_user(st, friends) == {"alice": 2}
        assert st["leases"] == [{"cluster": friends, "user": "alice", "leases": 2, "cpus": 2}]
        (w,) = st["workers"]
        assert (w["user"], w["host"], w["slots"], w["python"], w["leases"]) == ("bob", "h1", 4, "3.11", 2)
        assert w["peer_id"] == str(worker_id.peer_id)

        # A return frees the slots at once: the next request on this connection sees it.
        await alice.send(m.LeaseReturn(lease_ids))
        st = await status(alice, friends)
        assert busy(st, friends) == 0
        assert st["leases"] == []
        # Returning again (or a lease that is not yours) is harmless.
        await alice.send(m.LeaseReturn([*lease_ids, "no-such-lease"]))
        assert busy(await status(alice, friends), friends) == 0
        assert await pushes_so_far(alice) == []


# -- 6. fair share ------------------------------------------------------------------------


async def test_fair_share_over_the_wire(board: RunningBoard) -> None:
    async with (
        board.connect("alice") as alice,
        board.connect("bob") as bob,
        board.connect("bob") as w1,
        board.connect("bob") as w2,
    ):
        friends = await create_cluster(alice, "friends", ["bob"])
        await register_worker(w1, friends, 2, host="h1")
        await register_worker(w2, friends, 2, host="h2")

        await request_leases(alice, friends, 4)
        alice_leases = {g.ticket.lease_id for g in await expect_pushes(alice, m.LeaseGranted, 4)}
        assert len(alice_leases) == 4

        await request_leases(bob, friends, 4)
        # Bob waits; alice is asked for exactly her excess over a half share.
        reclaims = await pushes_so_far(alice)
        assert [type(p) for p in reclaims] == [m.LeaseReclaim, m.LeaseReclaim], reclaims
        reclaimed = [p.lease_id for p in reclaims]
        assert len(set(reclaimed)) == 2 and set(reclaimed) <= alice_leases
        assert await pushes_so_far(bob) == []
        st = await status(bob, friends)
        assert leases_by_user(st, friends) == {"alice": 4}
        assert [(r["user"], r["count"]) for r in st["waiting"]] == [("bob", 4)]

        await alice.send(m.LeaseReturn(reclaimed))
        bob_grants = await expect_pushes(bob, m.LeaseGranted, 2)
        assert all(g.ticket.client_user == "bob" for g in bob_grants)
        assert all(g.ticket.verify(bob.board_key) for g in bob_grants)

        st = await status(alice, friends)
        assert leases_by_user(st, friends) == {"alice": 2, "bob": 2}
        assert busy(st, friends) == 4
        # Bob's other two stay waiting; nobody is asked for more.
        assert [(r["user"], r["count"]) for r in st["waiting"]] == [("bob", 2)]
        assert await pushes_so_far(alice) == []


# -- 7. member and user removal -----------------------------------------------------------


async def test_removed_member_loses_leases_and_workers(board: RunningBoard) -> None:
    async with (
        board.connect("alice") as alice,
        board.connect("alice") as alice_worker,
        board.connect("bob") as bob,
        board.connect("bob") as bob_worker,
    ):
        friends = await create_cluster(alice, "friends", ["bob"])
        # Bob's lease lands on alice's worker, alice's lease on bob's worker.
        await register_worker(alice_worker, friends, 1, host="alice-pc")
        await request_leases(bob, friends, 1)
        (bob_lease,) = await expect_pushes(bob, m.LeaseGranted, 1)
        await register_worker(bob_worker, friends, 1, host="bob-pc")
        await request_leases(alice, friends, 1)
        (alice_lease,) = await expect_pushes(alice, m.LeaseGranted, 1)
        bob_id, alice_id = bob_lease.ticket.lease_id, alice_lease.ticket.lease_id
        await expect_pushes(alice_worker, m.LeaseGranted, 1)
        await expect_pushes(bob_worker, m.LeaseGranted, 1)

        assert await alice.call(lambda rid: m.ClusterRemove(rid, friends, ["bob"])) == ["bob"]

        (revoked,) = await expect_pushes(bob, m.LeaseRevoked, 1)
        assert (revoked.lease_id, revoked.reason) == (bob_id, "member removed")
        (on_alice_worker,) = await expect_pushes(alice_worker, m.LeaseRevoked, 1)
        assert on_alice_worker.lease_id == bob_id
        # Bob's worker left the cluster, taking alice's lease on it along.
        (revoked,) = await expect_pushes(alice, m.LeaseRevoked, 1)
        assert revoked.lease_id == alice_id
        assert "worker removed" in revoked.reason
        (on_bob_worker,) = await expect_pushes(bob_worker, m.LeaseRevoked, 1)
        assert on_bob_worker.lease_id == alice_id

        st = await status(alice, friends)
        assert st["leases"] == []
        assert [w["host"] for w in st["workers"]] == ["alice-pc"]
        with pytest.raises(NotMemberError):
            await request_leases(bob, friends, 1)
        with pytest.raises(NotMemberError):
            await register_worker(bob_worker, friends, 1)


async def test_operator_removing_a_user_disconnects_and_revokes(board: RunningBoard) -> None:
    async with (
        board.connect("alice") as alice,
        board.connect("alice") as alice_worker,
        board.connect("bob") as bob,
    ):
        friends = await create_cluster(alice, "friends", ["bob"])
        await register_worker(alice_worker, friends, 2)
        await request_leases(bob, friends, 1)
        (grant,) = await expect_pushes(bob, m.LeaseGranted, 1)
        await expect_pushes(alice_worker, m.LeaseGranted, 1)

        # As `p2prt board remove-user bob --data DIR` does, from another connection.
        with Store.open(board.data_dir) as operator:
            operator.remove_user("bob")

        (revoked,) = await expect_pushes(alice_worker, m.LeaseRevoked, 1)
        assert revoked.lease_id == grant.ticket.lease_id
        assert revoked.reason == "user removed"
        await wait_session_ends(bob)

        st = await status(alice, friends)
        assert st["leases"] == []
        assert busy(st, friends) == 0
        assert await alice.call(lambda rid: m.ClusterMembers(rid, friends)) == ["alice"]
    # And bob cannot come back.
    with trio.fail_after(PUSH_TIMEOUT), pytest.raises(ConnectionRejectedError):
        async with board.connect("bob"):
            pass


# -- 8. expiry ----------------------------------------------------------------------------


async def test_silent_worker_expires_and_its_leases_are_revoked(board: RunningBoard) -> None:
    async with board.connect("alice") as alice, board.connect("alice", heartbeat=False) as worker:
        registered = trio.current_time()  # the worker's last sign of life is at/after this
        await register_worker(worker, "alice/personal", 1)
        await request_leases(alice, "alice/personal", 1)
        (grant,) = await expect_pushes(alice, m.LeaseGranted, 1)
        # worker_timeout is 0.6 s; alice's own heartbeats keep her leases alive meanwhile.
        revoked = await next_push(alice, timeout=PUSH_TIMEOUT)
        assert isinstance(revoked, m.LeaseRevoked)
        assert revoked.lease_id == grant.ticket.lease_id
        assert "worker" in revoked.reason
        assert trio.current_time() - registered >= 0.55
        st = await status(alice, "alice/personal")
        assert st["workers"] == [] and st["leases"] == []


# -- 9. python mismatch -------------------------------------------------------------------


async def test_python_mismatch_is_unsatisfiable(board: RunningBoard) -> None:
    async with board.connect("alice") as alice, board.connect("alice") as worker:
        await register_worker(worker, "alice/personal", 2, python="3.10")
        await request_leases(alice, "alice/personal", 1, python="3.11")
        push = await next_push(alice)
        assert isinstance(push, m.LeaseUnsatisfiable)
        assert push.cluster == "alice/personal"
        assert "Python 3.11" in push.reason and "3.10" in push.reason
        st = await status(alice, "alice/personal")
        assert st["waiting"] == [] and st["leases"] == []


async def test_requests_wait_for_the_first_worker(board: RunningBoard) -> None:
    async with board.connect("alice") as alice, board.connect("alice") as worker:
        await request_leases(alice, "alice/personal", 2)
        st = await status(alice, "alice/personal")
        assert [w["count"] for w in st["waiting"]] == [2]  # parked, not refused
        await register_worker(worker, "alice/personal", 2)
        grants = await expect_pushes(alice, m.LeaseGranted, 2)
        assert len({g.ticket.lease_id for g in grants}) == 2
        st = await status(alice, "alice/personal")
        assert st["waiting"] == []


# -- 10. hostile input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(m.LeaseRequest(0, "alice/personal", 0), id="count-0"),
        pytest.param(m.LeaseRequest(0, "alice/personal", 1, 0), id="num-cpus-0"),
        pytest.param(m.LeaseRequest(0, "alice/personal", 1, 1, {"gpu": -1.0}), id="negative-resource"),
    ],
)
async def test_a_refused_lease_request_is_answered_with_its_error_only(board: RunningBoard, request_: m.LeaseRequest) -> None:
    # Regression: the board answered Ok before the scheduler checked the request, then
    # the error with the same request id, which the client dropped: the refusal was lost.
    async with board.connect("alice") as worker, board.connect("alice") as alice:
        await register_worker(worker, "alice/personal", 2)
        with trio.fail_after(PUSH_TIMEOUT), pytest.raises(SchedulerError):
            await alice.call(lambda rid: dataclasses.replace(request_, rid=rid))
        assert [p for p in await pushes_so_far(alice) if isinstance(p, (m.Ok, ErrorReply))] == []
        st = await status(alice, "alice/personal")
        assert st["waiting"] == [] and st["leases"] == []
        await lease_cycle(alice)  # the session serves on


async def test_a_refused_worker_registration_keeps_the_one_before(board: RunningBoard) -> None:
    # Regression: a refused WorkerRegister (for another cluster, or the same) first
    # unregistered the worker and replaced the session's registration, so its leases
    # were revoked and its heartbeats kept re-sending the refused offer.
    async with board.connect("alice") as worker, board.connect("alice") as alice:
        await register_worker(worker, "alice/personal", 2)
        await request_leases(alice, "alice/personal", 1)
        (grant,) = await expect_pushes(alice, m.LeaseGranted, 1)
        other = await create_cluster(alice, "other")
        for cluster in (other, "alice/personal"):
            with trio.fail_after(PUSH_TIMEOUT), pytest.raises(SchedulerError):
                await worker.call(lambda rid, c=cluster: m.WorkerRegister(rid, c, 0, {}, "3.11", "h1", WORKER_LISTEN))
        await worker.heartbeat()
        st = await status(alice)
        assert [(w["cluster"], w["slots"], w["leases"]) for w in st["workers"]] == [("alice/personal", 2, 1)]
        assert not any(isinstance(p, m.LeaseRevoked) for p in await pushes_so_far(alice))
        await alice.send(m.LeaseReturn([grant.ticket.lease_id]))
        await lease_cycle(alice)


class Progress:
    """Counts completed lease cycles; lets a test wait for the count to pass a mark."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = trio.Event()

    def bump(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, mark: int, timeout: float = PUSH_TIMEOUT) -> None:
        with trio.fail_after(timeout):
            while self.count <= mark:
                await self._changed.wait()


async def lease_cycle(alice: BoardClient) -> None:
    await request_leases(alice, "alice/personal", 1)
    (grant,) = await expect_pushes(alice, m.LeaseGranted, 1)
    await alice.send(m.LeaseReturn([grant.ticket.lease_id]))


async def test_hostile_input_leaves_others_served(start_board: StartBoard) -> None:
    handshake_timeout = 1.0
    b = await start_board(handshake_timeout=handshake_timeout)
    b.add_user("alice")
    host, port = "127.0.0.1", b.port
    rng = random.Random(20240611)
    progress = Progress()
    stop = trio.Event()

    async def good_client(alice: BoardClient) -> None:
        while not stop.is_set():
            await lease_cycle(alice)
            progress.bump()

    async def random_bytes(data: bytes) -> None:
        tcp = await trio.open_tcp_stream(host, port)
        try:
            await tcp.send_all(data)
        except trio.BrokenResourceError:
            pass
        await wait_closed_by_peer(tcp, handshake_timeout + 4)
        await tcp.aclose()

    async def message1_then_garbage(framed: bool) -> None:
        hs = NoiseHandshake(NodeIdentity.create(generate_ed25519(), "mallory"), initiator=True)
        tcp = await trio.open_tcp_stream(host, port)
        garbage = rng.randbytes(200)
        await tcp.send_all(hs.initiate() + (NOISE_HEADER.pack(len(garbage)) + garbage if framed else garbage))
        await wait_closed_by_peer(tcp, handshake_timeout + 4)
        await tcp.aclose()

    async def oversized_frame() -> None:
        async with b.connect("alice", heartbeat=False) as rogue:
            await rogue.channel.stream.send_all(FRAME_HEADER.pack(BOARD_MAX_FRAME + 1))
            await wait_session_ends(rogue)

    async def garbage_after_handshake() -> None:
        async with b.connect("alice", heartbeat=False) as rogue:
            junk = rng.randbytes(64)
            await rogue.channel.stream.transport_stream.send_all(NOISE_HEADER.pack(len(junk)) + junk)
            await wait_session_ends(rogue)

    async def unknown_message_type() -> None:
        stream = await open_secure_stream(host, port, b.identity("alice"))
        ch = MessageChannel(stream, max_frame_size=BOARD_MAX_FRAME)
        try:
            with trio.fail_after(PUSH_TIMEOUT):
                assert isinstance(await ch.receive(), m.Welcome)
                # A known message that is not a request is answered with an error...
                await ch.send(m.Ok(4242, None))
                reply = await ch.receive()
                assert isinstance(reply, ErrorReply) and reply.request_id == 4242, reply
                assert "unexpected message Ok" in reply.message
                # ...and valid CBOR naming no message type is answered or the session dropped.
                await stream.send_all(encode_frame(cbor2.dumps(["no.such.message", 1, {"x": b"y"}])))
                try:
                    reply = await ch.receive()
                except TransportError:
                    pass
                else:
                    assert isinstance(reply, ErrorReply), reply
        finally:
            await ch.aclose()

    async def watch(tcp: trio.SocketStream, closed_at: list[float]) -> None:
        closed_at.append(await wait_closed_by_peer(tcp, handshake_timeout + 5))

    async def half_open(n: int) -> None:
        conns: list[trio.SocketStream] = []

        async def connect() -> None:
            conns.append(await trio.open_tcp_stream(host, port))

        async with trio.open_nursery() as opening:
            for _ in range(n):
                opening.start_soon(connect)
        closed_at: list[float] = []
        mark = progress.count
        async with trio.open_nursery() as watchers:
            for tcp in conns:
                watchers.start_soon(watch, tcp, closed_at)
            # The good client keeps completing cycles while they are held open...
            await progress.wait_beyond(mark + 1)
            held_while = trio.current_time()
        # ...and the board closed every one of them after its handshake timeout (most of
        # them after the cycles above; under load the first ones may time out sooner).
        assert len(closed_at) == n
        assert sum(t > held_while for t in closed_at) >= n // 2
        for tcp in conns:
            await tcp.aclose()

    with trio.fail_after(15):
        async with b.connect("alice") as worker, b.connect("alice") as alice:
            await register_worker(worker, "alice/personal", 2)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good_client, alice)
                await progress.wait_beyond(0)

                mark = progress.count
                async with trio.open_nursery() as attacks:
                    for size in (1, 3, 34, 40, 1000, 70_000):
                        attacks.start_soon(random_bytes, rng.randbytes(size))
                    for size in (0, 5, 31, 32, 33, 100):  # one well-framed random message 1
                        attacks.start_soon(random_bytes, NOISE_HEADER.pack(size) + rng.randbytes(size))
                    attacks.start_soon(message1_then_garbage, True)
                    attacks.start_soon(message1_then_garbage, False)
                    attacks.start_soon(oversized_frame)
                    attacks.start_soon(garbage_after_handshake)
                    attacks.start_soon(unknown_message_type)
                await progress.wait_beyond(mark)

                await half_open(200)
                stop.set()
            # Still fully working afterwards, on the same session and on a new one.
            await lease_cycle(alice)
            async with b.connect("alice") as fresh:
                await lease_cycle(fresh)
            st = await status(alice, "alice/personal")
            assert busy(st, "alice/personal") == 0
            assert progress.count > 5


@pytest.mark.parametrize(
    "first_frame",
    [
        pytest.param(NOISE_HEADER.pack(1) + b"\x00", id="three-bytes"),
        pytest.param(NOISE_HEADER.pack(31) + bytes(31), id="key-too-short"),
        pytest.param(NOISE_HEADER.pack(32) + bytes(32), id="low-order-key"),
        pytest.param(NOISE_HEADER.pack(32) + b"\x01" + bytes(31), id="low-order-key-1"),
    ],
)
async def test_malformed_handshake_message_1_leaves_board_serving(start_board: StartBoard, first_frame: bytes) -> None:
    # Regression: these once escaped the handshake as noise/cryptography errors and took
    # the whole listener down.
    b = await start_board(handshake_timeout=1.0)
    b.add_user("alice")
    tcp = await trio.open_tcp_stream("127.0.0.1", b.port)
    await tcp.send_all(first_frame)
    await wait_closed_by_peer(tcp, PUSH_TIMEOUT)
    await tcp.aclose()
    async with b.connect("alice") as alice, b.connect("alice") as worker:
        await register_worker(worker, "alice/personal", 1)
        await lease_cycle(alice)


async def test_protocol_error_drops_session_without_crash_log(
    board: RunningBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with board.connect("alice", heartbeat=False) as rogue:
        await rogue.channel.stream.send_all(FRAME_HEADER.pack(BOARD_MAX_FRAME + 1))
        await wait_session_ends(rogue)
    # The board logs the end of a session before it closes the socket we saw close.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_removing_one_key_spares_the_users_other_sessions(board: RunningBoard) -> None:
    laptop = generate_ed25519(comment="alice@laptop")
    board.server.store.add_keys("alice", [laptop.public])
    async with (
        board.connect("alice") as alice,
        board.connect("alice") as worker,
        board.connect(NodeIdentity.create(laptop, "alice")) as on_laptop,
    ):
        await register_worker(worker, "alice/personal", 2)
        await request_leases(alice, "alice/personal", 1)
        (kept,) = await expect_pushes(alice, m.LeaseGranted, 1)
        await request_leases(on_laptop, "alice/personal", 1)
        await expect_pushes(on_laptop, m.LeaseGranted, 1)

        with Store.open(board.data_dir) as operator:
            operator.remove_key("alice", laptop.public.fingerprint)
        await wait_session_ends(on_laptop)

        # The session with the remaining key keeps its lease and its worker.
        assert await pushes_so_far(alice) == []
        st = await status(alice, "alice/personal")
        assert leases_by_user(st, "alice/personal") == {"alice": 1}
        assert len(st["workers"]) == 1
        await alice.send(m.LeaseReturn([kept.ticket.lease_id]))


async def test_removed_user_is_told_before_the_session_ends(board: RunningBoard) -> None:
    async with board.connect("alice") as worker, board.connect("bob") as bob:
        friends = await create_cluster(worker, "friends", ["bob"])
        await register_worker(worker, friends, 1)
        await request_leases(bob, friends, 1)
        (grant,) = await expect_pushes(bob, m.LeaseGranted, 1)
        with Store.open(board.data_dir) as operator:
            operator.remove_user("bob")
        last: list[object] = []
        with trio.fail_after(PUSH_TIMEOUT):
            async for push in bob.pushes:
                last.append(push)
        assert any(isinstance(p, m.LeaseRevoked) and p.lease_id == grant.ticket.lease_id for p in last), last


# -- reachability and reconnection (NAT traversal) ----------------------------------------


def _reusable_listener() -> socket.socket:
    """A listening socket whose port a board connection may share (as a worker's does)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


async def test_dial_back_tells_each_worker_whether_it_is_public(board: RunningBoard) -> None:
    listener = _reusable_listener()
    port = listener.getsockname()[1]
    reachable_id, hidden_id = board.identity("alice"), board.identity("alice")
    try:
        async with (
            board.connect("alice") as alice,
            board.connect(reachable_id, local_port=port) as reachable,
            board.connect(hidden_id) as hidden,
        ):
            await register_worker(reachable, "alice/personal", 1)
            await register_worker(hidden, "alice/personal", 1)
            (yes,) = await expect_pushes(reachable, m.Reachability, 1)
            (no,) = await expect_pushes(hidden, m.Reachability, 1)
            assert yes == m.Reachability(True, m.Address("127.0.0.1", port))
            # Nothing listens where the board sees the second one: not reachable.
            assert no == m.Reachability(False, hidden.welcome.observed)
            st = await status(alice, "alice/personal")
            by_peer = {w["peer_id"]: w["reachability"] for w in st["workers"]}
            assert by_peer == {str(reachable_id.peer_id): "public", str(hidden_id.peer_id): "behind NAT"}
    finally:
        listener.close()


async def test_a_new_session_of_the_same_peer_keeps_its_registration_and_leases(board: RunningBoard) -> None:
    """A worker whose NAT mapping changed connects again (same process, same peer id)
    before the board noticed the old connection is dead: nothing is revoked."""
    worker_id = board.identity("alice")
    async with board.connect("alice") as alice:
        async with board.connect(worker_id) as old:
            await register_worker(old, "alice/personal", 2)
            await request_leases(alice, "alice/personal", 2)
            grants = await expect_pushes(alice, m.LeaseGranted, 2)
            async with board.connect(worker_id) as new:
                await wait_session_ends(old)  # the board keeps one session per peer
                await register_worker(new, "alice/personal", 2)
                st = await status(alice, "alice/personal")
                (w,) = st["workers"]
                assert w["peer_id"] == str(worker_id.peer_id) and w["leases"] == 2
                assert board.server.sessions[str(worker_id.peer_id)].observed == new.welcome.observed
                assert await pushes_so_far(alice) == []  # no revocation
                # The leases are still the board's to return: a return frees them.
                await alice.send(m.LeaseReturn([g.ticket.lease_id for g in grants]))
                assert busy(await status(alice, "alice/personal"), "alice/personal") == 0
