"""The NAT lab behaves as issue 7 says: NAT, firewall or RST, random ports, no default
route on the internet, clean teardown; and the TCP simultaneous-open numbers per variant.

All traffic stays inside the lab's namespaces. Waits are for output lines or process
exits with deadlines; "nothing came back" is measured with short socket timeouts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import lab as labmod
from .conftest import require_netlab
from .lab import (
    ALL_VARIANTS,
    BOARD_IP,
    PYTHON,
    Backend,
    LabError,
    NetLab,
    Variant,
    build_lab,
    cleanup_stale,
    in_ci,
    lab_env,
    list_namespaces,
)

pytestmark = [pytest.mark.netlab, pytest.mark.timeout(30)]

PROBE = Path(__file__).with_name("probe.py")
SILENCE = 0.5
"""Seconds after which an unanswered connection attempt counts as silently dropped."""


def start_observer(lab: NetLab) -> int:
    """An observer server on the board's address in the internet namespace; its port."""
    proc = lab.start_python(lab.internet_ns, PROBE, "observer", "--bind", BOARD_IP)
    word, port = proc.read_line(timeout=10).split()
    assert word == "ready"
    return int(port)


def observe(lab: NetLab, ns: str, port: int, count: int) -> list[tuple[int, str, int]]:
    """``count`` connections from ``ns`` to the observer: (local port, seen ip, seen port)."""
    out = lab.run_python(ns, PROBE, "observe", BOARD_IP, str(port), "--count", str(count))
    rows = []
    for line in out.splitlines():
        local, ip, seen = line.split()
        rows.append((int(local), ip, int(seen)))
    assert len(rows) == count, out
    return rows


def require_tool(tool: str) -> None:
    if shutil.which(tool) is None:
        if in_ci():
            pytest.fail(f"netlab: {tool} missing under CI=true", pytrace=False)
        pytest.skip(f"netlab: {tool} missing")


# ---------------------------------------------------------------------------
# NAT


def test_hosts_reach_the_internet_through_nat(netlab: NetLab) -> None:
    port = start_observer(netlab)
    for home in netlab.homes:
        [(_local, seen_ip, _seen_port)] = observe(netlab, home.host_ns, port, 1)
        assert seen_ip == home.public_ip, f"home {home.label}: the server saw {seen_ip}, not the router"


def test_source_ports_are_kept_or_randomised(netlab: NetLab) -> None:
    port = start_observer(netlab)
    for home in netlab.homes:
        rows = observe(netlab, home.host_ns, port, 4)
        assert {ip for _l, ip, _s in rows} == {home.public_ip}
        changed = sum(local != seen for local, _ip, seen in rows)
        if home.random_ports:
            # fully-random keeps a port with chance ~1/64k per connection
            assert changed >= 3, f"home {home.label} should randomise ports: {rows}"
        else:
            assert changed == 0, f"home {home.label} should preserve ports: {rows}"


def test_unsolicited_inbound_is_dropped_or_refused(netlab: NetLab) -> None:
    """From the internet to a router's public address: to the port of a live mapping
    (held by the home host towards another server) and to an unmapped port. A firewall
    drops it silently; without one the router's own stack answers RST."""
    port = start_observer(netlab)
    holders, attempts = [], []
    for home in netlab.homes:
        holder = netlab.start_python(home.host_ns, PROBE, "observe", BOARD_IP, str(port), "--hold")
        mapped = int(holder.read_line().split()[2])
        assert holder.read_line() == "holding"
        holders.append(holder)
        for target in (mapped, 9):
            proc = netlab.start_python(netlab.internet_ns, PROBE, "connect", home.public_ip, str(target),
                                       "--timeout", str(SILENCE))
            attempts.append((home, target, proc))
    for home, target, proc in attempts:
        outcome = proc.read_line(timeout=10)
        expected = "timeout" if home.firewall else "refused"
        assert outcome == expected, f"home {home.label} port {target}: {outcome}"
    for holder in holders:
        holder.close_stdin()
        assert holder.wait() == 0


@pytest.mark.parametrize("netlab", ["a"], indirect=True)
def test_internet_has_no_default_route_and_lans_are_private(netlab: NetLab) -> None:
    for ns in (netlab.internet_ns, *netlab.routers):
        assert netlab.run(ns, ["ip", "route", "show", "default"]).stdout.strip() == "", ns
    routes = netlab.run(netlab.internet_ns, ["ip", "route", "show"]).stdout
    assert routes.split()[0] == "203.0.113.0/24" and len(routes.strip().splitlines()) == 1, routes
    for home in netlab.homes:
        default = netlab.run(home.host_ns, ["ip", "route", "show", "default"]).stdout
        assert f"via {home.router_lan_ip}" in default
    probes = [
        netlab.start_python(netlab.internet_ns, PROBE, "connect", netlab.home_a.host_ip, "9"),
        netlab.start_python(netlab.home_a.host_ns, PROBE, "connect", netlab.home_b.host_ip, "9"),
        netlab.start_python(netlab.home_b.host_ns, PROBE, "connect", netlab.home_a.host_ip, "9"),
    ]
    assert [p.read_line(timeout=10) for p in probes] == ["unreachable"] * 3


@pytest.mark.parametrize("netlab", ["a"], indirect=True)
def test_conntrack_flush_forgets_mappings(netlab: NetLab) -> None:
    port = start_observer(netlab)
    holder = netlab.start_python(netlab.home_a.host_ns, PROBE, "observe", BOARD_IP, str(port), "--hold")
    holder.read_line()
    assert any(netlab.home_a.host_ip in e for e in netlab.conntrack_entries(netlab.home_a.router_ns))
    netlab.flush_conntrack()
    assert netlab.conntrack_entries(netlab.home_a.router_ns) == []


@pytest.mark.parametrize("backend", ["iptables"])
def test_iptables_backend(make_netlab: Callable[..., NetLab], backend: Backend) -> None:
    """The iptables rules (used where nft is missing) make the same lab."""
    require_tool("iptables-restore")
    for variant in ("a", "d"):
        lab = make_netlab(variant, backend)
        port = start_observer(lab)
        rows = observe(lab, lab.home_a.host_ns, port, 3)
        assert {ip for _l, ip, _s in rows} == {lab.home_a.public_ip}
        changed = sum(local != seen for local, _ip, seen in rows)
        assert (changed >= 2) if variant == "d" else (changed == 0), rows
        outcome = lab.run_python(lab.internet_ns, PROBE, "connect", lab.home_a.public_ip, "9",
                                 "--timeout", str(SILENCE)).strip()
        assert outcome == "timeout"
        rules = lab.run(lab.home_a.router_ns, ["iptables-save"]).stdout
        assert "MASQUERADE" in rules and "DROP" in rules


# ---------------------------------------------------------------------------
# Running things in the lab


@pytest.mark.parametrize("netlab", ["b"], indirect=True)
def test_processes_run_inside_a_namespace_with_the_tests_environment(netlab: NetLab) -> None:
    code = "import os, socket; print(os.environ['HOME']); print(socket.if_nameindex())"
    home, interfaces = netlab.run_python(netlab.home_a.host_ns, code).splitlines()
    assert home == os.environ["HOME"]
    assert "eth0" in interfaces and "wan" not in interfaces
    t0 = time.monotonic()
    with pytest.raises(LabError, match="no exit within"):
        netlab.run_python(netlab.home_a.host_ns, "import time; time.sleep(60)", timeout=0.5)  # sleep-ok: must be killed
    assert time.monotonic() - t0 < 5
    with pytest.raises(LabError, match="boom"):
        netlab.run_python(netlab.home_b.host_ns, "raise SystemExit('boom')")
    with pytest.raises(LabError, match="not a namespace"):
        netlab.run("elsewhere", ["true"])


# ---------------------------------------------------------------------------
# Teardown


def _root_state() -> tuple[str, str]:
    """The test's own (host) namespace: its links and its nft ruleset."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
    nft = ""
    if shutil.which("nft"):
        nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    return names, nft


def _mine() -> set[str]:
    return {ns for ns in list_namespaces() if ns.startswith(f"p2l{os.getpid()}x")}


def test_teardown_deletes_everything() -> None:
    require_netlab()
    before = _root_state()
    before_ns = _mine()
    lab = build_lab("a")
    assert set(lab.namespaces) <= set(list_namespaces())
    sleeper = lab.start_python(lab.home_a.host_ns, "import sys; print('up', flush=True); sys.stdin.read()")
    assert sleeper.read_line() == "up"
    assert _root_state() == before, "the lab must not touch the host's namespace"
    lab.close()
    assert sleeper.popen.poll() is not None
    assert not any(ns.startswith(lab.prefix) for ns in list_namespaces())
    assert _mine() == before_ns
    assert _root_state() == before
    lab.close()  # idempotent


def test_teardown_happens_when_the_test_body_fails() -> None:
    require_netlab()
    with pytest.raises(RuntimeError, match="test failed"), build_lab("c") as lab:
        assert set(lab.namespaces) <= set(list_namespaces())
        raise RuntimeError("test failed")
    assert not any(ns.startswith(lab.prefix) for ns in list_namespaces())


def test_a_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    require_netlab()
    before = _mine()

    def broken(self: NetLab, home: labmod.Home) -> None:
        raise LabError("firewall exploded")

    monkeypatch.setattr(NetLab, "_setup_router", broken)
    with pytest.raises(LabError, match="exploded"):
        build_lab("b")
    assert _mine() == before


def test_namespaces_of_a_killed_run_are_removed_later() -> None:
    require_netlab()
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(PROBE.parent)!r})
        import lab
        built = lab.build_lab("d")
        print(built.prefix, flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=lab_env())
    try:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert prefix.startswith(f"p2l{child.pid}x"), (prefix, child.stderr.read() if child.stderr else "")
        assert sum(ns.startswith(prefix) for ns in list_namespaces()) == 5
    finally:
        child.send_signal(signal.SIGKILL)  # a crash: no teardown, no atexit
        child.communicate(timeout=10)
    assert sum(ns.startswith(prefix) for ns in list_namespaces()) == 5
    removed = cleanup_stale()
    assert sum(ns.startswith(prefix) for ns in removed) == 5
    assert not any(ns.startswith(prefix) for ns in list_namespaces())


# ---------------------------------------------------------------------------
# TCP simultaneous open (DESIGN.md §6): the numbers for hole punching

PUNCH_ATTEMPTS = 5
PUNCH_TIMEOUT = 1.0


@dataclass
class PunchStats:
    variant: Variant
    outcomes: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def successes(self) -> int:
        return sum(o.startswith("ok") for o in self.outcomes)


def punch_once(lab: NetLab, port: int) -> tuple[str, float]:
    """One simultaneous open between the two home hosts; ("ok how/how" or "fail ...", s)."""
    lab.flush_conntrack()
    a = lab.start_python(lab.home_a.host_ns, PROBE, "punch", BOARD_IP, str(port), "A",
                         "--timeout", str(PUNCH_TIMEOUT))
    b = lab.start_python(lab.home_b.host_ns, PROBE, "punch", BOARD_IP, str(port), "B",
                         "--timeout", str(PUNCH_TIMEOUT))
    _, ip_a, port_a, _local_a = a.read_line(timeout=10).split()
    _, ip_b, port_b, _local_b = b.read_line(timeout=10).split()
    t0 = time.monotonic()
    a.write_line(f"go {ip_b} {port_b}")
    b.write_line(f"go {ip_a} {port_a}")
    res_a = a.read_line(timeout=PUNCH_TIMEOUT + 5).split()
    res_b = b.read_line(timeout=PUNCH_TIMEOUT + 5).split()
    elapsed = time.monotonic() - t0
    assert a.wait() == 0 and b.wait() == 0
    if res_a[1] == "ok" and res_b[1] == "ok":
        assert (res_a[3], res_b[3]) == ("B", "A"), (res_a, res_b)
        return f"ok {res_a[2]}/{res_b[2]}", elapsed
    return f"fail {' '.join(res_a[2:])}/{' '.join(res_b[2:])}", elapsed


@pytest.mark.timeout(60)
def test_tcp_simultaneous_open_per_variant(make_netlab: Callable[..., NetLab],
                                           record_property: Callable[[str, object], None]) -> None:
    """Both hosts punch from the port of their observer ("board") connection to each
    other's observed address at once. Variant (a) must succeed every time (issue 7
    measured 20/20); (b), (c), (d) are recorded, not asserted. Run with -s for the table."""
    labs = {v: make_netlab(v) for v in ALL_VARIANTS}
    stats = {v: PunchStats(v) for v in ALL_VARIANTS}
    errors: list[BaseException] = []

    def run(variant: Variant) -> None:
        try:
            lab = labs[variant]
            port = start_observer(lab)
            for _ in range(PUNCH_ATTEMPTS):
                outcome, seconds = punch_once(lab, port)
                stats[variant].outcomes.append(outcome)
                stats[variant].seconds.append(seconds)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(v,)) for v in ALL_VARIANTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not any(t.is_alive() for t in threads), "punch threads did not finish"
    if errors:
        raise errors[0]

    lines = ["", f"TCP simultaneous open, {PUNCH_ATTEMPTS} attempts per variant "
             f"(timeout {PUNCH_TIMEOUT} s; outcome as seen by host A/host B):",
             f"{'variant':<16} {'ok':>5}  {'median s':>8}  outcomes"]
    for v in ALL_VARIANTS:
        s = stats[v]
        ok_times = sorted(t for o, t in zip(s.outcomes, s.seconds, strict=True) if o.startswith("ok"))
        median = f"{ok_times[len(ok_times) // 2]:.3f}" if ok_times else "-"
        counts: dict[str, int] = {}
        for o in s.outcomes:
            counts[o] = counts.get(o, 0) + 1
        summary = ", ".join(f"{n}x {o}" for o, n in sorted(counts.items()))
        lines.append(f"{labmod.VARIANT_IDS[v]:<16} {s.successes:>2}/{len(s.outcomes):<2}  {median:>8}  {summary}")
        record_property(f"punch_{v}", f"{s.successes}/{len(s.outcomes)}")
    print("\n".join(lines))
    assert stats["a"].successes == PUNCH_ATTEMPTS, stats["a"].outcomes
