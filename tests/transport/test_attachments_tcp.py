"""Attachments over real TCP and Noise: large buffers arrive intact, in their own memory."""

from __future__ import annotations

import os

import pytest
import trio

from p2prt.errors import FrameTooLargeError
from p2prt.transport import DEFAULT_MAX_ATTACHMENT_BYTES, MessageChannel, NoiseStream
from p2prt.wire import peer as pm
from p2prt.wire.messages import readable
from p2prt.worker._attach import SharedFile, allocate

from .test_noise_stream import tcp_pair

pytestmark = pytest.mark.timeout(60)


async def channels(**receiver: object) -> tuple[MessageChannel, MessageChannel]:
    a, b = await tcp_pair()
    return (
        MessageChannel(a, max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES),
        MessageChannel(b, **receiver),  # type: ignore[arg-type]
    )


async def test_large_buffers_arrive_in_shared_memory() -> None:
    sender, receiver = await channels(max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES, allocate=allocate)
    big = os.urandom(5 << 20)
    mid = os.urandom(200_000)
    msgs = [
        pm.TaskResults([pm.TaskResult(1, "ok", b"pickle", [big, mid, b"tiny"])]),
        pm.TaskOutput(1, "stdout", "between"),
        pm.SubmitTasks([pm.TaskSpec(2, "lease", b"fn", memoryview(big), [], "t")]),
    ]
    async with trio.open_nursery() as n:
        n.start_soon(sender.send_many, msgs)
        got = [await receiver.receive() for _ in msgs]
    first, output, submit = got
    assert output == msgs[1]
    assert isinstance(submit, pm.SubmitTasks) and bytes(readable(submit.tasks[0].args)) == big
    assert isinstance(first, pm.TaskResults)
    assert [bytes(readable(b)) for b in first.results[0].buffers] == [big, mid, b"tiny"]
    assert isinstance(first, pm.TaskResults)
    big_in, mid_in, tiny_in = first.results[0].buffers
    assert isinstance(big_in, SharedFile)  # never mapped by the receiver
    assert type(mid_in) is bytearray and type(tiny_in) is bytes  # small ones stay in the CBOR


async def test_a_channel_without_attachments_refuses_them() -> None:
    sender, receiver = await channels()
    await sender.send(pm.TaskResults([pm.TaskResult(1, "ok", b"x" * 100_000, [])]))
    with pytest.raises(FrameTooLargeError, match="no attachments"):
        await receiver.receive()


async def test_many_messages_with_attachments_interleaved() -> None:
    sender, receiver = await channels(max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES, allocate=allocate)
    blobs = [os.urandom(n) for n in (70_000, 1 << 20, 3, 2 << 20, 65_536)]
    msgs = [pm.TaskResults([pm.TaskResult(i, "ok", b, [b])]) for i, b in enumerate(blobs)]

    async def send() -> None:
        for m in msgs:
            await sender.send(m)

    async with trio.open_nursery() as n:
        n.start_soon(send)
        got = [await receiver.receive() for _ in msgs]
    for sent, received in zip(msgs, got, strict=True):
        assert isinstance(received, pm.TaskResults)
        (s, r) = (sent.results[0], received.results[0])
        assert (r.task_id, bytes(readable(r.data)), [bytes(readable(b)) for b in r.buffers]) == (
            s.task_id,
            s.data,
            s.buffers,
        )
    stream = receiver.stream
    assert isinstance(stream, NoiseStream)
    assert stream.bytes_received == sender.stream.bytes_sent


async def test_outbox_writes_at_once_when_idle_and_keeps_order_under_load() -> None:
    from p2prt.transport import Outbox

    sender, receiver = await channels(max_attachment_bytes=DEFAULT_MAX_ATTACHMENT_BYTES)
    outbox = Outbox(sender)
    outbox.put(pm.TaskOutput(1, "stdout", "first"))  # no writer task yet: written by put
    assert await receiver.receive() == pm.TaskOutput(1, "stdout", "first")
    msgs = [pm.TaskOutput(i, "stdout", "x" * 50_000) for i in range(200)]
    async with trio.open_nursery() as n:
        n.start_soon(outbox.run)
        for m in msgs:
            outbox.put(m)
        got = [await receiver.receive() for _ in msgs]
        n.cancel_scope.cancel()
    assert got == msgs
