"""Shared memory between the worker and its executors: descriptors travel with frames."""

from __future__ import annotations

import array
import os
import socket

import pytest

from p2prt.worker._attach import SharedFile, allocate
from p2prt.worker._execproto import FrameReader, SharedFrame, encode, encode_shared, fds_from_ancillary, segments
from p2prt.worker._shm import SHM_MIN, SharedBuffer


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send(sock: socket.socket, frames: list[bytes]) -> None:
    for data, fds in segments(frames):
        if fds:
            sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            data = memoryview(data)[sent:]
        sock.sendall(data)


def receive(sock: socket.socket, reader: FrameReader, count: int) -> list[object]:
    out: list[object] = []
    while len(out) < count:
        data, ancillary, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
        assert data
        reader.feed(data, fds_from_ancillary(ancillary))
        out += reader.messages()
    return out


def test_shared_buffers_cross_the_socketpair_by_descriptor() -> None:
    a, b = socket.socketpair()
    with a, b:
        payload = os.urandom(3 * SHM_MIN + 5)
        shared = SharedBuffer.copy_of(payload)
        frame = encode_shared(("run", [(1, b"f", memoryview(shared), [memoryview(b"small")])]))
        assert isinstance(frame, SharedFrame) and frame.shared == [shared]
        assert len(frame) < 200  # the payload is not in the frame
        reader = FrameReader()
        send(a, [encode(("a",)), frame, encode(("b",))])
        first, (kind, [(tid, fn, data, bufs)]), last = receive(b, reader, 3)
        assert (first, kind, tid, fn, last) == (("a",), "run", 1, b"f", ("b",))
        assert type(data) is memoryview and isinstance(data.obj, SharedBuffer)
        assert data == payload and bytes(bufs[0]) == b"small"
        data[:4] = b"\0\0\0\0"  # the same pages on both sides
        assert shared[:4] == b"\0\0\0\0"


def test_descriptors_are_closed_when_the_buffers_go() -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = FrameReader()
        before = open_fds()
        for _ in range(30):
            buf = memoryview(SharedBuffer.create(SHM_MIN))
            send(a, [encode_shared(("res", [(1, "ok", buf, [])]))])
            del buf
            (msg,) = receive(b, reader, 1)
            del msg
        assert open_fds() == before


def test_a_frame_claiming_missing_descriptors_is_flagged_and_strays_are_closed() -> None:
    frame = encode_shared(("res", [(1, "ok", memoryview(SharedBuffer.create(SHM_MIN)), [])]))
    reader = FrameReader()
    reader.feed(frame)  # without its descriptor
    (bad,) = reader.messages()
    assert bad[0] == "bad" and "descriptors" in bad[1]
    fd = os.memfd_create("stray")
    reader.feed(b"", [fd])
    reader.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_adopting_a_descriptor_smaller_than_announced_fails_and_closes_it() -> None:
    fd = os.memfd_create("small")
    os.ftruncate(fd, 10)
    with pytest.raises(ValueError, match="smaller"):
        SharedBuffer.adopt(fd, 100)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_memoryviews_of_ordinary_memory_are_copied_into_the_frame() -> None:
    frame = encode_shared(("rep", 1, True, [memoryview(b"abc"), bytearray(b"de")]))
    assert not isinstance(frame, SharedFrame)
    reader = FrameReader()
    reader.feed(frame)
    assert reader.messages() == [("rep", 1, True, [b"abc", bytearray(b"de")])]


def test_allocate_uses_shared_memory_only_for_large_buffers() -> None:
    small, large = allocate(100), allocate(SHM_MIN)
    assert type(small) is bytearray and len(small) == 100
    assert isinstance(large, SharedFile) and len(large) == SHM_MIN
