"""A NAT lab built from Linux network namespaces (issue 7, DESIGN.md §6).

Topology (addresses only from the documentation ranges; see docs/netlab.md)::

    home A LAN 192.0.2.0/25          internet 203.0.113.0/24           home B LAN 198.51.100.0/25
    host_a 192.0.2.2 --- router_a ==== bridge, board 203.0.113.1 ==== router_b --- host_b 198.51.100.2
              192.0.2.1 / 203.0.113.10                  203.0.113.20 / 198.51.100.1

* ``internet``: a bridge holding the board's address; **no default route**, no NAT, no
  filter. The routers' public addresses are on its segment.
* ``router_a``/``router_b``: IPv4 forwarding, MASQUERADE from the LAN out of ``wan``;
  optionally ``fully-random`` source ports and a home-router firewall that drops any
  inbound packet on ``wan`` that conntrack does not know (``ct state established,related``).
* ``host_a``/``host_b``: one interface ``eth0``, default route via their router.

Every namespace is named ``p2l<pid>x<n>-<role>`` (``<pid>`` of the process that built it,
``<n>`` a counter), every veth is created inside the lab's namespaces (never in the
host's), and all firewall and conntrack state lives in those namespaces: deleting them
deletes everything. :func:`cleanup_stale` removes namespaces left by a process that no
longer runs.

Python 3.11 has no ``os.setns``, so processes run in a namespace through
``ip netns exec NS ...`` (:meth:`NetLab.start`, :meth:`NetLab.run`,
:meth:`NetLab.start_python`, :meth:`NetLab.run_python`).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

Variant = Literal["a", "b", "c", "d"]
Backend = Literal["nft", "iptables"]

ROOT = str(Path(__file__).resolve().parents[2])
"""The checkout holding the ``p2prt`` package: lab processes import it from here."""

PYTHON = sys.executable

INTERNET_NET = "203.0.113.0/24"
BOARD_IP = "203.0.113.1"
"""The internet namespace's own address: where the board (or any public server) listens."""

CMD_TIMEOUT = 10.0
"""Seconds any single ``ip``/``nft``/``conntrack`` command may take."""


@dataclass(frozen=True)
class VariantSpec:
    """What the two home routers do in one lab variant."""

    firewall_a: bool
    firewall_b: bool
    random_a: bool
    random_b: bool
    description: str


VARIANTS: dict[Variant, VariantSpec] = {
    "a": VariantSpec(True, True, False, False,
                     "port-preserving NAT, firewall drops unsolicited inbound (both homes)"),
    "b": VariantSpec(False, False, False, False,
                     "port-preserving NAT, no firewall: unsolicited SYNs get a RST (both homes)"),
    "c": VariantSpec(True, True, False, True,
                     "firewall in both homes; random-port NAT (fully-random) in home B only"),
    "d": VariantSpec(True, True, True, True,
                     "firewall in both homes; random-port NAT (fully-random) in both homes"),
}
ALL_VARIANTS: tuple[Variant, ...] = ("a", "b", "c", "d")
VARIANT_IDS: dict[Variant, str] = {"a": "a-firewall", "b": "b-rst", "c": "c-random-one", "d": "d-random-both"}


@dataclass
class Home:
    """One home: a NAT router and a host on its LAN."""

    label: str
    router_ns: str
    host_ns: str
    public_ip: str
    """The router's address on the internet: what peers on the internet see."""
    router_lan_ip: str
    host_ip: str
    lan: str
    """The home LAN in CIDR notation."""
    firewall: bool
    random_ports: bool


_HOME_ADDRESSES = {
    "a": ("203.0.113.10", "192.0.2.1", "192.0.2.2", "192.0.2.0/25"),
    "b": ("203.0.113.20", "198.51.100.1", "198.51.100.2", "198.51.100.0/25"),
}

NS_NAME = re.compile(r"^p2l(\d+)x(\d+)-")
"""Names of lab namespaces: ``p2l<pid>x<n>-<role>``."""

_counter = itertools.count()
_open_labs: set[NetLab] = set()
_stale_cleaned = False


class LabError(RuntimeError):
    """A lab command failed or a lab process did not answer in time."""


# ---------------------------------------------------------------------------
# Requirements


def in_ci() -> bool:
    """True when running under CI (``CI=true``): lab tests must run there, not skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pick_backend() -> Backend | None:
    """``nft`` when present, else ``iptables``; ``P2PRT_NETLAB_BACKEND`` forces one."""
    forced = os.environ.get("P2PRT_NETLAB_BACKEND", "").strip()
    if forced == "nft":
        return "nft" if shutil.which("nft") else None
    if forced == "iptables":
        return "iptables" if shutil.which("iptables-restore") else None
    if shutil.which("nft"):
        return "nft"
    if shutil.which("iptables-restore"):
        return "iptables"
    return None


_requirements: list[str | None] = []


def requirements_problem() -> str | None:
    """Why the lab cannot be built here (None when it can). Cached per process."""
    if _requirements:
        return _requirements[0]
    problem = _check_requirements()
    _requirements.append(problem)
    return problem


def _check_requirements() -> str | None:
    if os.geteuid() != 0:
        return f"the NAT lab needs root for network namespaces (running as uid {os.geteuid()})"
    missing = [tool for tool in ("ip", "conntrack") if shutil.which(tool) is None]
    if pick_backend() is None:
        missing.append("nft or iptables")
    if missing:
        return ("the NAT lab needs " + ", ".join(missing)
                + " (apt-get install -y iproute2 nftables iptables conntrack)")
    probe = f"p2l{os.getpid()}x-probe"
    try:
        _sh(["ip", "netns", "add", probe])
    except LabError as e:
        return f"cannot create a network namespace here: {e}"
    finally:
        with contextlib.suppress(LabError):
            _sh(["ip", "netns", "del", probe])
    return None


# ---------------------------------------------------------------------------
# Commands


def _sh(argv: Sequence[str], *, input: str | None = None, timeout: float = CMD_TIMEOUT) -> str:
    """Run a command in the test's own namespace; its stdout, or LabError with stderr."""
    try:
        res = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout} s") from e
    except OSError as e:
        raise LabError(f"{' '.join(argv)}: {e}") from e
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def list_namespaces() -> list[str]:
    """Names of all network namespaces under /run/netns."""
    out = _sh(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment (as it is now: fake HOME and all) with this checkout
    importable and Python unbuffered, plus ``extra``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])
    return env


def _python_argv(code_or_script: str | Path, args: Iterable[str]) -> list[str]:
    if isinstance(code_or_script, Path):
        return [PYTHON, str(code_or_script), *args]
    return [PYTHON, "-c", code_or_script, *args]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_pids(ns: str) -> None:
    """SIGKILL whatever still runs inside lab namespace ``ns`` (only lab processes can)."""
    with contextlib.suppress(LabError):
        for word in _sh(["ip", "netns", "pids", ns]).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(word), signal.SIGKILL)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_pids(ns)
    _sh(["ip", "netns", "del", ns])


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose building process is gone (a crashed or killed run).

    Only names of the form ``p2l<pid>x<n>-...`` are touched, and only when ``<pid>`` no
    longer runs. Returns the deleted names.
    """
    removed = []
    for ns in list_namespaces():
        m = NS_NAME.match(ns)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(LabError):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


# ---------------------------------------------------------------------------
# Processes in a namespace


class LabProcess:
    """A process running inside a lab namespace; stdout is read line by line by a thread
    (so waits have deadlines), stderr is collected for error messages, stdin is a pipe."""

    def __init__(self, ns: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: str = ROOT) -> None:
        self.ns = ns
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=dict(env), cwd=cwd,
        )
        self.lines: list[str] = []
        self._stderr: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        """The process id (``ip netns exec`` execs the command, so this is the command)."""
        return self.popen.pid

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _describe(self) -> str:
        return f"{' '.join(self.argv)[:200]!r} in {self.ns} (exit code {self.popen.poll()})"

    def read_line(self, timeout: float = 5.0) -> str:
        """The next line of stdout, waiting at most ``timeout`` seconds."""
        try:
            line = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise LabError(f"no output line within {timeout} s from {self._describe()}:\n{self.stderr}") from None
        if line is None:
            self._queue.put(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=2)
            for t in self._threads:
                t.join(timeout=2)
            raise LabError(f"output ended from {self._describe()}:\n{self.stderr}")
        self.lines.append(line)
        return line

    def write_line(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def wait(self, timeout: float = 5.0) -> int:
        """Wait for the exit code; LabError after ``timeout`` seconds."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"did not exit within {timeout} s: {self._describe()}:\n{self.stderr}") from None
        for t in self._threads:
            t.join(timeout=2)
        return code

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; closes the pipes."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.close_stdin()
        for t in self._threads:
            t.join(timeout=2)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


# ---------------------------------------------------------------------------
# The lab


class NetLab:
    """One built lab; use :func:`build_lab` (or the ``netlab``/``make_netlab`` fixtures).

    A context manager: leaving it (also on an exception) deletes everything.
    """

    def __init__(self, variant: Variant, *, backend: Backend, prefix: str | None = None) -> None:
        self.variant: Variant = variant
        self.spec = VARIANTS[variant]
        self.backend: Backend = backend
        self.prefix = prefix or f"p2l{os.getpid()}x{next(_counter)}-"
        self.internet_ns = f"{self.prefix}inet"
        self.board_ip = BOARD_IP
        self.home_a = self._home("a", self.spec.firewall_a, self.spec.random_a)
        self.home_b = self._home("b", self.spec.firewall_b, self.spec.random_b)
        self._created: list[str] = []
        self._procs: list[LabProcess] = []
        self.closed = False
        self.build_seconds = 0.0
        """How long :meth:`build` took."""

    def _home(self, label: str, firewall: bool, random_ports: bool) -> Home:
        public, router_lan, host, lan = _HOME_ADDRESSES[label]
        return Home(label, f"{self.prefix}r{label}", f"{self.prefix}h{label}", public, router_lan, host, lan,
                    firewall, random_ports)

    def __repr__(self) -> str:
        return f"NetLab(variant={self.variant!r}, prefix={self.prefix!r}, backend={self.backend!r})"

    @property
    def homes(self) -> tuple[Home, Home]:
        return (self.home_a, self.home_b)

    @property
    def namespaces(self) -> list[str]:
        """All of the lab's namespace names (built or to be built)."""
        return [self.internet_ns, self.home_a.router_ns, self.home_a.host_ns,
                self.home_b.router_ns, self.home_b.host_ns]

    @property
    def routers(self) -> list[str]:
        return [self.home_a.router_ns, self.home_b.router_ns]

    # -- building -------------------------------------------------------------

    def build(self) -> None:
        """Create namespaces, links, addresses, routes and NAT/firewall rules. On any
        failure everything already created is deleted and the error re-raised."""
        _open_labs.add(self)
        try:
            for ns in self.namespaces:
                _sh(["ip", "netns", "add", ns])
                self._created.append(ns)
                _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            inet = self.internet_ns
            _sh(["ip", "-n", inet, "link", "add", "inet0", "type", "bridge"])
            _sh(["ip", "-n", inet, "addr", "add", f"{BOARD_IP}/24", "dev", "inet0"])
            _sh(["ip", "-n", inet, "link", "set", "inet0", "up"])
            for home in self.homes:
                self._setup_home(home)
        except BaseException:
            self.close()
            raise

    def _setup_home(self, home: Home) -> None:
        r, h, inet = home.router_ns, home.host_ns, self.internet_ns
        port = f"wan-{home.label}"
        _sh(["ip", "-n", r, "link", "add", "wan", "type", "veth", "peer", "name", port, "netns", inet])
        _sh(["ip", "-n", inet, "link", "set", port, "master", "inet0", "up"])
        _sh(["ip", "-n", r, "addr", "add", f"{home.public_ip}/24", "dev", "wan"])
        _sh(["ip", "-n", r, "link", "set", "wan", "up"])
        _sh(["ip", "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h])
        _sh(["ip", "-n", r, "addr", "add", f"{home.router_lan_ip}/25", "dev", "lan"])
        _sh(["ip", "-n", r, "link", "set", "lan", "up"])
        _sh(["ip", "-n", h, "addr", "add", f"{home.host_ip}/25", "dev", "eth0"])
        _sh(["ip", "-n", h, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", h, "route", "add", "default", "via", home.router_lan_ip])
        _sh(["ip", "netns", "exec", r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        self._setup_router(home)

    def _setup_router(self, home: Home) -> None:
        if self.backend == "nft":
            _sh(["ip", "netns", "exec", home.router_ns, "nft", "-f", "-"], input=nft_ruleset(home))
        else:
            _sh(["ip", "netns", "exec", home.router_ns, "iptables-restore"], input=iptables_ruleset(home))

    # -- running things inside ------------------------------------------------

    def start(self, ns: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str = ROOT) -> LabProcess:
        """Start ``argv`` inside namespace ``ns``; stopped at teardown at the latest."""
        self._check_ns(ns)
        proc = LabProcess(ns, argv, env=env if env is not None else lab_env(), cwd=cwd)
        self._procs.append(proc)
        return proc

    def start_python(self, ns: str, code_or_script: str | Path, *args: str,
                     env: Mapping[str, str] | None = None) -> LabProcess:
        """Start ``python -c CODE ARGS`` (or ``python SCRIPT ARGS`` for a Path) in ``ns``."""
        return self.start(ns, _python_argv(code_or_script, args), env=env)

    def run(self, ns: str, argv: Sequence[str], *, timeout: float = CMD_TIMEOUT, input: str | None = None,
            env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside ``ns`` (killed after ``timeout`` seconds)."""
        self._check_ns(ns)
        full = ["ip", "netns", "exec", ns, *argv]
        try:
            res = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                                 env=dict(env) if env is not None else lab_env(), cwd=ROOT)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{' '.join(argv)[:200]!r} in {ns}: no exit within {timeout} s; stderr:\n"
                           f"{_text(e.stderr)}") from None
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)[:200]!r} in {ns} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        return res

    def run_python(self, ns: str, code_or_script: str | Path, *args: str, timeout: float = CMD_TIMEOUT,
                   input: str | None = None, env: Mapping[str, str] | None = None) -> str:
        """Run a Python snippet (str) or script (Path) in ``ns``; its stdout. LabError
        (with stderr) when it fails or runs longer than ``timeout`` seconds."""
        return self.run(ns, _python_argv(code_or_script, args), timeout=timeout, input=input, env=env).stdout

    def _check_ns(self, ns: str) -> None:
        if self.closed:
            raise LabError(f"{self!r} is torn down")
        if ns not in self.namespaces:
            raise LabError(f"{ns!r} is not a namespace of {self!r}")

    # -- state ----------------------------------------------------------------

    def flush_conntrack(self) -> None:
        """Forget every tracked connection and NAT mapping in both routers."""
        for r in self.routers:
            _sh(["ip", "netns", "exec", r, "conntrack", "-F"])

    def renumber(self, home: Home, new_ip: str) -> None:
        """The ISP gives ``home`` a new public address (a DHCP renewal, a router reboot):
        the old address goes away and with it every NAT mapping through the router.
        Established connections from the home break; nobody inside is told."""
        r = home.router_ns
        # Old first: deleting a primary address also deletes its secondaries.
        _sh(["ip", "-n", r, "addr", "del", f"{home.public_ip}/24", "dev", "wan"])
        _sh(["ip", "-n", r, "addr", "add", f"{new_ip}/24", "dev", "wan"])
        _sh(["ip", "netns", "exec", r, "conntrack", "-F"])
        home.public_ip = new_ip

    def cut(self, home: Home, peer_ip: str) -> None:
        """Drop every packet between ``home`` and ``peer_ip`` in ``home``'s router, both
        ways (e.g. two homes that cannot punch to each other but still reach the board)."""
        r = home.router_ns
        if self.backend == "nft":
            rules = ["table ip p2pcut {"]
            for chain in ("input", "forward", "output"):
                rules += [f"  chain {chain} {{", f"    type filter hook {chain} priority -10; policy accept;",
                          f"    ip saddr {peer_ip} drop", f"    ip daddr {peer_ip} drop", "  }"]
            _sh(["ip", "netns", "exec", r, "nft", "-f", "-"], input="\n".join([*rules, "}"]) + "\n")
        else:
            _sh(["ip", "netns", "exec", r, "iptables", "-N", "P2PCUT"])
            for flag in ("-s", "-d"):
                _sh(["ip", "netns", "exec", r, "iptables", "-A", "P2PCUT", flag, peer_ip, "-j", "DROP"])
            for chain in ("INPUT", "FORWARD", "OUTPUT"):
                _sh(["ip", "netns", "exec", r, "iptables", "-I", chain, "-j", "P2PCUT"])

    def uncut(self, home: Home) -> None:
        """Undo :meth:`cut`."""
        r = home.router_ns
        if self.backend == "nft":
            _sh(["ip", "netns", "exec", r, "nft", "delete", "table", "ip", "p2pcut"])
        else:
            for chain in ("INPUT", "FORWARD", "OUTPUT"):
                _sh(["ip", "netns", "exec", r, "iptables", "-D", chain, "-j", "P2PCUT"])
            _sh(["ip", "netns", "exec", r, "iptables", "-F", "P2PCUT"])
            _sh(["ip", "netns", "exec", r, "iptables", "-X", "P2PCUT"])

    def conntrack_entries(self, ns: str) -> list[str]:
        """``conntrack -L`` in ``ns``, one entry a line."""
        self._check_ns(ns)
        out = _sh(["ip", "netns", "exec", ns, "conntrack", "-L"])
        return [line for line in out.splitlines() if line.strip()]

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Stop lab processes, flush conntrack, delete every namespace (and with them
        the veths, the bridge and all rules). Idempotent. LabError if a namespace
        could not be deleted."""
        if self.closed:
            return
        self.closed = True
        errors: list[str] = []
        try:
            for proc in reversed(self._procs):
                try:
                    proc.stop()
                except Exception as e:  # keep tearing down
                    errors.append(f"stopping {proc.argv[:3]}: {e}")
            present = set(list_namespaces())
            for r in self.routers:
                if r in present:
                    with contextlib.suppress(LabError):
                        _sh(["ip", "netns", "exec", r, "conntrack", "-F"])
            for ns in reversed(self.namespaces):
                if ns in present:
                    try:
                        _delete_namespace(ns)
                    except LabError as e:
                        errors.append(str(e))
        finally:
            _open_labs.discard(self)
        if errors:
            raise LabError("netlab teardown incomplete:\n" + "\n".join(errors))

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def nft_ruleset(home: Home) -> str:
    """The router's nftables ruleset: MASQUERADE out of ``wan`` and, with a firewall,
    drop inbound packets on ``wan`` that conntrack does not know."""
    masq = "masquerade fully-random" if home.random_ports else "masquerade"
    rules = [
        "table ip p2plab {",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "wan" {masq}',
        "  }",
    ]
    if home.firewall:
        for chain in ("input", "forward"):
            rules += [
                f"  chain {chain} {{",
                f"    type filter hook {chain} priority filter; policy accept;",
                '    iifname "wan" ct state established,related accept',
                '    iifname "wan" drop',
                "  }",
            ]
    rules.append("}")
    return "\n".join(rules) + "\n"


def iptables_ruleset(home: Home) -> str:
    """The same rules as :func:`nft_ruleset`, for ``iptables-restore``."""
    masq = "-A POSTROUTING -o wan -j MASQUERADE" + (" --random-fully" if home.random_ports else "")
    lines = ["*nat", masq, "COMMIT", "*filter"]
    if home.firewall:
        for chain in ("INPUT", "FORWARD"):
            lines += [f"-A {chain} -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                      f"-A {chain} -i wan -j DROP"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def build_lab(variant: Variant, *, backend: Backend | None = None) -> NetLab:
    """Build a lab of ``variant`` (see :data:`VARIANTS`); the caller must ``close()`` it
    (or use it as a context manager). Stale namespaces of dead runs are removed first."""
    global _stale_cleaned
    if variant not in VARIANTS:
        raise ValueError(f"unknown netlab variant {variant!r}; expected one of {ALL_VARIANTS}")
    chosen = backend or pick_backend()
    if chosen is None:
        raise LabError("neither nft nor iptables-restore found")
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()
    lab = NetLab(variant, backend=chosen)
    t0 = time.monotonic()
    lab.build()
    lab.build_seconds = time.monotonic() - t0
    return lab


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@atexit.register
def _close_open_labs() -> None:
    """Last resort when a run ends without tearing its labs down (e.g. KeyboardInterrupt
    outside pytest's fixture teardown)."""
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()
