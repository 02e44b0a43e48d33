"""The board's relay hub: its operator's caps, without a network (the relay itself is
exercised end to end in tests/runtime/test_processes.py and tests/netlab)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from p2prt.board.relay import RelayHub
from p2prt.errors import P2prtError


def test_concurrent_relays_are_capped() -> None:
    hub = RelayHub(max_relays=2)
    tokens = {hub.offer("client", "worker"), hub.offer("client", "worker")}
    assert len(tokens) == 2 and all(len(t) == 16 for t in tokens)
    with pytest.raises(P2prtError, match="at most 2"):
        hub.offer("client", "worker")


async def test_a_relay_copies_at_most_its_rate(autojump_clock: trio.testing.MockClock) -> None:
    hub = RelayHub(rate=1 << 20)  # 1 MiB/s per direction
    source_in, source = trio.testing.memory_stream_pair()
    sink, sink_out = trio.testing.memory_stream_pair()
    payload = bytes(4 << 20)
    got = bytearray()

    async def feed() -> None:
        await source_in.send_all(payload)
        await source_in.aclose()

    async def drain() -> None:
        while chunk := await sink_out.receive_some():
            got.extend(chunk)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        nursery.start_soon(drain)
        await hub._pump(source, sink, b"", trio.CancelScope())  # type: ignore[arg-type]
        await sink.aclose()  # drain then sees the end
    assert bytes(got) == payload
    assert hub.bytes_relayed == len(payload)
    assert trio.current_time() - start >= 3.0  # 4 MiB at 1 MiB/s, on the mock clock
