"""A real ``p2prt board`` process: persistence across restarts, the CLI, key pinning."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2prt.board.link import BoardLink
from p2prt.identity import NodeIdentity, generate_ed25519, keygen, write_private_key
from p2prt.wire import board as m

from .proc import BoardProcess, p2prt

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def board(tmp_path: Path) -> Iterator[BoardProcess]:
    proc = BoardProcess(tmp_path / "board")
    yield proc
    proc.stop()


def _user_key(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}_ed25519"
    write_private_key(path, generate_ed25519(comment=name))
    return path


def as_user(name: str, key: Path, board: BoardProcess, *args: str, check: bool = True) -> str:
    env = {**os.environ, "P2PRT_USER": name, "P2PRT_BOARD": board.address}
    res = p2prt(*args, "--key", str(key), check=check, env=env)
    return res.stdout + res.stderr


def test_accounts_clusters_survive_restart_and_workers_reregister(tmp_path: Path, board: BoardProcess) -> None:
    alice, bob = _user_key(tmp_path, "alice"), _user_key(tmp_path, "bob")
    p2prt("board", "add-user", "alice", "--key", f"{alice}.pub", "--data", str(board.data))
    p2prt("board", "add-user", "bob", "--key", f"{bob}.pub", "--data", str(board.data))
    board.start()
    as_user("alice", alice, board, "cluster", "create", "friends")
    as_user("alice", alice, board, "cluster", "add", "alice/friends", "bob")

    from p2prt.identity import load_private_key

    bob_identity = NodeIdentity.create(load_private_key(bob), "bob")

    async def register_worker(client: object) -> None:
        await client.call(  # type: ignore[attr-defined]
            lambda rid: m.WorkerRegister(
                rid, "alice/friends", 3, {}, "3.11", "bobs-laptop", [m.Address("127.0.0.1", 9)]
            )
        )

    async def scenario() -> None:
        link = BoardLink(board.address, bob_identity, on_connect=register_worker, min_backoff=0.05, max_backoff=0.3)
        async with trio.open_nursery() as n:
            with trio.fail_after(20):
                await n.start(link.run)
                first = await trio.to_thread.run_sync(
                    lambda: json.loads(as_user("alice", alice, board, "status", "--json"))
                )
                assert [w["host"] for w in first["workers"]] == ["bobs-laptop"]
                # Restart the board on the same port and data folder.
                await trio.to_thread.run_sync(board.stop)
                await trio.to_thread.run_sync(board.start)
                await link.wait_connected(generation=2)
                after = await trio.to_thread.run_sync(
                    lambda: json.loads(as_user("alice", alice, board, "status", "--json"))
                )
                assert [(w["host"], w["slots"], w["user"]) for w in after["workers"]] == [("bobs-laptop", 3, "bob")]
            n.cancel_scope.cancel()

    trio.run(scenario)
    out = as_user("alice", alice, board, "cluster", "members", "alice/friends")
    assert out.split() == ["alice", "bob"]
    users = p2prt("board", "list-users", "--data", str(board.data)).stdout
    assert "alice" in users and "bob" in users


def test_user_cli_on_open_board(tmp_path: Path, board: BoardProcess) -> None:
    board.registration = "open"
    board.start()
    env = {**os.environ, "P2PRT_BOARD": board.address}
    keygen()
    out = p2prt("register", "carol", env=env).stdout
    assert "registered carol" in out
    # register wrote user = "carol" to the config, so later commands claim carol.
    out = p2prt("cluster", "create", "lab", env=env).stdout
    assert "created carol/lab" in out
    listing = p2prt("cluster", "list", env=env).stdout
    assert "carol/personal" in listing and "carol/lab" in listing
    res = p2prt("cluster", "add", "carol/lab", "nobody", env=env, check=False)
    assert res.returncode == 1 and "unknown user 'nobody'" in res.stderr and "Traceback" not in res.stderr
    status = json.loads(p2prt("status", "--json", env=env).stdout)
    assert status == {"workers": [], "leases": [], "waiting": []}
    assert "Workers (0)" in p2prt("status", "--cluster", "carol/lab", env=env).stdout


def test_closed_board_refuses_unknown_key_with_advice(tmp_path: Path, board: BoardProcess) -> None:
    board.start()
    keygen()
    res = p2prt("cluster", "list", "--board", board.address, check=False)
    assert res.returncode == 1
    assert "p2prt board add-user" in res.stderr and "SHA256:" in res.stderr


def test_changed_board_key_is_refused(tmp_path: Path, board: BoardProcess) -> None:
    key = _user_key(tmp_path, "alice")
    p2prt("board", "add-user", "alice", "--key", f"{key}.pub", "--data", str(board.data))
    board.start()
    first = board.fingerprint
    as_user("alice", key, board, "cluster", "list")  # pins the key
    port = board.port
    board.stop()
    # Another board (new identity key) on the same address.
    impostor = BoardProcess(tmp_path / "impostor", port=port)
    p2prt("board", "add-user", "alice", "--key", f"{key}.pub", "--data", str(impostor.data))
    impostor.start()
    try:
        out = as_user("alice", key, impostor, "cluster", "list", check=False)
    finally:
        impostor.stop()
    assert "different identity key" in out
    assert first in out and impostor.fingerprint in out
    assert "known_boards" in out


def test_operator_cli_changes_reach_a_running_board(tmp_path: Path, board: BoardProcess) -> None:
    key = _user_key(tmp_path, "erin")
    board.start()
    assert "p2prt board add-user" in as_user("erin", key, board, "cluster", "list", check=False)
    p2prt("board", "add-user", "erin", "--key", f"{key}.pub", "--data", str(board.data))
    assert "erin/personal" in as_user("erin", key, board, "cluster", "list")
    p2prt("board", "remove-user", "erin", "--data", str(board.data))
    assert "p2prt board add-user" in as_user("erin", key, board, "cluster", "list", check=False)
