"""A live board and a live worker under garbage while a real script keeps computing.

Real processes on loopback with real Noise: ``p2prt board``, a ``p2prt worker`` run by
bob (2 slots) for ``alice/friends``, and a driver script run by carol that submits
rounds of tasks (one with a 200 kB argument, sent as an attachment) and checks every
result. While the driver runs, this process attacks the board and the worker at once,
for 5 s in the default run and 30 s in the slow one:

- random bytes, truncated and oversized Noise frames, a valid handshake message 1 and
  then garbage, before any handshake;
- a complete handshake (as mallory: a user of the board, not a member of the cluster),
  then garbage ciphertext, then malformed frames and CBOR, then well-formed requests
  with hostile values;
- a lease of alice's attached at the worker, with garbage functions and arguments for
  its executors;
- connections held open without a word, and bursts of many handshakes at once.

Every attack waits for what the server must do (close the connection after garbage it
cannot decrypt or decode, answer each request) within a deadline. Afterwards the
driver has finished every round correctly, kept completing rounds during the attack,
the board and the worker are still running and serve a fresh client, and neither
logged an error or a traceback.
"""

from __future__ import annotations

import pickle
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
import trio

import p2prt
from p2prt.board.client import open_board_client
from p2prt.identity import NodeIdentity, SshKey, load_private_key
from p2prt.transport import MessageChannel, NoiseStream, open_secure_stream
from p2prt.transport.tcp import HANDSHAKE_TIMEOUT
from p2prt.wire import board as bm
from p2prt.wire import peer as pm
from p2prt.wire.attachments import ATTACHED_FLAG
from p2prt.wire.control import ErrorReply, Goodbye, Ping
from p2prt.wire.frames import FRAME_HEADER, NOISE_HEADER, encode_frame
from p2prt.wire.handshake import NoiseHandshake
from p2prt.wire.messages import Message, encode_message

from .procs import PYTHON, READY_LINE, Board, Proc, as_user, make_key, start_worker, user_env

CLUSTER = "alice/friends"
SERVER_REACTS = 5.0
"""Seconds a server may take to close a connection after garbage, or to answer."""
WAIT_FOR_CLOSE = 0.3
"""Seconds an attack waits for a close the server does not owe (it may wait for more
bytes until its handshake timeout); then the attack closes itself."""

DRIVER = r"""
import os, sys, time
import p2prt

board, key, stop = sys.argv[1], sys.argv[2], sys.argv[3]
p2prt.init("alice/friends", board=board, key=key, user="carol")

@p2prt.remote
def mix(i, r, blob):
    return (i * 7919 + r) ^ len(blob), blob[-8:]

rounds = tasks = 0
give_up = time.monotonic() + 600
while not os.path.exists(stop):
    if time.monotonic() > give_up:
        sys.exit("the test never asked the driver to stop")
    rounds += 1
    blobs = [os.urandom(200_000 if i == 0 else 10) for i in range(16)]
    got = p2prt.get([mix.remote(i, rounds, b) for i, b in enumerate(blobs)], timeout=60)
    if got != [((i * 7919 + rounds) ^ len(b), b[-8:]) for i, b in enumerate(blobs)]:
        sys.exit(f"round {rounds}: wrong results {got!r}")
    tasks += len(blobs)
    print(f"round {rounds} {time.monotonic():.3f}", flush=True)
print(f"done {rounds} {tasks}", flush=True)
p2prt.shutdown()
"""


@dataclass
class Site:
    board: Board
    worker: Proc
    keys: dict[str, Path]
    folder: Path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    board = Board(tmp_path / "board")
    worker: Proc | None = None
    try:
        keys = {name: make_key(tmp_path, name) for name in ("alice", "bob", "carol", "mallory")}
        for name, key in keys.items():
            board.add_user(name, key)
        as_user("alice", keys["alice"], board, tmp_path / "config-alice", "cluster", "create", "friends")
        as_user("alice", keys["alice"], board, tmp_path / "config-alice", "cluster", "add", CLUSTER, "bob", "carol")
        worker = start_worker("bob", keys["bob"], board, CLUSTER, tmp_path / "config-bob", cpus=2)
        worker.wait_for(READY_LINE)
        yield Site(board, worker, keys, tmp_path)
    finally:
        if worker is not None:
            worker.stop()
        board.stop()


# -- attacks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int


async def _closed_by_peer(stream: trio.abc.Stream, timeout: float) -> bool:
    """Read until the peer closes (EOF or reset); False if it did not within ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return True
    return False


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the server closed first: fine


@asynccontextmanager
async def _tcp(t: Target) -> AsyncIterator[trio.SocketStream]:
    stream = await trio.open_tcp_stream(t.host, t.port)
    try:
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def _session(t: Target, identity: NodeIdentity) -> AsyncIterator[NoiseStream]:
    stream = await open_secure_stream(t.host, t.port, identity, timeout=SERVER_REACTS)
    try:
        yield stream
    finally:
        await trio.aclose_forcefully(stream)


class Attacker:
    """The attacks; each call is one bounded attempt that checks what the server did."""

    def __init__(self, mallory: SshKey, alice: NodeIdentity, ticket: bm.LeaseTicket, seed: int) -> None:
        self._mallory_key = mallory
        self.alice = alice
        self.ticket = ticket
        self.rng = random.Random(seed)
        self.runs: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()

    @property
    def mallory(self) -> NodeIdentity:
        """A new process of mallory's each time: the board replaces an older session of
        the same peer (a reconnecting process), which would end the attacks early."""
        return NodeIdentity.create(self._mallory_key, "mallory")

    async def random_bytes(self, t: Target) -> None:
        async with _tcp(t) as s:
            await _send(s, self.rng.randbytes(self.rng.choice([1, 3, 31, 32, 33, 100, 1000, 70_000])))
            await _closed_by_peer(s, WAIT_FOR_CLOSE)

    async def noise_frames(self, t: Target) -> None:
        """A Noise length prefix with less, or more, than it announces; or empty ones."""
        rng = self.rng
        size = rng.choice([0, 1, 31, 32, 33, 48, 65535])
        body = rng.randbytes(rng.choice([0, max(0, size - 1), size, size + 7]))
        async with _tcp(t) as s:
            await _send(s, NOISE_HEADER.pack(size) + body)
            await _closed_by_peer(s, WAIT_FOR_CLOSE)

    async def message1_then_garbage(self, t: Target) -> None:
        hs = NoiseHandshake(self.mallory, initiator=True)
        junk = self.rng.randbytes(self.rng.randrange(1, 300))
        framed = self.rng.random() < 0.5
        async with _tcp(t) as s:
            await _send(s, hs.initiate() + (NOISE_HEADER.pack(len(junk)) + junk if framed else junk))
            closed = await _closed_by_peer(s, SERVER_REACTS if framed else WAIT_FOR_CLOSE)
            assert closed or not framed, f"{t.name} kept a connection whose handshake message 3 was garbage"

    async def garbage_ciphertext(self, t: Target) -> None:
        async with _session(t, self.mallory) as stream:
            junk = self.rng.randbytes(self.rng.randrange(16, 2000))
            await _send(stream.transport_stream, NOISE_HEADER.pack(len(junk)) + junk)
            assert await _closed_by_peer(stream.transport_stream, SERVER_REACTS), f"{t.name} kept a tampered session"

    def _malformed_frame(self, t: Target) -> bytes:
        rng = self.rng
        return rng.choice(
            [
                encode_frame(rng.randbytes(rng.randrange(0, 200))),  # not CBOR (or not a message)
                encode_frame(cbor2.dumps(["no.such.message", rng.random(), {"x": b"y"}])),
                encode_frame(cbor2.dumps(["ping", "not an int"])),
                encode_frame(cbor2.dumps(["ping", 1]) + b"stray"),
                encode_frame(cbor2.dumps(cbor2.CBORTag(55799, ["ping", 1]))),
                encode_frame(b"\x9b" + (2**63).to_bytes(8, "big")),  # an array of 2^63 items
                encode_frame(b"\x81" * 5000 + b"\x00"),  # nested 5,000 deep
                FRAME_HEADER.pack((1 << 31) - 1) + rng.randbytes(10),  # a frame far over the limit
                FRAME_HEADER.pack(ATTACHED_FLAG | 4) + b"\x00\x00",  # attachments: none allowed / zero
            ]
        )

    async def malformed_frames(self, t: Target) -> None:
        async with _session(t, self.mallory) as stream:
            await _send(stream, self._malformed_frame(t))
            assert await _closed_by_peer(stream, SERVER_REACTS), f"{t.name} kept a session after a malformed frame"

    def _hostile_requests(self, t: Target) -> tuple[list[Message], set[int]]:
        """Requests with hostile values, and the request ids that must be answered."""
        rng = self.rng
        rid = rng.randrange(2**63)
        if t.name == "board":
            requests: list[Message] = [
                bm.LeaseRequest(rid, CLUSTER, rng.choice([0, 1, 2**63])),
                bm.WorkerRegister(rid + 1, CLUSTER, 0, {"gpu": float("nan")}, "3.11", "h", []),
                bm.ClusterCreate(rid + 2, rng.choice(["", "x" * 300, "a/b", "\x00"])),
                bm.ClusterAdd(rid + 3, CLUSTER, ["mallory"]),
                bm.RelayOpen(rid + 4, rng.randbytes(32)),
                bm.PunchRequest(rid + 5, b""),
                bm.StatusRequest(rid + 6, CLUSTER),
                bm.Register(rid + 7, "mallory2"),
                bm.Heartbeat(-1, {"direct": 2**63}),
                bm.LeaseReturn([rng.randbytes(4).hex()]),
            ]
            return requests, {rid + i for i in range(8)}
        requests = [
            pm.Attach(rid, self.ticket),  # the ticket is alice's, not mallory's: refused
            pm.StatsRequest(rid + 1),
            pm.FetchObjects(rid + 2, [rng.randbytes(16)]),
            pm.NestedSubmitted(rid + 3, [b"x"]),
            pm.SubmitTasks([pm.TaskSpec(1, "no-such-lease", b"f", b"args", [], "t")]),
            pm.DefineFunction(b"f", b"not a pickle"),
            pm.CancelTask(rng.randrange(2**63), True),
            pm.ReleaseObjects([rng.randbytes(8)]),
            ErrorReply("x", "y", rid + 4),
        ]
        return requests, {rid, rid + 1, rid + 2}

    async def hostile_requests(self, t: Target) -> None:
        """Well-formed messages with hostile values: each request gets its answer."""
        async with _session(t, self.mallory) as stream:
            channel = MessageChannel(stream, max_frame_size=1 << 20)
            requests, rids = self._hostile_requests(t)
            await channel.send_many(requests)
            with trio.fail_after(SERVER_REACTS):
                while rids:
                    reply = await channel.receive()
                    rids.discard(reply.request_id if isinstance(reply, ErrorReply) else getattr(reply, "rid", None))
            await channel.send(Goodbye("done"))

    async def leased_garbage(self, t: Target) -> None:
        """Alice's lease attached, then garbage for the worker's executors: run and
        answered with failures (or refused, once the lease is gone)."""
        async with _session(t, self.alice) as stream:
            channel = MessageChannel(stream, max_frame_size=1 << 20, max_attachment_bytes=1 << 20)
            await channel.send(pm.Attach(1, self.ticket))
            with trio.fail_after(SERVER_REACTS):
                reply = await channel.receive()
            if isinstance(reply, ErrorReply):
                self.outcomes["ticket refused"] += 1
                return
            assert isinstance(reply, pm.Attached), reply
            self.outcomes["ticket accepted"] += 1
            lease = self.ticket.lease_id
            args = [b"not a pickle", pickle.dumps(((1,), {}))[:-2], b"\x80\x05K\x01.", bytes(70_000)]
            await channel.send_many(
                [
                    pm.DefineFunction(b"bad", b"not a pickle"),
                    pm.DefineFunction(b"cut", pickle.dumps(len)[:-1]),
                    pm.SubmitTasks(
                        [
                            pm.TaskSpec(i, lease, fn, a, [], "garbage")
                            for i, (fn, a) in enumerate((f, a) for f in (b"bad", b"cut") for a in args)
                        ]
                    ),
                ]
            )
            want = 2 * len(args)
            with trio.fail_after(SERVER_REACTS * 4):
                while want:
                    msg = await channel.receive()
                    if isinstance(msg, pm.TaskResults):
                        assert all(r.status in ("error", "crashed", "rejected") for r in msg.results), msg
                        want -= len(msg.results)
            await channel.send(pm.Detach(lease))

    async def burst(self, t: Target) -> None:
        """Many handshakes at once, closed again at once."""
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(self._one_session, t)

    async def _one_session(self, t: Target) -> None:
        async with _session(t, self.mallory) as stream:
            await _send(stream, encode_frame(encode_message(Ping(1))))

    ATTACKS = (
        "random_bytes",
        "noise_frames",
        "message1_then_garbage",
        "garbage_ciphertext",
        "malformed_frames",
        "hostile_requests",
        "burst",
    )

    async def keep_attacking(self, t: Target, name: str, until: float) -> None:
        attack: Callable[[Target], Awaitable[None]] = getattr(self, name)
        while trio.current_time() < until:
            with trio.fail_after(SERVER_REACTS * 5):
                await attack(t)
            self.runs[f"{t.name}:{name}"] += 1

    async def hold_open(self, t: Target, n: int, until: float) -> None:
        """``n`` connections that never say a word, until the end of the attack; when
        that lasts long enough, the server must have closed them (handshake timeout)."""
        streams = []
        opened = trio.current_time()
        try:
            for _ in range(n):
                streams.append(await trio.open_tcp_stream(t.host, t.port))
            self.runs[f"{t.name}:half_open"] += n
            await trio.sleep_until(until)  # sleep-ok: holding the connections is the attack
            if until - opened > HANDSHAKE_TIMEOUT + SERVER_REACTS:
                for s in streams:
                    assert await _closed_by_peer(s, SERVER_REACTS), f"{t.name} kept a silent connection"
        finally:
            for s in streams:
                await trio.aclose_forcefully(s)


# -- the test ---------------------------------------------------------------------------


@p2prt.remote
def square(x: int) -> int:
    return x * x


async def _attack(site: Site, duration: float, seed: int) -> Attacker:
    mallory = load_private_key(site.keys["mallory"])
    alice = NodeIdentity.create(load_private_key(site.keys["alice"]), "alice")
    # A lease of alice's on bob's worker, held for the whole attack (a returned lease's
    # ticket is refused by the worker: tests/security): with it, garbage reaches executors.
    async with open_board_client(site.board.address, alice, pin=False) as client:
        with trio.fail_after(SERVER_REACTS * 4):
            await client.call(lambda rid: bm.LeaseRequest(rid, CLUSTER, 1))
            while not isinstance(grant := await client.pushes.receive(), bm.LeaseGranted):
                pass
        attacker = Attacker(mallory, alice, grant.ticket, seed)
        worker_addr = grant.worker_addrs[0]
        targets = [Target("board", "127.0.0.1", site.board.port), Target("worker", worker_addr.host, worker_addr.port)]
        until = trio.current_time() + duration
        async with trio.open_nursery() as nursery:
            for t in targets:
                nursery.start_soon(attacker.hold_open, t, 50, until)
                for name in Attacker.ATTACKS:
                    nursery.start_soon(attacker.keep_attacking, t, name, until)
            nursery.start_soon(attacker.keep_attacking, targets[1], "leased_garbage", until)
        await client.send(bm.LeaseReturn([grant.ticket.lease_id]))
    return attacker


def _rounds(driver: Proc) -> list[float]:
    return [float(line.split()[2]) for line in driver.output().splitlines() if line.startswith("round ")]


@pytest.mark.parametrize(
    "duration",
    [
        pytest.param(5.0, id="5s", marks=pytest.mark.timeout(150)),
        pytest.param(30.0, id="30s", marks=[pytest.mark.slow, pytest.mark.timeout(240)]),
    ],
)
def test_board_and_worker_serve_on_under_garbage(site: Site, duration: float) -> None:
    stop = site.folder / "stop"
    script = site.folder / "driver.py"
    script.write_text(DRIVER)
    driver = Proc(
        [PYTHON, str(script), site.board.address, str(site.keys["carol"]), str(stop)],
        env=user_env("carol", site.folder / "config-carol"),
        cwd=str(site.folder),
    )
    try:
        driver.wait_for(r"^round 1 ", timeout=60)
        started = time.monotonic()
        try:
            attacker = trio.run(_attack, site, duration, 20240611)
        except BaseException:
            print(f"board output:\n{site.board.proc.output()}\nworker output:\n{site.worker.output()}")
            raise
        ended = time.monotonic()
        stop.touch()
        assert driver.wait_exit(timeout=90) == 0, driver.output()
    finally:
        driver.kill()

    # The driver computed correctly all along, and kept completing rounds under attack.
    assert driver.output().splitlines()[-1].startswith("done "), driver.output()
    during = [t for t in _rounds(driver) if started <= t <= ended]
    assert len(during) >= 2 * duration, f"only {len(during)} rounds during {duration:g} s of attack"
    gaps = [b - a for a, b in zip([started, *during], [*during, ended], strict=True)]
    assert max(gaps) < max(4.0, duration / 4), f"the driver stalled for {max(gaps):.1f} s"
    # Every attack ran, on both servers.
    expected = {f"{t}:{a}" for t in ("board", "worker") for a in (*Attacker.ATTACKS, "half_open")} | {
        "worker:leased_garbage"
    }
    assert set(attacker.runs) == expected, attacker.runs
    # Alice's lease was live the whole time; its ticket attaches until it expires
    # (lease_ttl: 3 s here), so garbage reached the executors at least at first.
    assert attacker.outcomes["ticket accepted"] >= 1, attacker.outcomes

    # Both servers still run and serve a fresh client; neither logged an error.
    assert site.board.proc.proc.poll() is None and site.worker.proc.poll() is None
    p2prt.init(CLUSTER, board=site.board.address, key=str(site.keys["alice"]), user="alice")
    try:
        assert p2prt.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
    finally:
        p2prt.shutdown()
    for name, proc in (("board", site.board.proc), ("worker", site.worker)):
        bad = [line for line in proc.output().splitlines() if " ERROR " in line or "Traceback" in line]
        assert not bad, f"the {name} logged errors:\n" + "\n".join(bad)
