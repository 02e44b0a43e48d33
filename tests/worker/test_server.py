"""The worker's handling of one client connection, in-process on real loopback sockets.

Only the connection handler runs (``WorkerServer._serve_client`` under ``serve_secure``):
no board, no executors.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio

from p2prt.errors import ConnectionLostError, MalformedFrameError
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.transport import NoiseStream, open_secure_stream, serve_secure
from p2prt.wire import Ping, encode_frame
from p2prt.wire.messages import encode_message
from p2prt.worker.server import WorkerConfig, WorkerServer

pytestmark = pytest.mark.timeout(30)


async def _reset(stream: NoiseStream) -> None:
    """End the connection with a TCP reset (SO_LINGER 0), as a crashed host's kernel might."""
    sock = stream.transport_stream.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _garbage(stream: NoiseStream) -> None:
    await stream.send_all(encode_frame(b"\xff\xff"))
    await trio.aclose_forcefully(stream)


@pytest.mark.parametrize(
    ("end", "outcomes"),
    [
        # Who meets the reset first, the worker's read or its reply to the Ping, decides
        # whether the read sees an error or a plain end.
        pytest.param(_reset, (ConnectionLostError, type(None)), id="reset"),
        pytest.param(_garbage, (MalformedFrameError,), id="garbage"),
    ],
)
async def test_a_connection_that_breaks_ends_with_its_own_error_not_a_crash(
    caplog: pytest.LogCaptureFixture,
    end: Callable[[NoiseStream], Awaitable[None]],
    outcomes: tuple[type[BaseException | None], ...],
) -> None:
    # Regression: the handler's nursery wrapped the connection's error in an
    # ExceptionGroup, which serve_secure logged as a crashed handler, with a traceback,
    # for every client that went away uncleanly or sent garbage.
    worker = WorkerServer(
        WorkerConfig(board_address="127.0.0.1:9", cluster="alice/friends", slots=1),
        NodeIdentity.create(generate_ed25519(), "bob"),
    )
    ended: list[BaseException | None] = []
    done = trio.Event()

    async def handler(stream: NoiseStream) -> None:
        try:
            await worker._serve_client(stream)
        except BaseException as exc:
            ended.append(exc)
            raise
        else:
            ended.append(None)
        finally:
            done.set()

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(lambda task_status: serve_secure(handler, worker.identity, task_status=task_status))
        port = listeners[0].socket.getsockname()[1]
        stream = await open_secure_stream("127.0.0.1", port, NodeIdentity.create(generate_ed25519(), "mallory"))
        await stream.send_all(encode_frame(encode_message(Ping(1))))
        await end(stream)
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert len(ended) == 1 and type(ended[0]) in outcomes, ended
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert worker._clients == {}
