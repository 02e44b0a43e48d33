"""A network partition under running tasks (issue 8): a worker's home drops off the net.

Variant (a) of the NAT lab: the board and a second worker in the "internet", the first
worker in home A, the script in home B. While tasks run on the worker in home A, its
router starts dropping every packet. Nobody sends a FIN or a RST: the script's
connection to that worker goes silent, the keepalive/user timeout
(``P2PRT_KEEPALIVE_TIMEOUT``, 3 s here) declares it dead, and its tasks are retried on
the other worker. Without detection the kernel would keep retransmitting for ~15
minutes and the test would time out.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from .cluster import start_cluster, wait_for_line
from .lab import PYTHON, NetLab

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(180)]

KEEPALIVE = 3.0

SCRIPT = """
import json, os, sys, time
import p2prt

board, key, gate, folder = sys.argv[1:5]
p2prt.init("alice/personal", board=board, key=key, user="alice")
rt = p2prt._api._runtime

@p2prt.remote
def held(i):
    import os, time
    from pathlib import Path
    Path(folder, f"{i}-{os.getppid()}-{time.time()}").write_text("")
    while not os.path.exists(gate):
        time.sleep(0.01)
    return i, os.getppid()

values = p2prt.get([held.remote(i) for i in range(4)], timeout=150)
print(json.dumps({"values": [list(v) for v in values], "done": time.time(), "counters": dict(rt.stats)}), flush=True)
p2prt.shutdown()
"""


@pytest.mark.parametrize("netlab", ["a"], indirect=True)
def test_tasks_on_a_partitioned_worker_are_retried_elsewhere(netlab: NetLab, tmp_path: Path) -> None:
    env = {"P2PRT_KEEPALIVE_TIMEOUT": str(KEEPALIVE)}
    cluster = start_cluster(netlab, tmp_path, board_args=("--heartbeat-timeout", "6"), env=env)
    cut_off = cluster.worker
    public = netlab.start(netlab.internet_ns, [PYTHON, "-m", "p2prt", "worker", "--cluster", "alice/personal",
                                               "--board", cluster.address, "--key", str(cluster.key), "--user",
                                               "alice", "--cpus", "1"], env=cluster.env)
    wait_for_line(public, "address published in the DHT")
    gate, folder = tmp_path / "gate", tmp_path / "started"
    folder.mkdir()
    script = netlab.start_python(netlab.home_b.host_ns, SCRIPT, cluster.address, str(cluster.key), str(gate),
                                 str(folder), env=cluster.env)
    deadline = time.monotonic() + 60
    while not any(name.split("-")[1] == str(cut_off.pid) for name in os.listdir(folder)):
        assert time.monotonic() < deadline, f"no task started on the worker in home A: {os.listdir(folder)}"
        time.sleep(0.02)  # sleep-ok: poll interval of a bounded wait for the event
    on_cut_off = {int(n.split("-")[0]) for n in os.listdir(folder) if n.split("-")[1] == str(cut_off.pid)}

    netlab.cut(netlab.home_a, "0.0.0.0/0")  # home A is off the net; nobody is told
    cut_at = time.time()
    gate.touch()
    report = json.loads(wait_for_line(script, '"values"', timeout=120))
    print(f"\npartition: detected and done {report['done'] - cut_at:.1f} s after the cut; {report}")
    assert [v[0] for v in report["values"]] == [0, 1, 2, 3]
    # What ran on the cut-off worker was run again on the public one.
    for i in on_cut_off:
        assert report["values"][i][1] == public.pid, report
    assert report["counters"]["retries"] >= len(on_cut_off), report
    # The board lost the cut-off worker too (no heartbeat): only the public one is left.
    deadline = time.monotonic() + 30
    while len(cluster.status()["workers"]) != 1:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, cluster.status()
        time.sleep(0.2)  # sleep-ok: poll interval of a bounded wait (each poll is a CLI process)
