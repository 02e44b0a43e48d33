"""What a worker tells peers that hold no lease on it: values it keeps go only to their
owner and to the cluster's workers, its traffic counters only to its clients.

Any key can complete a handshake with a worker and put any user name in its
certificate; only the key (the peer id the handshake proved) may decide.
"""

from __future__ import annotations

import pytest
import trio

from p2prt.errors import P2prtError
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.wire import board as bm
from p2prt.wire import peer as pm
from p2prt.wire.control import ErrorReply

from .conftest import CLUSTER, WAIT, Site, WorkerLine, lease, value_of

pytestmark = pytest.mark.timeout(30)

OID = b"held-value-00001"


async def test_held_values_go_only_to_their_owner_and_the_clusters_workers(site: Site) -> None:
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        line = await WorkerLine.open(carol, grant)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        result = await line.run(grant.ticket.lease_id, 6, 7, hold_as=OID)
        assert result.status == "held", result

        others = {
            "a stranger claiming bob, a member": NodeIdentity.create(generate_ed25519(), "bob"),
            "dave, no member": site.identity("dave"),
            "a script of bob, a member but no worker": site.identity("bob"),
        }
        for who, identity in others.items():
            other = await WorkerLine.open(identity, grant)
            reply = await other.fetch([OID])
            assert isinstance(reply, ErrorReply), f"{who} got carol's value: {reply!r}"
            assert reply.code == "NotMemberError", who
            await other.aclose()

        # A worker of the cluster (registered with the board) fetches it: the path a task
        # on another worker takes to get its argument.
        bob_worker = site.identity("bob")
        async with site.connect(bob_worker) as bob_board:
            with trio.fail_after(WAIT):
                await bob_board.call(
                    lambda rid: bm.WorkerRegister(rid, CLUSTER, 1, {}, "3.11", "h2", [bm.Address("127.0.0.1", 9)])
                )
            other = await WorkerLine.open(bob_worker, grant)
            reply = await other.fetch([OID])
            assert isinstance(reply, pm.FetchedObjects), reply
            assert value_of(reply.values[0].data, list(reply.values[0].buffers)) == 42
            await other.aclose()

        # And the owner, of course.
        reply = await line.fetch([OID])
        assert isinstance(reply, pm.FetchedObjects) and reply.values[0].status == "ok", reply
        await line.works(grant.ticket.lease_id)
        await line.aclose()


async def test_traffic_counters_only_for_the_workers_clients(site: Site) -> None:
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        line = await WorkerLine.open(carol, grant)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)

        stranger = await WorkerLine.open(NodeIdentity.create(generate_ed25519(), "carol"), grant)
        reply = await stranger.stats()
        assert isinstance(reply, ErrorReply) and reply.code == "NotMemberError", f"a stranger learnt {reply!r}"
        await stranger.aclose()

        stats = await line.stats()
        assert isinstance(stats, pm.Stats)
        assert str(carol.peer_id) in stats.report["peers"]
        await line.aclose()


async def test_no_large_payload_before_a_lease_is_attached(site: Site) -> None:
    """Attachments (the way large arguments travel) are refused from a peer that has not
    attached a lease: an authenticated stranger cannot make the worker hold memory."""
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        stranger = await WorkerLine.open(site.identity("dave"), grant)
        big = pm.TaskSpec(1, grant.ticket.lease_id, b"f" * 16, b"x", [b"\0" * (2 << 20)], "big")
        with pytest.raises(P2prtError):  # the worker drops the connection at the frame's header
            await stranger.channel.send(pm.SubmitTasks([big]))
            await stranger.receive()
        # The lease's holder, once attached, may send large payloads: the same message
        # is answered (its function was never defined), the connection lives on.
        line = await WorkerLine.open(carol, grant)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.channel.send(pm.SubmitTasks([big]))
        answer = await line.receive()
        assert isinstance(answer, (pm.TaskResults, ErrorReply)), answer
        await line.works(grant.ticket.lease_id)
        await line.aclose()
