"""A worker admits work only under a valid lease ticket presented by the client it names.

A real worker (executor subprocess included) registered with an in-process board, over
real sockets and Noise. Every refusal is a clear ``LeaseRefused`` reply, and the same
connection, and the worker, go on serving a legitimate client afterwards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from p2prt.errors import NotMemberError
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.wire import board as bm
from p2prt.wire import peer as pm
from p2prt.wire.control import ErrorReply

from .conftest import CLUSTER, Site, WorkerLine, lease

pytestmark = pytest.mark.timeout(30)


async def test_a_ticket_is_useless_to_any_other_client(site: Site) -> None:
    """Replayed by another process of the same user, by a non-member with an account, and
    by a stranger claiming to be the user: refused; the ticket's holder then uses it."""
    worker = await site.start_worker(slots=2)
    carol = site.identity("carol")
    async with site.connect(carol) as board:  # a lease lives as long as its holder's session
        grant = await lease(board)
        ticket = grant.ticket
        assert ticket.client_peer_id == bytes(carol.peer_id)

        other_carol = site.identity("carol")
        others = {
            "another process of carol": other_carol,
            "dave, no member": site.identity("dave"),
            "a stranger claiming carol": NodeIdentity.create(generate_ed25519(), "carol"),
        }
        lines = {}
        for who, identity in others.items():
            line = lines[who] = await WorkerLine.open(identity, grant)
            # No work before a lease is attached, ...
            await line.channel.send(pm.DefineFunction(b"f" * 16, b"x"))
            reply = await line.receive()
            assert isinstance(reply, ErrorReply) and reply.code == "NotMemberError", (who, reply)
            # ... the stolen ticket is refused, ...
            assert "issued to another client" in await line.refused(ticket), who
            # ... and a task under its lease is not run.
            result = await line.run(ticket.lease_id, 2, 3)
            assert result.status == "rejected", (who, result)

        # The ticket's holder attaches it and works, alongside the refused connections.
        mine = await WorkerLine.open(carol, grant)
        assert isinstance(await mine.attach(ticket), pm.Attached)
        await mine.works(ticket.lease_id)

        # A non-member cannot get a ticket of its own: the board refuses the request.
        async with site.connect("dave") as dave:
            with pytest.raises(NotMemberError):
                await lease(dave)

        # The other carol process, refused a moment ago on this connection, gets its own
        # lease and is served on the same connection.
        async with site.connect(other_carol) as other_board:
            own = await lease(other_board)
            assert own.ticket.worker_peer_id == bytes(worker.identity.peer_id)
            line = lines["another process of carol"]
            assert isinstance(await line.attach(own.ticket), pm.Attached)
            await line.works(own.ticket.lease_id)
        await mine.works(ticket.lease_id)
        for line in [*lines.values(), mine]:
            await line.aclose()


def _resigned(**changes: object) -> Callable[[Site, bm.LeaseTicket], bm.LeaseTicket]:
    """The granted ticket with ``changes``, signed again by the board's own key: the
    board's signature is valid, only the one field is wrong."""

    def make(site: Site, ticket: bm.LeaseTicket) -> bm.LeaseTicket:
        values = {k: (v() if callable(v) else v) for k, v in changes.items()}
        return dataclasses.replace(ticket, **values).signed(site.board.board_key)  # type: ignore[arg-type]

    return make


def _other_key(site: Site, ticket: bm.LeaseTicket) -> bm.LeaseTicket:
    return ticket.signed(generate_ed25519())


def _edited(site: Site, ticket: bm.LeaseTicket) -> bm.LeaseTicket:
    return dataclasses.replace(ticket, num_cpus=64)  # the board's signature, kept


BAD_TICKETS: dict[str, tuple[Callable[[Site, bm.LeaseTicket], bm.LeaseTicket], str]] = {
    "another worker": (
        _resigned(worker_peer_id=lambda: bytes(NodeIdentity.create(generate_ed25519(), "bob").peer_id)),
        "for another worker",
    ),
    "expired": (_resigned(expires=lambda: time.time() - 1), "has expired"),
    "signed by another key": (_other_key, "not signed by this worker's board"),
    "edited after signing": (_edited, "not signed by this worker's board"),
    "another cluster": (_resigned(cluster="carol/personal"), f"is for carol/personal, this worker serves {CLUSTER}"),
}


@pytest.mark.parametrize("kind", list(BAD_TICKETS))
async def test_a_bad_ticket_is_refused_and_the_connection_still_serves(site: Site, kind: str) -> None:
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        make, why = BAD_TICKETS[kind]
        bad = make(site, grant.ticket)
        line = await WorkerLine.open(carol, grant)
        assert why in await line.refused(bad)
        # Nothing of the bad ticket was kept: a task under its lease id is not run.
        result = await line.run(bad.lease_id, 2, 3)
        assert result.status == "rejected" and "no such lease" in result.message
        # The same connection takes the good ticket and runs work under it.
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)
        await line.aclose()


async def test_a_lease_never_attached_runs_nothing(site: Site) -> None:
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        line = await WorkerLine.open(carol, grant)
        result = await line.run(grant.ticket.lease_id, 2, 3)
        assert result.status == "rejected" and "no such lease" in result.message
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)
        await line.aclose()


async def test_a_revoked_lease_is_refused_and_runs_nothing_more(site: Site) -> None:
    worker = await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        line = await WorkerLine.open(carol, grant)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)
    # carol's board session ended: the board revokes her lease and tells the worker.
    await worker.wait_revoked(grant.ticket.lease_id)
    result = await line.run(grant.ticket.lease_id, 2, 3)
    assert result.status == "rejected", result
    assert "revoked" in await line.refused(grant.ticket)
    # A new session of the same process gets a new lease, used on the same connection.
    async with site.connect(carol) as board:
        again = await lease(board)
        assert again.ticket.lease_id != grant.ticket.lease_id
        assert isinstance(await line.attach(again.ticket), pm.Attached)
        await line.works(again.ticket.lease_id)
    await line.aclose()


async def test_a_returned_lease_cannot_be_attached_again(site: Site) -> None:
    """A client that returned a lease (so its slot went back to the pool) cannot keep
    using its still-unexpired ticket: the board tells the worker, which refuses it."""
    worker = await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        line = await WorkerLine.open(carol, grant)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)
        await board.send(bm.LeaseReturn([grant.ticket.lease_id]))
        await worker.wait_revoked(grant.ticket.lease_id)
        assert grant.ticket.expires > time.time()  # the ticket itself is still valid
        assert "revoked" in await line.refused(grant.ticket)
        result = await line.run(grant.ticket.lease_id, 2, 3)
        assert result.status == "rejected", result
        await line.aclose()
