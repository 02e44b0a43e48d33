"""End to end in separate processes over real sockets: a ``p2prt board``, workers run by
bob, drivers run by carol (and others), as the runtime issue's scenario describes.

One board with users alice, bob, carol and dave, the cluster ``alice/friends`` (alice,
bob, carol) and two long-lived workers of bob's serve the module; tests that kill a
worker start their own extra one.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import p2prt
from p2prt.board.client import open_board_client
from p2prt.errors import NoCompatibleWorkerError, NotMemberError, WorkerCrashedError
from p2prt.identity import NodeIdentity, load_private_key
from p2prt.wire import board as bm
from p2prt.wire.messages import Message

from .procs import (
    PYTHON,
    READY_LINE,
    Board,
    Proc,
    as_user,
    make_key,
    pid_alive,
    start_worker,
    user_env,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

HOST = socket.gethostname()
CLUSTER = "alice/friends"


@dataclass
class Site:
    """The module's board, keys, and bob's two workers."""

    board: Board
    keys: dict[str, Path]
    folder: Path
    workers: list[Proc]

    def config(self, who: str) -> Path:
        return self.folder / "config" / who

    def worker(self, who: str, *extra: str, cluster: str = CLUSTER) -> Proc:
        """Start another worker run by ``who`` (each process with its own config folder)."""
        n = len(list((self.folder / "config").glob(f"{who}-worker*")))
        return start_worker(who, self.keys[who], self.board, cluster, self.config(f"{who}-worker{n}"), *extra)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(folder / "home"))
        for name in ("XDG_CONFIG_HOME", "P2PRT_KEY_PASSPHRASE", "P2PRT_USER", "P2PRT_BOARD", "SSH_AUTH_SOCK"):
            mp.delenv(name, raising=False)
        board = Board(folder / "board")
        workers: list[Proc] = []
        try:
            keys = {name: make_key(folder, name) for name in ("alice", "bob", "carol", "dave")}
            for name, key in keys.items():
                board.add_user(name, key)
            s = Site(board, keys, folder, workers)
            as_user("alice", keys["alice"], board, s.config("alice"), "cluster", "create", "friends")
            as_user("alice", keys["alice"], board, s.config("alice"), "cluster", "add", CLUSTER, "bob", "carol")
            workers.append(s.worker("bob", "--cpus", "1"))
            workers.append(s.worker("bob", "--cpus", "1", "--resources", "gpu=1"))
            for w in workers:
                w.wait_for(READY_LINE)
            yield s
        finally:
            for w in workers:
                w.stop()
            board.stop()


def test_workers_say_who_may_run_code(site: Site) -> None:
    for w in site.workers:
        listed = w.wait_for(READY_LINE).group(1)
        assert sorted(listed.strip().split(", ")) == ["alice", "bob", "carol"]
        assert f"offering 1 slot(s) to {CLUSTER}" in w.output()


DRIVER = """
import os, socket, sys, time
import p2prt

board, key = sys.argv[1], sys.argv[2]
info = p2prt.init("alice/friends", board=board, key=key, user="carol")
print("info", info.cluster, info.user, info.embedded)

@p2prt.remote(resources={"gpu": 1})
def where():
    return os.getppid()

print("gpu", p2prt.get(where.remote(), timeout=30))

@p2prt.remote
def hello():
    print("hi from the worker")
    raise ValueError("remote failure")

try:
    p2prt.get(hello.remote(), timeout=30)
except ValueError as exc:
    print("caught", isinstance(exc, p2prt.TaskError), "bob@" + socket.gethostname() in str(exc))

@p2prt.remote
def square(x):
    time.sleep(0.002)  # sleep-ok: the task's own simulated work
    return x * x, os.getppid()

results = p2prt.get([square.remote(i) for i in range(1000)], timeout=90)
print("checksum", sum(v for v, _ in results))
print("workers", " ".join(str(w) for w in sorted({w for _, w in results})))
p2prt.shutdown()
"""


def test_carol_runs_1000_tasks_on_bobs_two_workers(site: Site) -> None:
    script = site.folder / "driver.py"
    script.write_text(DRIVER)
    driver = Proc(
        [PYTHON, str(script), site.board.address, str(site.keys["carol"])],
        env=user_env("carol", site.config("carol-driver")),
        cwd=str(site.folder),
    )
    try:
        assert driver.wait_exit(timeout=80) == 0, driver.output()
    finally:
        driver.kill()
    out = driver.output().splitlines()
    assert "info alice/friends carol False" in out
    assert f"checksum {sum(i * i for i in range(1000))}" in out
    w1, w2 = site.workers
    assert f"workers {' '.join(str(p) for p in sorted([w1.pid, w2.pid]))}" in out
    assert f"gpu {w2.pid}" in out  # only bob's second worker offers gpu=1
    assert f"(hello bob@{HOST}) hi from the worker" in out
    assert "caught True True" in out


# -- a driver in this process ----------------------------------------------------------------


@pytest.fixture
def driver(site: Site) -> Iterator[Callable[..., p2prt.ClusterInfo]]:
    """``driver(user, cluster=...)``: ``p2prt.init`` in this process as that user."""

    def start(user: str, cluster: str = CLUSTER) -> p2prt.ClusterInfo:
        return p2prt.init(cluster, board=site.board.address, key=str(site.keys[user]), user=user)

    yield start
    p2prt.shutdown()


@p2prt.remote
def hold(gate: str, folder: str, i: int) -> tuple[int, int]:
    """Leave a marker naming this task's worker and executor, then wait for the gate."""
    import time

    Path(folder, f"{os.getppid()}-{os.getpid()}-{i}").touch()
    while not os.path.exists(gate):
        time.sleep(0.005)  # sleep-ok: poll interval of a bounded wait for the event
    return i, os.getppid()


def _markers(folder: Path, worker_pid: int) -> list[tuple[int, int]]:
    """(executor pid, task index) of the tasks that started on ``worker_pid``."""
    out = []
    for p in folder.iterdir():
        wpid, epid, i = (int(x) for x in p.name.split("-"))
        if wpid == worker_pid:
            out.append((epid, i))
    return out


def _run_with_a_killed_worker(site: Site, tmp_path: Path, max_retries: int) -> tuple[list[object], int, Proc]:
    """Six held tasks spread over three workers; SIGKILL the third one while its task
    runs, then open the gate. Returns each task's value or error, and the killed task."""
    victim = site.worker("bob", "--cpus", "1")
    victim.wait_for(READY_LINE)
    gate, folder = tmp_path / "gate", tmp_path / "started"
    folder.mkdir()
    task = hold.options(max_retries=max_retries)
    refs = [task.remote(str(gate), str(folder), i) for i in range(6)]
    executor = 0
    try:
        wait_until(lambda: bool(_markers(folder, victim.pid)), 30, "a task to start on the victim")
        (executor, index), = _markers(folder, victim.pid)
        victim.kill()
        gate.touch()
        outcomes: list[object] = []
        for ref in refs:
            try:
                outcomes.append(p2prt.get(ref, timeout=60))
            except WorkerCrashedError as exc:
                outcomes.append(exc)
        return outcomes, index, victim
    finally:
        gate.touch()
        victim.stop()
        if executor:  # orphaned by the kill, it ends once its task does (the gate is open)
            wait_until(lambda: not pid_alive(executor), 30, "the victim's orphaned executor to end")


def test_tasks_of_a_killed_worker_are_retried_elsewhere(
    site: Site, driver: Callable[..., p2prt.ClusterInfo], tmp_path: Path
) -> None:
    driver("carol")
    outcomes, _, _ = _run_with_a_killed_worker(site, tmp_path, max_retries=3)
    assert [o[0] for o in outcomes] == list(range(6))  # type: ignore[index]
    assert {o[1] for o in outcomes} <= {w.pid for w in site.workers}  # type: ignore[index]


def test_without_retries_a_killed_worker_is_a_worker_crash(
    site: Site, driver: Callable[..., p2prt.ClusterInfo], tmp_path: Path
) -> None:
    driver("carol")
    outcomes, index, _ = _run_with_a_killed_worker(site, tmp_path, max_retries=0)
    error = outcomes[index]
    assert isinstance(error, WorkerCrashedError) and isinstance(error, p2prt.TaskError)
    assert "worker crashed" in str(error) and f"bob@{HOST}" in str(error)
    for i, o in enumerate(outcomes):
        assert isinstance(o, WorkerCrashedError) or o[0] == i  # type: ignore[index]


def test_executors_end_with_their_killed_worker(
    site: Site, driver: Callable[..., p2prt.ClusterInfo], tmp_path: Path
) -> None:
    driver("carol")
    victim = site.worker("bob", "--cpus", "1")
    victim.wait_for(READY_LINE)
    gate, folder = tmp_path / "gate", tmp_path / "started"
    folder.mkdir()
    refs = [hold.remote(str(gate), str(folder), i) for i in range(6)]
    executor = 0
    try:
        wait_until(lambda: bool(_markers(folder, victim.pid)), 30, "a task to start on the victim")
        (executor, _), = _markers(folder, victim.pid)
        victim.kill()
        wait_until(lambda: not pid_alive(executor), 3, "the killed worker's executor to end")
    finally:
        gate.touch()
        victim.stop()
        if executor and pid_alive(executor):
            os.kill(executor, signal.SIGKILL)  # the orphan this test made
        p2prt.get(refs, timeout=60)


# -- membership ------------------------------------------------------------------------------


def test_a_non_member_cannot_run_a_driver(site: Site, driver: Callable[..., p2prt.ClusterInfo]) -> None:
    driver("dave")
    double = p2prt.remote(lambda x: 2 * x)
    with pytest.raises(NotMemberError, match="alice/friends"):
        p2prt.get(double.remote(1), timeout=30)


def test_a_non_member_cannot_start_a_worker(site: Site) -> None:
    worker = site.worker("dave", "--cpus", "1")
    try:
        code = worker.wait_exit(timeout=30)
    finally:
        worker.kill()
    out = worker.output()
    assert code != 0, out
    assert "p2prt: error:" in out and "alice/friends" in out and "member" in out, out
    assert "Traceback" not in out and "These users may run" not in out


def test_a_worker_stops_after_its_duration(site: Site) -> None:
    worker = site.worker("bob", "--cpus", "1", "--duration", "1s")
    try:
        worker.wait_for(READY_LINE)
        assert worker.wait_exit(timeout=30) == 0
    finally:
        worker.kill()
    assert "p2prt worker stopped" in worker.output()


# -- Python versions -------------------------------------------------------------------------


class FakeWorker:
    """A board session that registers a worker claiming another Python version; it never
    serves tasks. Runs its own trio loop in a thread; records the board's pushes."""

    def __init__(self, site: Site, user: str, cluster: str, python: str) -> None:
        self.identity = NodeIdentity.create(load_private_key(site.keys[user]), user)
        self.address = site.board.address
        self.cluster, self.python = cluster, python
        self.pushes: list[Message] = []
        self.registered = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeWorker:
        self._thread.start()
        assert self.registered.wait(30) and self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        async def main() -> None:
            async with open_board_client(self.address, self.identity) as client:
                await client.call(
                    lambda rid: bm.WorkerRegister(
                        rid, self.cluster, 4, {}, self.python, "old-python-host", [bm.Address("127.0.0.1", 9)]
                    )
                )
                self.registered.set()
                async with trio.open_nursery() as nursery:

                    async def collect() -> None:
                        async for msg in client.pushes:
                            self.pushes.append(msg)

                    nursery.start_soon(collect)
                    await trio.to_thread.run_sync(self._stop.wait)
                    nursery.cancel_scope.cancel()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to the test
            self.error = exc
            self.registered.set()


def test_a_worker_with_another_python_is_never_leased(
    site: Site, driver: Callable[..., p2prt.ClusterInfo]
) -> None:
    as_user("alice", site.keys["alice"], site.board, site.config("alice"), "cluster", "create", "old")
    with FakeWorker(site, "alice", "alice/old", "3.10"), FakeWorker(site, "bob", CLUSTER, "3.10") as other:
        driver("alice", "alice/old")
        double = p2prt.remote(lambda x: 2 * x)
        with pytest.raises(NoCompatibleWorkerError) as info:
            p2prt.get(double.remote(1), timeout=30)
        assert "Python 3.11" in str(info.value) and "3.10" in str(info.value)
        p2prt.shutdown()

        # In a cluster where it sits next to 3.11 workers, the 3.10 worker gets nothing.
        driver("alice")
        pids = p2prt.get([p2prt.remote(os.getppid).remote() for _ in range(20)], timeout=60)
        assert set(pids) <= {w.pid for w in site.workers}
    assert not [m for m in other.pushes if isinstance(m, bm.LeaseGranted)]


def make_blob(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def digest(x: bytes) -> tuple[int, str]:
    import hashlib

    return len(x), hashlib.sha256(x).hexdigest()


def _total(counters: dict[str, dict[str, int]], key: str) -> int:
    return sum(sum(entry[key].values()) for entry in counters.values())


def test_a_large_value_goes_from_worker_to_worker_not_through_the_driver(
    site: Site, driver: Callable[..., p2prt.ClusterInfo]
) -> None:
    import hashlib

    third = site.worker("bob", "--cpus", "1", "--resources", "tpu=1")
    try:
        third.wait_for(READY_LINE)
        driver("carol")
        size = 16 << 20
        make = p2prt.remote(make_blob).options(resources={"gpu": 1})  # on the gpu worker
        use = p2prt.remote(digest).options(resources={"tpu": 1})  # on the third worker
        big = make.remote(size, 3)
        expected = (size, hashlib.sha256(make_blob(size, 3)).hexdigest())
        assert p2prt.get(use.remote(big), timeout=60) == expected
        stats = p2prt.stats()
        assert _total(stats["peers"], "received") < 1 << 20  # the driver never got the value
        reports = list(stats["workers"].values())
        assert len(reports) == 2
        holder = next(r for r in reports if r["held"]["bytes"] >= size)
        user = next(r for r in reports if r is not holder)
        # The holder sent it to the other worker, which received it (counters on both ends).
        assert any(sum(e["sent"].values()) >= size for e in holder["peers"].values())
        assert any(sum(e["received"].values()) >= size for e in user["peers"].values())
        # The driver asks for it itself: now it comes to the driver, from the holder.
        assert hashlib.sha256(p2prt.get(big, timeout=60)).hexdigest() == expected[1]
        assert _total(p2prt.stats()["peers"], "received") >= size
    finally:
        p2prt.shutdown()
        third.stop()


def _blob_worker(site: Site) -> Proc:
    """Start a worker offering ``blob=1`` and wait until the board has it (and nothing
    else offering ``blob`` any more), so a rebuild finds exactly it."""
    import json

    worker = site.worker("bob", "--cpus", "1", "--resources", "blob=1")
    worker.wait_for(READY_LINE)

    def registered() -> bool:
        out = as_user("carol", site.keys["carol"], site.board, site.config("carol"), "status", "--json").stdout
        text = json.dumps(json.loads(out))
        return text.count("blob") == 1

    wait_until(registered, 30, "the board to list exactly one worker offering blob")
    return worker


def test_a_value_lost_with_its_holder_is_rebuilt_or_reported_lost(
    site: Site, driver: Callable[..., p2prt.ClusterInfo]
) -> None:
    victim = site.worker("bob", "--cpus", "1", "--resources", "blob=1")
    spare = None
    try:
        victim.wait_for(READY_LINE)
        driver("carol")
        size = 2 << 20
        make = p2prt.remote(make_blob).options(resources={"blob": 1})
        again = make.options(max_retries=1).remote(size, 7)
        once = make.options(max_retries=0).remote(size, 8)
        p2prt.wait([again, once], num_returns=2, timeout=60)
        victim.kill()
        spare = _blob_worker(site)
        assert p2prt.get(again, timeout=60) == make_blob(size, 7)  # made again on the spare
        with pytest.raises(p2prt.ObjectLostError, match="lost"):
            p2prt.get(once, timeout=60)
        # A task that takes a lost value as argument gets it rebuilt first.
        third = make.options(max_retries=2).remote(size, 9)
        p2prt.wait([third], timeout=60)
        spare.kill()
        spare = _blob_worker(site)
        use = p2prt.remote(digest)
        assert p2prt.get(use.remote(third), timeout=60)[0] == size
    finally:
        p2prt.shutdown()
        victim.stop()
        if spare is not None:
            spare.stop()


def test_the_driver_finds_a_leased_worker_through_the_dht(
    site: Site, driver: Callable[..., p2prt.ClusterInfo]
) -> None:
    driver("carol")
    runtime = p2prt._api._runtime
    assert runtime is not None
    wait_until(lambda: getattr(runtime, "dht", None) is not None, 30, "the driver's DHT node")
    worker = site.worker("bob", "--cpus", "1", "--resources", "probe=1")
    try:
        worker.wait_for(r"address published in the DHT")
        ref = p2prt.remote(digest).options(resources={"probe": 1}).remote(b"abc")
        assert p2prt.get(ref, timeout=60)[0] == 3
        assert runtime.stats["dht_found"] >= 1  # the worker's signed record gave its address
        report = p2prt.stats()["workers"]
        assert any(r.get("dht") for r in report.values())  # workers run DHT nodes too
    finally:
        p2prt.shutdown()
        worker.stop()


@pytest.mark.parametrize("paths", ["direct,punch,relay", "direct,relay"])
def test_a_worker_nobody_can_dial_is_reached_by_a_hole_punch_or_the_relay(
    site: Site, driver: Callable[..., p2prt.ClusterInfo], monkeypatch: pytest.MonkeyPatch, paths: str
) -> None:
    import hashlib

    # It listens on 127.0.0.2 but announces 127.0.0.3, where nothing listens: every
    # direct dial is refused. A hole punch is tried first: on loopback both sides'
    # SYNs are answered with RST at once, like behind a router without a firewall, so it
    # rarely meets (the NAT lab tests punching properly); then the board relays.
    monkeypatch.setenv("P2PRT_NAT_PATHS", paths)
    worker = site.worker("bob", "--cpus", "1", "--resources", "hidden=1", "--listen", "127.0.0.2", "--announce", "127.0.0.3")
    try:
        worker.wait_for(READY_LINE)
        driver("carol")
        runtime = p2prt._api._runtime
        assert runtime is not None
        payload = os.urandom(4 << 20)
        ref = p2prt.remote(digest).options(resources={"hidden": 1}).remote(payload)
        assert p2prt.get(ref, timeout=60) == (len(payload), hashlib.sha256(payload).hexdigest())
        assert runtime.stats["punch_attempts"] == (1 if "punch" in paths else 0)
        path = "punched" if runtime.stats["punched_connections"] else "relayed"
        assert runtime.stats[f"{path}_connections"] == 1
        used = [e for e in p2prt.stats()["peers"].values() if path in e["sent"]]
        assert used and used[0]["sent"][path] >= len(payload)
    finally:
        p2prt.shutdown()
        worker.stop()


def test_status_shows_that_workers_on_loopback_are_public(site: Site) -> None:
    import json

    def reach() -> list[str]:
        out = as_user("carol", site.keys["carol"], site.board, site.config("carol"), "status", "--json").stdout
        return [w["reachability"] for w in json.loads(out)["workers"]]

    wait_until(lambda: reach().count("public") >= 2, 30, "the board to dial the workers back")
    table = as_user("carol", site.keys["carol"], site.board, site.config("carol"), "status").stdout
    assert "reachability" in table and "public" in table


def test_a_worker_s_cpu_time_limit_stops_a_runaway_task(
    site: Site, driver: Callable[..., p2prt.ClusterInfo]
) -> None:
    worker = site.worker("bob", "--cpus", "1", "--resources", "limited=1", "--cpu-time-limit", "1",
                         "--memory-limit", "2G")
    try:
        worker.wait_for(READY_LINE)
        driver("carol")

        @p2prt.remote(resources={"limited": 1}, max_retries=0)
        def spin() -> None:
            while True:
                pass

        with pytest.raises(WorkerCrashedError, match="CPU time limit"):
            p2prt.get(spin.remote(), timeout=60)
    finally:
        worker.stop()
