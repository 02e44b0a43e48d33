"""A hostile node speaking the Kademlia protocol cannot make lookups return forgeries.

Mallory runs a normal node, then uses the raw protocol: she stores forged records on
the honest nodes (their storage refuses them), and she answers lookups with forged
records herself (the lookup ignores them and still returns Alice's genuine record).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio

from p2prt.dht import DhtNode, DhtSettings
from p2prt.identity import NodeIdentity
from p2prt.wire.board import Address
from p2prt.wire.records import PeerRecord, encode_record, peer_key

from .conftest import HOST, open_nodes

pytestmark = pytest.mark.timeout(60)

EVIL = [Address("198.51.100.66", 6666)]
THOROUGH = DhtSettings(rpc_timeout=1.0, quorum=100)  # a lookup asks every close node


def forgeries(genuine: PeerRecord, alice: NodeIdentity, mallory: NodeIdentity) -> dict[str, bytes]:
    """Values Mallory stores (or serves) under Alice's peer key."""
    seq = genuine.seq
    other_user = dataclasses.replace(genuine, certificate=mallory.certificate.to_wire(), listen_addrs=EVIL, seq=seq + 1)
    other_user = dataclasses.replace(other_user, signature=mallory.sign(other_user.signed_bytes()))
    return {
        "bad-signature": encode_record(dataclasses.replace(genuine, listen_addrs=EVIL, seq=seq + 1)),
        "stale-seq": encode_record(PeerRecord.create(alice, EVIL, None, seq=seq - 1, ttl=600)),
        "other-user-certificate": encode_record(other_user),
        "expired": encode_record(PeerRecord.create(alice, EVIL, None, seq=seq + 1, ttl=60, now=time.time() - 3600)),
        "wrong-key": encode_record(PeerRecord.create(mallory, EVIL, None, seq=seq + 1, ttl=600)),
        "garbage": b"\x82\x01\x02",
    }


KINDS = ["bad-signature", "stale-seq", "other-user-certificate", "expired", "wrong-key", "garbage"]


async def store_raw(hostile: DhtNode, target: tuple[str, int], key: bytes, value: bytes) -> Any:
    """Mallory's raw ``store`` RPC; returns the target's answer."""

    async def call() -> Any:
        protocol = hostile._server.protocol
        return await protocol.store(target, hostile._server.node.id, key, value)

    return await hostile._thread.run(call())


async def serve_forgery(hostile: DhtNode, value: bytes) -> None:
    """From now on Mallory answers every ``find_value`` with ``value``."""

    async def patch() -> None:
        hostile._server.protocol.rpc_find_value = lambda sender, nodeid, key: {"value": value}

    await hostile._thread.run(patch())


async def test_honest_nodes_refuse_forged_stores(make_identity: Callable[..., NodeIdentity]) -> None:
    idents = [make_identity() for _ in range(5)]
    mallory = make_identity("mallory")
    with trio.fail_after(20):
        async with open_nodes([*idents, mallory]) as nodes:
            honest, hostile = nodes[:-1], nodes[-1]
            genuine = await honest[1].publish_peer([Address(HOST, 7001)])
            key = peer_key(idents[1].peer_id)
            for kind, value in forgeries(genuine, idents[1], mallory).items():
                for node in honest:
                    answer = await store_raw(hostile, node.address, key, value)
                    assert answer == (True, False), (kind, answer)
            for node in honest:
                assert await node.find_peer(idents[1].peer_id) == genuine
            refused = sum([(await node.statistics()).refused for node in honest])
            assert refused >= len(KINDS) * len(honest)


@pytest.mark.parametrize("kind", KINDS)
async def test_lookup_ignores_forged_answers(make_identity: Callable[..., NodeIdentity], kind: str) -> None:
    idents = [make_identity() for _ in range(4)]
    mallory = make_identity("mallory")
    with trio.fail_after(20):
        async with open_nodes([*idents, mallory], settings=THOROUGH) as nodes:
            honest, hostile = nodes[:-1], nodes[-1]
            genuine = await honest[1].publish_peer([Address(HOST, 7001)])
            await serve_forgery(hostile, forgeries(genuine, idents[1], mallory)[kind])
            for node in honest:
                assert await node.find_peer(idents[1].peer_id) == genuine
            if kind != "stale-seq":  # a stale record is valid, just older: not "invalid"
                assert sum([(await node.statistics()).invalid_seen for node in honest]) >= 1


async def test_only_forgeries_in_the_dht_means_none(make_identity: Callable[..., NodeIdentity]) -> None:
    idents = [make_identity() for _ in range(3)]
    mallory = make_identity("mallory")
    alice = make_identity()  # publishes nothing; Mallory forges her record
    with trio.fail_after(20):
        async with open_nodes([*idents, mallory], settings=THOROUGH) as nodes:
            honest, hostile = nodes[:-1], nodes[-1]
            unsigned = PeerRecord(alice.peer_id, alice.certificate.to_wire(), EVIL, None, 1, int(time.time()) + 600)
            forged = dataclasses.replace(unsigned, signature=mallory.sign(unsigned.signed_bytes()))
            await serve_forgery(hostile, encode_record(forged))
            for node in honest:
                assert await node.find_peer(alice.peer_id) is None  # the caller asks the board


@pytest.mark.parametrize(
    "answer",
    [{"value": 5}, {"value": b"x", "extra": 1}, [[b"short", HOST, 1]], [[b"\x00" * 20, HOST, "port"]], 7, None],
    ids=["value-int", "extra-key", "short-id", "port-str", "int", "none"],
)
async def test_malformed_answers_do_not_break_lookups(make_identity: Callable[..., NodeIdentity], answer: Any) -> None:
    idents = [make_identity() for _ in range(3)]
    with trio.fail_after(20):
        async with open_nodes([*idents, make_identity("mallory")], settings=THOROUGH) as nodes:
            honest, hostile = nodes[:-1], nodes[-1]
            genuine = await honest[0].publish_peer([Address(HOST, 7000)])

            async def patch() -> None:
                protocol = hostile._server.protocol
                protocol.rpc_find_value = lambda sender, nodeid, key: answer
                protocol.rpc_find_node = lambda sender, nodeid, key: answer

            await hostile._thread.run(patch())
            for node in honest:
                assert await node.find_peer(idents[0].peer_id) == genuine


async def test_malformed_requests_are_dropped(make_identity: Callable[..., NodeIdentity]) -> None:
    with trio.fail_after(20):
        async with open_nodes([make_identity() for _ in range(2)]) as (a, b):
            rec = await a.publish_peer([Address(HOST, 7000)])

            async def hostile_calls() -> list[Any]:
                protocol = b._server.protocol
                protocol._wait_timeout = 0.3
                bad = [
                    protocol.store(a.address, b"short", rec.key, b"v"),
                    protocol.find_value(a.address, b._server.node.id, b"short"),
                    protocol.find_node(a.address, 5, rec.key),
                    protocol.ping(a.address),  # wrong arity: no answer at all
                ]
                results = [await f for f in bad]
                protocol.transport.sendto(b"\x00" + b"\x01" * 20 + b"\xc1garbage", a.address)
                return results

            results = await b._thread.run(hostile_calls())
            assert results[:3] == [(True, False), (True, None), (True, None)]
            assert results[3] == (False, None)
            assert await b.find_peer(rec.peer_id) == rec  # a still serves
