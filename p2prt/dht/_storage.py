"""What one DHT node keeps for others: verified records only, newest ``seq`` per key.

Kademlia lets any node store any value under any key. :class:`RecordStorage` is the
``kademlia.storage.IStorage`` a p2prt node runs with, so every value that arrives —
by a ``store`` RPC, by a neighbour handing over keys, or by this node itself — passes
:meth:`RecordStorage.offer`: it must decode to a record of :mod:`p2prt.wire.records`
that verifies (signature, certificate, expiry, size, optionally the user), belongs under
that key, and is newer than what is kept. Expired records are dropped when read.

It runs on the DHT's asyncio thread only; it does no I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kademlia.storage import IStorage

from ..errors import InvalidRecordError, ProtocolError, StaleRecordError
from ..identity.certificate import NodeCertificate
from ..wire.records import DhtRecord, decode_record, is_newer, verify_record

__all__ = ["RecordStorage", "check_value", "MAX_ENTRIES"]

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000
"""Most records one node keeps; new keys are refused beyond it."""


def check_value(
    key: bytes,
    value: object,
    *,
    now: float,
    allowed: Callable[[NodeCertificate], bool] | None = None,
) -> DhtRecord:
    """Decode and verify ``value`` found or offered under ``key``.

    Raises :class:`ProtocolError` subclasses (:class:`InvalidRecordError` for a value
    that is not bytes or belongs under another key).
    """
    if not isinstance(value, bytes):
        raise InvalidRecordError(f"a DHT value is bytes, got {type(value).__name__}")
    rec = decode_record(value)
    verify_record(rec, now=now, allowed=allowed)
    if rec.key != key:
        raise InvalidRecordError(f"record for peer {rec.author.short} is stored under another key")
    return rec


@dataclass(slots=True)
class _Entry:
    stored: float  # time.monotonic() when stored or last refreshed
    value: bytes
    record: DhtRecord


class RecordStorage(IStorage):  # type: ignore[misc]  # kademlia has no type hints
    """Verified records by key. ``now`` gives Unix time (tests pass a fake clock)."""

    def __init__(
        self,
        *,
        allowed: Callable[[NodeCertificate], bool] | None = None,
        now: Callable[[], float] = time.time,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._data: dict[bytes, _Entry] = {}
        self._allowed = allowed
        self._now = now
        self._max = max_entries
        self.refused = 0

    def offer(self, key: bytes, value: object) -> bool:
        """Keep ``value`` under ``key`` if it verifies and is newer; True when kept (or
        already held byte for byte)."""
        try:
            rec = check_value(key, value, now=self._now(), allowed=self._allowed)
            assert isinstance(value, bytes)
            current = self._live(key)
            if current is not None and not is_newer(rec, current.record):
                if current.value == value:
                    current.stored = time.monotonic()
                    return True
                raise StaleRecordError(f"seq {rec.seq} is not above the stored {current.record.seq}")
            if current is None and len(self._data) >= self._max:
                self._cull()
                if len(self._data) >= self._max:
                    raise InvalidRecordError("storage is full")
        except (ProtocolError, ValueError, TypeError) as exc:
            self.refused += 1
            log.info("refused a DHT value under %s: %s", key.hex()[:12] if isinstance(key, bytes) else "?", exc)
            return False
        self._data.pop(key, None)
        self._data[key] = _Entry(time.monotonic(), value, rec)
        return True

    def record(self, key: bytes) -> DhtRecord | None:
        """The live record under ``key``, decoded."""
        entry = self._live(key)
        return None if entry is None else entry.record

    def _live(self, key: bytes) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and self._now() >= entry.record.expires:
            del self._data[key]
            return None
        return entry

    def _cull(self) -> None:
        now = self._now()
        for key in [k for k, e in self._data.items() if now >= e.record.expires]:
            del self._data[key]

    def __len__(self) -> int:
        self._cull()
        return len(self._data)

    # -- IStorage -------------------------------------------------------------------------

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.offer(key, value)

    def __getitem__(self, key: bytes) -> bytes:
        entry = self._live(key)
        if entry is None:
            raise KeyError(key)
        return entry.value

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        entry = self._live(key)
        return default if entry is None else entry.value

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        self._cull()
        limit = time.monotonic() - seconds_old
        return [(k, e.value) for k, e in self._data.items() if e.stored <= limit]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self._cull()
        return iter([(k, e.value) for k, e in self._data.items()])
