"""NoiseStream honours trio's Stream contract and carries bytes intact."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from p2prt.errors import DecryptionError, TruncatedFrameError
from p2prt.transport import NoiseStream, noise_accept, noise_connect
from p2prt.wire import MAX_PLAINTEXT

from .conftest import make_identity

pytestmark = pytest.mark.timeout(60)

ALICE = make_identity("alice")
BOB = make_identity("bob")


async def _secure_pair(
    left: trio.abc.Stream, right: trio.abc.Stream
) -> tuple[NoiseStream, NoiseStream]:
    out: dict[str, NoiseStream] = {}

    async def accept() -> None:
        out["r"] = await noise_accept(right, BOB)

    async with trio.open_nursery() as n:
        n.start_soon(accept)
        out["l"] = await noise_connect(left, ALICE)
    return out["l"], out["r"]


async def memory_pair() -> tuple[NoiseStream, NoiseStream]:
    return await _secure_pair(*trio.testing.memory_stream_pair())


async def lockstep_pair() -> tuple[NoiseStream, NoiseStream]:
    return await _secure_pair(*trio.testing.lockstep_stream_pair())


async def test_check_two_way_stream() -> None:
    await trio.testing.check_two_way_stream(memory_pair, lockstep_pair)


async def test_peers_identify_each_other() -> None:
    a, b = await memory_pair()
    assert a.peer.user == "bob" and b.peer.user == "alice"
    assert a.peer.peer_id == BOB.peer_id and b.peer.peer_id == ALICE.peer_id
    assert b.peer.fingerprint == ALICE.certificate.fingerprint


@pytest.mark.parametrize("size", [0, 1, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 17, 1 << 20])
async def test_bytes_arrive_intact(size: int) -> None:
    a, b = await memory_pair()
    data = os.urandom(size)
    got = bytearray()

    async def receive() -> None:
        while len(got) < size:
            chunk = await b.receive_some(10_000)
            assert 0 < len(chunk) <= 10_000
            got.extend(chunk)

    async with trio.open_nursery() as n:
        n.start_soon(receive)
        await a.send_all(data)
        await a.send_all(memoryview(b"tail"))
    assert bytes(got[:size]) == data
    rest = got[size:]
    while len(rest) < 4:
        rest += await b.receive_some()
    assert rest == b"tail"
    assert a.bytes_sent == size + 4


async def test_noise_messages_never_exceed_65535_bytes() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await _secure_pair(left, right)
    data = os.urandom(5 * MAX_PLAINTEXT + 5)
    seen: list[int] = []
    buf = bytearray()
    async with trio.open_nursery() as n:
        n.start_soon(a.send_all, data)
        # Read the raw ciphertext under b and parse the 2-byte Noise frame lengths.
        while sum(length - 16 for length in seen) < len(data):
            buf += await b.transport_stream.receive_some()
            while len(buf) >= 2 and len(buf) >= 2 + (length := int.from_bytes(buf[:2], "big")):
                seen.append(length)
                del buf[: 2 + length]
    assert seen[:5] == [65535] * 5
    assert seen[5] == 5 + 16


async def test_tampered_transport_message_raises_decryption_error() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await _secure_pair(left, right)
    # Send a valid message, then corrupt one bit of the next one on the raw transport.
    await a.send_all(b"first")
    assert await b.receive_some() == b"first"
    ct = a._send_cipher.encrypt(b"second")
    tampered = bytearray(len(ct).to_bytes(2, "big") + ct)
    tampered[5] ^= 0x10
    await a.transport_stream.send_all(bytes(tampered))
    with pytest.raises(DecryptionError):
        await b.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()


async def test_truncated_noise_message_raises() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await _secure_pair(left, right)
    ct = a._send_cipher.encrypt(b"will be cut")
    await a.transport_stream.send_all((len(ct)).to_bytes(2, "big") + ct[:5])
    await a.transport_stream.aclose()
    with pytest.raises(TruncatedFrameError):
        await b.receive_some()


async def test_clean_eof_returns_empty() -> None:
    a, b = await memory_pair()
    await a.send_all(b"x")
    await a.aclose()
    assert await b.receive_some() == b"x"
    assert await b.receive_some() == b""


async def tcp_pair() -> tuple[NoiseStream, NoiseStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    return await _secure_pair(client, server)


@pytest.mark.parametrize("make_pair", [memory_pair, tcp_pair])
@pytest.mark.parametrize("into", [1, 1000, MAX_PLAINTEXT, 3 * MAX_PLAINTEXT + 1, 1 << 21])
async def test_receive_into_decrypts_into_the_callers_buffer(make_pair: object, into: int) -> None:
    a, b = await make_pair()  # type: ignore[operator]
    data = os.urandom(2 * MAX_PLAINTEXT + 100)
    parts = [b"head", memoryview(data), bytearray(b"tail")]
    expected = b"head" + data + b"tail"
    got = bytearray()
    async with trio.open_nursery() as n:
        n.start_soon(a.send_parts, parts)
        buf = bytearray(into)
        while len(got) < len(expected):
            if len(got) % 2:
                got += await b.receive_some()  # mixing both calls loses nothing
                continue
            k = await b.receive_into(memoryview(buf))
            assert 0 < k <= into
            got += buf[:k]
    assert got == expected
    assert b.bytes_received == a.bytes_sent == len(expected)
    await a.aclose()
    assert await b.receive_into(memoryview(bytearray(10))) == 0


async def test_receive_into_reports_tampering_and_truncation() -> None:
    a, b = await memory_pair()
    ct = bytearray(a._send_cipher.encrypt(b"x" * 100))
    ct[3] ^= 1
    await a.transport_stream.send_all(len(ct).to_bytes(2, "big") + bytes(ct))
    with pytest.raises(DecryptionError):
        await b.receive_into(memoryview(bytearray(200)))
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_into(memoryview(bytearray(200)))
    a, b = await memory_pair()
    await a.transport_stream.send_all(b"\x00\x05abc")
    with pytest.raises(DecryptionError, match="shorter than its tag"):
        await b.receive_into(memoryview(bytearray(200)))
    a, b = await memory_pair()
    await a.transport_stream.send_all(b"\x01\x00abc")
    await a.transport_stream.aclose()
    with pytest.raises(TruncatedFrameError):
        await b.receive_into(memoryview(bytearray(200)))


async def test_send_nowait_writes_small_messages_at_once() -> None:
    from p2prt.transport.noise_stream import NOWAIT_REFUSED, NOWAIT_SENT

    a, b = await tcp_pair()
    assert a.send_nowait([b"hel", b"lo"]) == NOWAIT_SENT
    assert await b.receive_some() == b"hello"
    assert a.send_nowait([os.urandom(MAX_PLAINTEXT + 1)]) == NOWAIT_REFUSED  # large: use send_parts
    assert a.send_nowait([b""]) == NOWAIT_REFUSED
    m, _ = await memory_pair()
    assert m.send_nowait([b"x"]) == NOWAIT_REFUSED  # not a socket


async def test_send_nowait_under_backpressure_keeps_order() -> None:
    from p2prt.transport.noise_stream import NOWAIT_PENDING, NOWAIT_REFUSED

    a, b = await tcp_pair()
    chunk = os.urandom(MAX_PLAINTEXT)
    sent = bytearray()
    outcome = None
    for _ in range(10_000):  # bounded: the socket buffers fill long before this
        outcome = a.send_nowait([chunk])
        if outcome != 1:
            break
        sent += chunk
    assert outcome == NOWAIT_PENDING
    sent += chunk
    assert a.send_nowait([b"after"]) == NOWAIT_REFUSED  # something is pending
    got = bytearray()

    async def drain() -> None:
        while len(got) < len(sent) + 5:
            got.extend(await b.receive_some())

    async with trio.open_nursery() as n:
        n.start_soon(drain)
        await a.flush()
        await a.send_all(b"after")
    assert got == sent + b"after"
