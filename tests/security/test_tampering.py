"""A byte changed in flight on an established connection ends that connection with a
decryption failure; the worker or board on the other end keeps serving everyone else.

A TCP proxy between client and server (conftest :func:`start_proxy`) forwards whole
Noise frames and, when armed, flips one bit in the body of the next frame.
"""

from __future__ import annotations

import logging

import pytest
import trio

from p2prt.board.client import open_board_client
from p2prt.errors import DecryptionError, TransportError
from p2prt.identity.certificate import PeerId
from p2prt.wire import board as bm
from p2prt.wire import peer as pm

from .conftest import CLUSTER, WAIT, Site, WorkerLine, lease, start_proxy

pytestmark = pytest.mark.timeout(30)


def decryption_failures(caplog: pytest.LogCaptureFixture, peer: PeerId) -> list[str]:
    """What the servers logged about connections with ``peer`` ending in a failed
    decryption."""
    return [
        text
        for r in caplog.records
        if peer.short in (text := r.getMessage()) and "DecryptionError" in text and "failed authentication" in text
    ]


async def wait_for_log(caplog: pytest.LogCaptureFixture, peer: PeerId) -> list[str]:
    """The server logs the failure when its reader gets to it: wait for that (a bounded
    poll of the captured records; there is no other event to wait for)."""
    with trio.fail_after(WAIT):
        while not (found := decryption_failures(caplog, peer)):
            crashes = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not crashes, f"a server logged a crash: {crashes[0].getMessage()}"
            await trio.sleep(0.01)  # sleep-ok: polling captured log records, bounded by WAIT
    return found


async def test_tampered_frame_to_a_worker_ends_that_connection_only(
    site: Site, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2prt")
    worker = await site.start_worker(slots=2)
    carol, other = site.identity("carol"), site.identity("carol")
    async with site.connect(carol) as board, site.connect(other) as other_board:
        grant, other_grant = await lease(board), await lease(other_board)
        bystander = await WorkerLine.open(other, other_grant)
        assert isinstance(await bystander.attach(other_grant.ticket), pm.Attached)

        proxy = await start_proxy(nursery, grant.worker_addrs[0].port)
        line = await WorkerLine.open(carol, grant, port=proxy.port)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)
        await line.works(grant.ticket.lease_id)

        proxy.up.arm()  # the next frame from carol (her task) is changed on the way
        with pytest.raises(TransportError):
            await line.run(grant.ticket.lease_id, 2, 3)
        assert proxy.up.tampered.is_set()
        (logged,) = await wait_for_log(caplog, carol.peer_id)  # by the worker: carol's board session is intact
        assert "connection with carol" in logged and "ended" in logged
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the worker logged a crash"

        # The worker serves the other client, and carol again on a new connection.
        await bystander.works(other_grant.ticket.lease_id)
        again = await WorkerLine.open(carol, grant)
        assert isinstance(await again.attach(grant.ticket), pm.Attached)
        await again.works(grant.ticket.lease_id)
        assert worker.identity.peer_id == grant.ticket.worker_peer_id
        for open_line in (bystander, again):
            await open_line.aclose()


async def test_tampered_frame_from_a_worker_is_a_decryption_error_for_the_client(
    site: Site, nursery: trio.Nursery
) -> None:
    await site.start_worker()
    carol = site.identity("carol")
    async with site.connect(carol) as board:
        grant = await lease(board)
        proxy = await start_proxy(nursery, grant.worker_addrs[0].port)
        line = await WorkerLine.open(carol, grant, port=proxy.port)
        assert isinstance(await line.attach(grant.ticket), pm.Attached)

        proxy.down.arm()  # the worker's next frame (the result) is changed on the way
        with pytest.raises(DecryptionError):
            await line.run(grant.ticket.lease_id, 2, 3)
        await line.aclose()

        again = await WorkerLine.open(carol, grant)
        assert isinstance(await again.attach(grant.ticket), pm.Attached)
        await again.works(grant.ticket.lease_id)
        await again.aclose()


async def test_tampered_frame_to_the_board_ends_that_session_only(
    site: Site, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2prt")
    worker = await site.start_worker()
    proxy = await start_proxy(nursery, site.port)
    carol = site.identity("carol")
    async with site.connect("alice") as alice, open_board_client(f"127.0.0.1:{proxy.port}", carol) as carol_board:
        grant = await lease(carol_board)
        proxy.up.arm()  # carol's next frame (a request or a heartbeat) is changed on the way
        with pytest.raises(TransportError):
            with trio.fail_after(WAIT):
                await carol_board.call(lambda rid: bm.StatusRequest(rid, CLUSTER))
        (logged,) = await wait_for_log(caplog, carol.peer_id)  # by the board: carol has no worker connection
        assert "connection with carol" in logged and "ended" in logged
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "the board logged a crash"
        # The board dropped carol's session, and with it her lease ...
        await worker.wait_revoked(grant.ticket.lease_id)
        # ... and serves everyone else: alice's session, and carol again.
        with trio.fail_after(WAIT):
            st = await alice.call(lambda rid: bm.StatusRequest(rid, CLUSTER))
        assert [w["user"] for w in st["workers"]] == ["bob"]
        async with site.connect(carol) as again:
            assert again.user == "carol"
            assert (await lease(again)).ticket.worker_peer_id == grant.ticket.worker_peer_id
