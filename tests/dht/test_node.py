"""DHT nodes on 127.0.0.1 in one process: publish, resolve, client mode, refresh, cancel."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import trio

from p2prt.dht import DhtSettings, open_dht_node
from p2prt.errors import DhtError
from p2prt.identity import NodeIdentity
from p2prt.wire.board import Address
from p2prt.wire.records import PeerRecord

from .conftest import FAST, HOST, open_nodes

pytestmark = pytest.mark.timeout(60)

MakeIdentity = Callable[..., NodeIdentity]


def addr_of(i: int) -> list[Address]:
    return [Address(HOST, 20000 + i)]


async def test_twenty_nodes_resolve_each_other(make_identity: MakeIdentity) -> None:
    idents = [make_identity() for _ in range(20)]
    with trio.fail_after(30):
        async with open_nodes(idents) as nodes:
            records = [await node.publish_peer(addr_of(i)) for i, node in enumerate(nodes)]
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                found: dict[tuple[int, int], PeerRecord | None] = {}

                async def resolve(i: int, j: int) -> None:
                    found[i, j] = await nodes[i].find_peer(idents[j].peer_id)

                for i in range(len(nodes)):
                    for j in range(len(nodes)):
                        nursery.start_soon(resolve, i, j)
            elapsed = time.perf_counter() - start
            assert all(found[i, j] == records[j] for i, j in found), [k for k, v in found.items() if v != records[k[1]]]
            assert len(found) == 400
            print(f"20 nodes, 400 lookups in {elapsed * 1000:.0f} ms")


async def test_missing_peer_is_none(make_identity: MakeIdentity) -> None:
    with trio.fail_after(10):
        async with open_nodes([make_identity() for _ in range(3)]) as nodes:
            assert await nodes[1].find_peer(make_identity().peer_id) is None
            assert await nodes[1].find_location(b"nothing") is None


async def test_lone_node_finds_its_own_record(make_identity: MakeIdentity) -> None:
    ident = make_identity()
    with trio.fail_after(10):
        async with open_dht_node(ident, HOST, settings=FAST) as node:
            rec = await node.publish_peer(addr_of(0))
            assert await node.find_peer(ident.peer_id) == rec


async def test_republish_has_a_higher_seq_and_wins(make_identity: MakeIdentity) -> None:
    idents = [make_identity() for _ in range(4)]
    with trio.fail_after(10):
        async with open_nodes(idents) as nodes:
            first = await nodes[1].publish_peer(addr_of(1))
            second = await nodes[1].publish_peer(addr_of(2), Address("203.0.113.9", 40000))
            assert second.seq > first.seq
            for node in nodes:
                assert await node.find_peer(idents[1].peer_id) == second


async def test_records_are_refreshed_before_they_expire(make_identity: MakeIdentity) -> None:
    settings = DhtSettings(rpc_timeout=1.0, peer_ttl=2.0, location_ttl=2.0, refresh_fraction=0.25)
    idents = [make_identity() for _ in range(3)]
    with trio.fail_after(10):
        async with open_nodes(idents, settings=settings) as nodes:
            published: list[PeerRecord] = []
            refreshed = trio.Event()

            def seen(rec: object) -> None:
                if isinstance(rec, PeerRecord):
                    published.append(rec)
                    if len(published) >= 3:
                        refreshed.set()

            nodes[2]._on_publish = seen
            await nodes[2].publish_peer(addr_of(2))
            await nodes[2].publish_location(b"obj", 5)
            await refreshed.wait()  # two refreshes, about 0.5 s apart
            assert published[0].seq < published[1].seq < published[2].seq
            got = await nodes[0].find_peer(idents[2].peer_id)
            assert got is not None and got.seq >= published[1].seq
            loc = await nodes[0].find_location(b"obj")
            assert loc is not None and loc.size == 5


async def test_location_publish_find_remove(make_identity: MakeIdentity) -> None:
    idents = [make_identity() for _ in range(5)]
    with trio.fail_after(10):
        async with open_nodes(idents) as nodes:
            oid = b"\x42" * 16
            published = await nodes[3].publish_location(oid, 64 << 20)
            for node in nodes:
                loc = await node.find_location(oid)
                assert loc == published
                assert loc is not None and loc.holder == idents[3].peer_id
            await nodes[3].remove_location(oid)
            for node in nodes:
                assert await node.find_location(oid) is None
            # Another holder (the object rebuilt elsewhere) publishes later and wins.
            again = await nodes[4].publish_location(oid, 64 << 20)
            assert await nodes[0].find_location(oid) == again


async def test_client_nodes_stay_out_of_routing_tables(make_identity: MakeIdentity) -> None:
    with trio.fail_after(20):
        async with open_nodes([make_identity() for _ in range(6)]) as servers:
            boot = servers[0].address
            clients_ids = [make_identity("bob") for _ in range(3)]
            async with open_nodes(clients_ids, bootstrap=boot, serve=False) as clients:
                for i, client in enumerate(clients):
                    await client.publish_peer(addr_of(100 + i))
                    await client.publish_location(bytes([i]) * 8, i)
                for client in clients:
                    for other in clients_ids:
                        assert await client.find_peer(other.peer_id) is not None
                    assert len(await client.neighbors()) >= 5  # it routes through servers
                    assert (await client.statistics()).stored == 0  # and keeps nothing
                for server in servers:
                    for other in clients_ids:
                        assert await server.find_peer(other.peer_id) is not None
                client_addrs = {c.address for c in clients}
                for server in servers:
                    table = set(await server.neighbors())
                    assert table.isdisjoint(client_addrs)
                    assert {s.address for s in servers} - {server.address} <= table


async def test_observed_address(make_identity: MakeIdentity) -> None:
    with trio.fail_after(10):
        async with open_nodes([make_identity(), make_identity()]) as (a, b):
            assert await b.observed_address(a.address) == b.address


async def test_allowed_filters_records(make_identity: MakeIdentity) -> None:
    alice_only = {"allowed": lambda cert: cert.user == "alice"}
    with trio.fail_after(10):
        async with open_nodes([make_identity() for _ in range(3)], **alice_only) as nodes:
            bob = make_identity("bob")
            async with open_dht_node(bob, HOST, bootstrap=[nodes[0].address], settings=FAST) as outsider:
                await outsider.publish_peer(addr_of(9))
                assert await nodes[1].find_peer(bob.peer_id) is None
                stats = [await n.statistics() for n in nodes]
                assert sum(s.refused for s in stats) >= 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "localhost"])
async def test_must_bind_a_specific_address(make_identity: MakeIdentity, host: str) -> None:
    with pytest.raises(DhtError, match=r"specific address|IP address"):
        async with open_dht_node(make_identity(), host):
            pass  # pragma: no cover


async def test_port_in_use(make_identity: MakeIdentity) -> None:
    with trio.fail_after(10):
        async with open_dht_node(make_identity(), HOST) as a:
            with pytest.raises(DhtError, match="cannot bind"):
                async with open_dht_node(make_identity(), HOST, a.address[1]):
                    pass  # pragma: no cover


async def test_closed_node_refuses_calls(make_identity: MakeIdentity) -> None:
    with trio.fail_after(10):
        async with open_dht_node(make_identity(), HOST) as node:
            await node.aclose()
            await node.aclose()
            with pytest.raises(DhtError, match="closed"):
                await node.find_peer(bytes(32))


async def test_cancelled_lookup_returns_promptly_and_the_node_stays_healthy(make_identity: MakeIdentity) -> None:
    slow = DhtSettings(rpc_timeout=30.0)
    a_id, b_id, c_id = make_identity(), make_identity(), make_identity()
    with trio.fail_after(10):
        async with open_dht_node(b_id, HOST, settings=slow) as b:
            async with open_dht_node(a_id, HOST, settings=slow) as a:
                assert await b.bootstrap([a.address]) == 1
                assert await b.neighbors() == [a.address]
                dead = a.address
            # a is gone: b's only neighbour no longer answers; its timeout is 30 s.
            start = trio.current_time()
            with trio.move_on_after(0.3) as scope:
                await b.find_peer(c_id.peer_id)
            assert scope.cancelled_caught
            with trio.move_on_after(0.3) as scope:
                await b.bootstrap([dead])
            assert scope.cancelled_caught
            assert trio.current_time() - start < 2
            # The loop thread still works. (A lookup from b would still wait for the dead
            # node once: the cancelled request never timed out, so it was not removed.)
            assert (await b.statistics()).neighbors == 1
            async with open_dht_node(c_id, HOST, settings=slow) as c:
                assert await b.observed_address(c.address) == b.address
                assert await b.bootstrap([c.address]) == 1
