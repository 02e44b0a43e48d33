"""RecordStorage: what a node keeps for others (no network)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from p2prt.dht._storage import RecordStorage, check_value
from p2prt.errors import InvalidRecordError, RecordOwnerError
from p2prt.identity import NodeIdentity
from p2prt.wire.board import Address
from p2prt.wire.records import ObjectLocation, PeerRecord, encode_record, peer_key

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def alice(make_identity: Callable[..., NodeIdentity]) -> NodeIdentity:
    return make_identity("alice", now=T0)


def peer(ident: NodeIdentity, seq: int, ttl: float = 600, port: int = 7000) -> PeerRecord:
    return PeerRecord.create(ident, [Address("192.0.2.1", port)], None, seq=seq, ttl=ttl, now=T0)


def test_keeps_a_valid_record(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock())
    rec = peer(alice, 1)
    assert store.offer(rec.key, encode_record(rec))
    assert store.get(rec.key) == encode_record(rec)
    assert store[rec.key] == encode_record(rec)
    assert store.record(rec.key) == rec
    assert list(store) == [(rec.key, encode_record(rec))]
    assert len(store) == 1


def test_newer_seq_replaces_older_is_refused(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock())
    old, new = peer(alice, 1, port=1), peer(alice, 2, port=2)
    assert store.offer(new.key, encode_record(new))
    assert not store.offer(old.key, encode_record(old))  # stale
    assert store.record(new.key) == new
    assert store.refused == 1
    assert store.offer(new.key, encode_record(new))  # the same record again: kept
    newer = peer(alice, 3, port=3)
    store[newer.key] = encode_record(newer)  # the IStorage way
    assert store.record(newer.key) == newer


def test_equal_seq_different_bytes_is_refused(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock())
    a, b = peer(alice, 5, port=1), peer(alice, 5, port=2)
    assert store.offer(a.key, encode_record(a))
    assert not store.offer(b.key, encode_record(b))
    assert store.record(a.key) == a


def test_record_under_another_key_is_refused(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock())
    rec = peer(alice, 1)
    wrong = peer_key(b"\x00" * 32)
    assert not store.offer(wrong, encode_record(rec))
    with pytest.raises(InvalidRecordError, match="another key"):
        check_value(wrong, encode_record(rec), now=T0)
    assert store.get(wrong) is None


@pytest.mark.parametrize("value", [None, 7, "text", [1], b"", b"\xff" * 10])
def test_garbage_is_refused(alice: NodeIdentity, value: object) -> None:
    store = RecordStorage(now=Clock())
    assert not store.offer(peer_key(alice.peer_id), value)
    assert len(store) == 0


def test_forged_signature_is_refused(alice: NodeIdentity, make_identity: Callable[..., NodeIdentity]) -> None:
    import dataclasses

    mallory = make_identity("mallory", now=T0)
    rec = peer(alice, 9)
    forged = dataclasses.replace(rec, signature=mallory.sign(rec.signed_bytes()))
    store = RecordStorage(now=Clock())
    assert not store.offer(rec.key, encode_record(forged))


def test_expired_records_are_dropped_when_read(alice: NodeIdentity) -> None:
    clock = Clock()
    store = RecordStorage(now=clock)
    rec = peer(alice, 1, ttl=60)
    assert store.offer(rec.key, encode_record(rec))
    clock.now = T0 + 61
    assert store.get(rec.key) is None
    with pytest.raises(KeyError):
        store[rec.key]
    assert len(store) == 0
    assert not store.offer(rec.key, encode_record(rec))  # and refused when offered again


def test_allowed(alice: NodeIdentity, make_identity: Callable[..., NodeIdentity]) -> None:
    bob = make_identity("bob", now=T0)
    store = RecordStorage(now=Clock(), allowed=lambda cert: cert.user == "alice")
    a, b = peer(alice, 1), peer(bob, 1)
    assert store.offer(a.key, encode_record(a))
    assert not store.offer(b.key, encode_record(b))
    with pytest.raises(RecordOwnerError):
        check_value(b.key, encode_record(b), now=T0, allowed=lambda cert: cert.user == "alice")


def test_full_storage_refuses_new_keys(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock(), max_entries=2)
    recs = [ObjectLocation.create(alice, bytes([i]) * 8, 1, seq=1, ttl=60, now=T0) for i in range(3)]
    assert store.offer(recs[0].key, encode_record(recs[0]))
    assert store.offer(recs[1].key, encode_record(recs[1]))
    assert not store.offer(recs[2].key, encode_record(recs[2]))
    newer = ObjectLocation.create(alice, bytes([0]) * 8, 2, seq=2, ttl=60, now=T0)
    assert store.offer(newer.key, encode_record(newer))  # replacing is still fine


def test_iter_older_than(alice: NodeIdentity) -> None:
    store = RecordStorage(now=Clock())
    rec = peer(alice, 1)
    store.offer(rec.key, encode_record(rec))
    assert store.iter_older_than(3600) == []
    assert store.iter_older_than(0) == [(rec.key, encode_record(rec))]
