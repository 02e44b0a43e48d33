"""A board that comes back with another identity key, on the same address, is refused
by scripts and by workers (the key pinned on first use in ``known_boards``).

In process, over real sockets: one board serves a port, stops, and an impostor board
(its own key, the same users' public keys) takes over the port.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from p2prt.board.client import open_board_client
from p2prt.errors import BoardKeyChangedError
from p2prt.identity import NodeIdentity, generate_ed25519
from p2prt.identity.known_boards import KnownBoards
from p2prt.transport._errors import unwrap_single_group
from p2prt.worker.server import WorkerConfig, WorkerServer

from .conftest import WAIT, start_board

pytestmark = pytest.mark.timeout(30)


async def test_a_changed_board_key_is_refused_by_scripts_and_workers(nursery: trio.Nursery, tmp_path: Path) -> None:
    keys = {name: generate_ed25519(comment=name) for name in ("bob", "carol")}
    worker_ended = trio.Event()
    worker_error: list[BaseException] = []

    async with trio.open_nursery() as first:
        board, port = await start_board(first, tmp_path / "board")
        for name, key in keys.items():
            board.store.add_user(name, [key.public], now=time.time())
        address = f"127.0.0.1:{port}"
        async with open_board_client(address, NodeIdentity.create(keys["carol"], "carol")) as carol:
            assert carol.board_key == board.board_key.public
        assert KnownBoards().lookup(address) == board.board_key.public  # pinned

        worker = WorkerServer(
            WorkerConfig(address, "bob/personal", slots=1, listen_host="127.0.0.1"),
            NodeIdentity.create(keys["bob"], "bob"),
        )

        async def run_worker(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with unwrap_single_group():
                    await worker.run(task_status=task_status)
            except BoardKeyChangedError as exc:
                worker_error.append(exc)
            finally:
                worker_ended.set()

        with trio.fail_after(WAIT):
            await nursery.start(run_worker)
        assert worker.board_key == board.board_key.public
        first.cancel_scope.cancel()  # the board goes away ...

    # ... and another board, with its own key, answers on its address.
    impostor, again = await start_board(nursery, tmp_path / "impostor", port=port)
    assert again == port and impostor.fingerprint != board.fingerprint
    for name, key in keys.items():
        impostor.store.add_user(name, [key.public], now=time.time())

    with trio.fail_after(WAIT), pytest.raises(BoardKeyChangedError) as info:
        async with open_board_client(address, NodeIdentity.create(keys["carol"], "carol")):
            pass
    text = str(info.value)
    assert board.fingerprint in text and impostor.fingerprint in text and "known_boards" in text

    # The worker reconnects on its own, meets the impostor, and stops rather than take
    # tickets from it.
    with trio.fail_after(WAIT):
        await worker_ended.wait()
    assert len(worker_error) == 1, "the worker did not stop with BoardKeyChangedError"
    assert not impostor.sessions, "a peer kept a session with the impostor"
    assert worker.board_key == board.board_key.public
