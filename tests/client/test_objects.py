"""The owner's object store: reference counting that is safe from the garbage collector."""

from __future__ import annotations

import gc
import threading

from p2prt.client.objects import ObjectRef, ObjectStore, Stored, new_object_id


def test_release_never_takes_the_lock() -> None:
    # ObjectRef.__del__ runs whenever the collector runs, also inside the store's own
    # locked sections on the same thread: release must not block there.
    store = ObjectStore()
    oid = new_object_id()
    store.create(oid)
    store.hold(oid)
    done = threading.Event()

    def under_lock() -> None:
        with store._lock:
            store.release(oid)
        done.set()

    worker = threading.Thread(target=under_lock, daemon=True)
    worker.start()
    assert done.wait(10), "release blocked on the store's lock"


def test_values_go_with_their_last_ref_unless_they_escaped() -> None:
    store = ObjectStore()
    old, ObjectRef._tracker = ObjectRef._tracker, store
    try:
        kept, dropped, escaped = (new_object_id() for _ in range(3))
        for oid in (kept, dropped, escaped):
            store.create(oid)
        refs = {oid: ObjectRef(oid) for oid in (kept, dropped, escaped)}
        copy = ObjectRef(kept)  # a second ref to the same object
        refs[escaped].__reduce__()  # pickled into some task's arguments
        for oid in (kept, dropped, escaped):
            store.resolve(oid, Stored(b"x", []))
        del refs
        gc.collect()
        assert len(store) == 2
        assert store.done(kept) and store.done(escaped)
        del copy
        gc.collect()
        assert len(store) == 1  # only the escaped one
        pending = new_object_id()
        store.create(pending)
        ref = ObjectRef(pending)
        del ref
        gc.collect()
        assert len(store) == 2  # unresolved: kept until it resolves...
        store.resolve(pending, Stored(b"y", []))
        assert len(store) == 1  # ...then dropped
    finally:
        ObjectRef._tracker = old
