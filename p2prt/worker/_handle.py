"""The pool's side of one executor subprocess: its state and its I/O loops.

Each executor has a writer loop (every frame queued since the last write goes out in one
``send_all``, then the signals that had to follow those frames, e.g. SIGINT after a
cancel), a reader loop (frames are decoded and handed to the pool one read at a time)
and an exit watcher. The pool owns the policy; this module only moves bytes and signals.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Callable
from typing import Any

import trio

from ._execproto import ANCILLARY_SIZE, FrameReader, fds_from_ancillary, segments
from ._exectypes import ExecTask

__all__ = ["ExecutorHandle"]

_RECV = 1 << 16
_MAX_RECV = 1 << 22


class ExecutorHandle:
    """The pool's view of one executor subprocess."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.proc: trio.Process | None = None
        self.stream: trio.SocketStream | None = None
        self.pid = 0
        self.ready = False
        self.inflight: dict[int, ExecTask] = {}  # in send order
        self.chunks: list[set[int]] = []  # ids without a result, per chunk in flight
        self.last_progress = 0.0  # trio time of the last result (or first chunk sent)
        self.progressed = False  # a result arrived since it last became busy
        self.fns: set[bytes] = set()
        self.outbox: list[bytes] = []  # frames (SharedFrame: with descriptors)
        self.writing = False  # the writer is sending
        self.after_send: list[int] = []  # signals to send once the outbox is written
        self.wake = trio.lowlevel.ParkingLot()
        self.blocked = 0  # nested "get" requests waiting
        self.nested: dict[int, tuple[int, trio.CancelScope]] = {}  # rid -> (task id, scope)
        self.cancel_sent: set[int] = set()
        self.force_cancelled: set[int] = set()
        self.timed_task: int | None = None
        self.deadline: trio.CancelScope | None = None
        self.timed_out: int | None = None
        self.killing = False
        self.fault = ""  # why the pool killed it as broken
        self.retiring = False
        self.dead = False
        self.eof = trio.Event()
        self.exited = trio.Event()
        self.changed = trio.Event()  # ready, end of stream or exit

    @property
    def runnable(self) -> bool:
        return self.ready and not (self.blocked or self.killing or self.retiring or self.dead)

    def queue(self, frame: bytes, *, then_signal: int | None = None) -> None:
        if not self.outbox and not self.writing and then_signal is None and type(frame) is bytes:
            # Nothing ahead of it: write now rather than wake the writer (one trip
            # through the scheduler less); the writer takes over whatever is left.
            frame = self._write_now(frame)
            if not frame:
                return
        self.outbox.append(frame)
        if then_signal is not None:
            self.after_send.append(then_signal)
        self.wake.unpark()

    def _write_now(self, frame: bytes) -> bytes:
        """Write what the socket takes without blocking; returns the rest."""
        if self.stream is None:
            return frame
        try:
            n = os.write(self.stream.socket.fileno(), frame)
        except OSError:  # would block, or the executor is gone: the writer finds out
            return frame
        return frame[n:]

    def signal(self, sig: int) -> None:
        """Signal the Python process (inside the sandbox too), if it is still ours."""
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.kill(self.pid or self.proc.pid, sig)
        except ProcessLookupError:
            pass

    async def wait_end(self) -> None:
        """Wait until the executor's stream has ended or its process exited, then give the
        other one a second to follow (killing the process if it does not)."""
        assert self.proc is not None
        while not (self.eof.is_set() or self.exited.is_set()):
            self.changed = trio.Event()
            await self.changed.wait()
        with trio.move_on_after(1.0):
            await self.eof.wait()
            await self.exited.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def watch_exit(self) -> None:
        """Set :attr:`exited` when the process ends."""
        assert self.proc is not None
        await self.proc.wait()
        self.exited.set()
        self.changed.set()

    async def write_loop(self) -> None:
        """Send queued frames (and then their signals) until the stream breaks."""
        assert self.stream is not None
        while True:
            while not self.outbox:
                await self.wake.park()
            frames, self.outbox = self.outbox, []
            signals, self.after_send = self.after_send, []
            self.writing = True
            try:
                for data, fds in segments(frames):
                    if fds:
                        await self._send_with_fds(data, fds)
                    else:
                        await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the executor is gone; the watcher handles it
            finally:
                self.writing = False
            for sig in signals:
                self.signal(sig)

    async def _send_with_fds(self, data: bytes | memoryview, fds: list[int]) -> None:
        """Send ``data`` with the descriptors attached to its first byte."""
        assert self.stream is not None
        sock = self.stream.socket
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        try:
            sent = await sock.sendmsg([data], ancillary)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent < len(data):
            await self.stream.send_all(memoryview(data)[sent:])

    async def read_loop(self, on_frames: Callable[[ExecutorHandle, list[Any]], None]) -> None:
        """Call ``on_frames(self, messages)`` with the frames of each read until the stream
        ends; then set :attr:`eof`."""
        assert self.stream is not None
        sock = self.stream.socket
        reader = FrameReader()
        try:
            while True:
                try:
                    size = min(max(_RECV, reader.wanted), _MAX_RECV)
                    data, ancillary, flags, _ = await sock.recvmsg(size, ANCILLARY_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data, ancillary, flags = b"", [], 0
                fds = fds_from_ancillary(ancillary)
                if flags & socket.MSG_CTRUNC:
                    self.fault = "it sent more descriptors than one read takes"
                if not data:
                    for fd in fds:
                        os.close(fd)
                    return
                reader.feed(data, fds)
                on_frames(self, reader.messages())
        finally:
            reader.close()
            self.eof.set()
            self.changed.set()

