"""Paths that change under a running script (issue 7): a relayed pair goes direct once it
can, and a worker whose home gets a new public address carries on.

Both in variant (a) (port-preserving NAT with a firewall in both homes, where punching
works). A script in home B runs a batch of tasks, reports, waits while the test changes
the network, then runs a second batch and reports what its runtime saw. Detection of the
dead connections relies on the keepalive/user timeout (``P2PRT_KEEPALIVE_TIMEOUT``, 3 s
here) — nothing in the lab tells the peers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from .cluster import LabCluster, start_cluster
from .lab import LabProcess, NetLab

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(180)]

ENV = {"P2PRT_KEEPALIVE_TIMEOUT": "3", "P2PRT_UPGRADE_INTERVAL": "0.5"}
NEW_PUBLIC_IP = "203.0.113.11"

SCRIPT = """
import hashlib, json, os, sys, time
import trio
import p2prt

board, key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
p2prt.init("alice/personal", board=board, key=key, user="alice")
rt = p2prt._api._runtime

@p2prt.remote
def digest(x):
    import hashlib
    return hashlib.sha256(x).hexdigest()

payload = os.urandom(4 << 20)
want = hashlib.sha256(payload).hexdigest()

def report(phase, ok):
    peers = p2prt.stats()["peers"]
    sent = {}
    for entry in peers.values():
        for path, n in entry["sent"].items():
            sent[path] = sent.get(path, 0) + n
    conns = [c.path for c in rt._conns.values() if not c.closed]
    print(json.dumps({"phase": phase, "ok": ok, "sent": sent, "conns": conns, "counters": dict(rt.stats)}),
          flush=True)

ok = all(r == want for r in p2prt.get([digest.remote(payload) for _ in range(20)], timeout=120))
report(1, ok)
if mode == "upgrade":  # attempts to go direct fail while the homes cannot reach each other
    deadline = time.monotonic() + 60
    while rt.stats["upgrade_failures"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: bounded wait for a failed upgrade attempt
    report(15, ok)
sys.stdin.readline()  # the test changes the network, then says go
if mode == "upgrade":
    deadline = time.monotonic() + 60
    while rt.stats["upgrades"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: bounded wait for the upgrade
t = time.monotonic()
ok = all(r == want for r in p2prt.get([digest.remote(payload) for _ in range(20)], timeout=120))
report(2, ok)
peer = next(iter(rt._conns))
record = trio.from_thread.run(rt.dht.find_peer, peer, trio_token=rt._token) if rt.dht else None
print(json.dumps({"phase": 3, "seconds": round(time.monotonic() - t, 2),
                  "record": [[a.host, a.port] for a in record.listen_addrs] if record else None}), flush=True)
p2prt.shutdown()
"""


def _report(proc: LabProcess, phase: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        line = proc.read_line(max(0.1, deadline - time.monotonic()))
        if line.startswith("{") and f'"phase": {phase}' in line:
            result: dict[str, Any] = json.loads(line)
            return result


def _start_script(cluster: LabCluster, mode: str) -> LabProcess:
    lab = cluster.lab
    return lab.start_python(lab.home_b.host_ns, SCRIPT, cluster.address, str(cluster.key), mode, env=cluster.env)


def _wait_status(cluster: LabCluster, predicate: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        (worker,) = cluster.status()["workers"]  # type: ignore[misc]
        if predicate(worker):
            return worker  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last status: {worker}")
        time.sleep(0.2)  # sleep-ok: poll interval of a bounded wait (each poll is a CLI process)


@pytest.mark.parametrize("netlab", ["a"], indirect=True)
def test_a_relayed_pair_upgrades_to_a_punched_connection(netlab: NetLab, tmp_path: Path) -> None:
    cluster = start_cluster(netlab, tmp_path, env=ENV)
    # The homes cannot reach each other (both still reach the board): punching fails.
    netlab.cut(netlab.home_a, netlab.home_b.public_ip)
    script = _start_script(cluster, "upgrade")
    first = _report(script, 1)
    assert first["ok"], first
    assert set(first["sent"]) == {"relayed"} and first["conns"] == ["relayed"], first
    failed = _report(script, 15)
    assert failed["counters"]["upgrade_failures"] >= 1 and "upgrades" not in failed["counters"], failed
    assert failed["conns"] == ["relayed"], failed  # still in use

    netlab.uncut(netlab.home_a)
    script.write_line("go")
    second = _report(script, 2)
    print(f"\nupgrade: {first}\n         {failed}\n         {second}")
    assert second["ok"], second
    assert second["counters"]["upgrades"] == 1, second
    # Only the punched connection is left (the relayed one closed once it carried
    # nothing); the second batch's 20 x 4 MiB went over it.
    assert second["conns"] == ["punched"], second
    assert second["sent"]["punched"] >= 20 * (4 << 20), second
    assert second["sent"]["relayed"] - first["sent"]["relayed"] < 4 << 20, second
    _report(script, 3)
    assert script.wait(30) == 0, script.stderr


@pytest.mark.parametrize("netlab", ["a"], indirect=True)
def test_a_worker_carries_on_after_its_home_gets_a_new_public_address(netlab: NetLab, tmp_path: Path) -> None:
    cluster = start_cluster(netlab, tmp_path, board_args=("--heartbeat-timeout", "6"), env=ENV)
    home_a = netlab.home_a
    old_ip = home_a.public_ip
    before = _wait_status(cluster, lambda w: w["address"] is not None, "the worker's address")
    assert before["address"].startswith(old_ip + ":"), before
    script = _start_script(cluster, "renumber")
    first = _report(script, 1)
    assert first["ok"] and first["conns"] == ["punched"], first

    netlab.renumber(home_a, NEW_PUBLIC_IP)
    # Nobody tells the worker: its next heartbeat leaves from the new address, the board
    # answers with a reset, and the worker connects (and registers) again.
    after = _wait_status(cluster, lambda w: w["address"].startswith(NEW_PUBLIC_IP + ":"), "the worker to reconnect")
    assert after["peer_id"] == before["peer_id"]  # the same worker process
    script.write_line("go")
    second = _report(script, 2)
    third = _report(script, 3)
    print(f"\nrenumber: {first}\n          {second}\n          {third}")
    assert second["ok"], second
    # The script noticed its dead connection by itself (keepalive) and punched again,
    # to the worker's new address; the worker's DHT record says where it is now.
    assert second["conns"] == ["punched"], second
    assert second["counters"]["punched_connections"] == 2, second
    assert any(host == NEW_PUBLIC_IP for host, _ in third["record"]), third
    assert not any(host == old_ip for host, _ in third["record"]), third
    assert script.wait(30) == 0, script.stderr
