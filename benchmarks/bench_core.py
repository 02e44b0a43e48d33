import time

_T0 = time.perf_counter()  # start-up is measured from here (a fresh child process)

__doc__ = """Core task benchmark: p2prt's runtime against Ray, Dask and ProcessPoolExecutor.

    python benchmarks/bench_core.py [--quick] [--only p2prt,ray,dask,processpool]
                                    [--layout embedded|shared|both] [--payload bytes|numpy]
                                    [--budget 170] [--settle SECONDS] [--log FILE]

Prints one table from one run. Every system runs, one after the other, in a fresh child
process of this script (``--child NAME``) that measures, in this order:

1. start-up to first result: from the top of the child (before the system is imported)
   to the value of one no-op task;
2. no-op round trip: ``get(f.remote())`` one after the other, median and p99;
3. 3,000 no-op tasks submitted at once, then all results awaited: tasks/s, best of 3;
4. 64 MiB argument (a task returning ``len(x)``) and 64 MiB result (a task returning
   64 MiB), MiB/s, best of 3;
5. 8 tasks that each burn 0.5 s of CPU time (``time.process_time``) on 2 slots:
   efficiency = (8 x 0.5) / (2 x elapsed); the first run is reported (it follows the
   no-op rows, as in a real program), later runs in brackets;
6. busy driver: while the main thread runs a pure-Python loop, a second thread does
   ``get(f.remote())`` again and again: median latency.

Systems, each only when importable: p2prt's embedded cluster (``p2prt.init(num_cpus=2)``);
``--layout shared``: a separate ``p2prt board`` process and two ``p2prt worker``
processes of 1 slot each on loopback, with a throwaway key and user in a temporary
folder, the driver joining with ``p2prt.init("USER/personal", board=..., key=...,
user=...)``; Ray (``ray.init(num_cpus=2)``); Dask (``LocalCluster(n_workers=2,
threads_per_worker=1, processes=True)`` + ``Client``); ``ProcessPoolExecutor(2)``.

A system that fails shows ``error: ...`` in its cells (tracebacks in ``--log``) and the run
goes on. Every loop and every child is bounded; the whole run takes under 3 minutes on a
2-core machine (``--budget`` seconds, default 170). Ratio columns: how many times better
p2prt (embedded) is than the peer (> 1: p2prt is better, < 1: worse). The last row is
the share of the machine other processes used meanwhile: on 2 cores it skews everything.
Ray and Dask are not project dependencies; benchmarks/README.md says how to install them
for a run.
"""

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402

MIB = 1024 * 1024
PAYLOAD = 64 * MIB
SYSTEMS = ("p2prt", "p2prt-shared", "ray", "dask", "processpool")
LABELS = {
    "p2prt": "p2prt",
    "p2prt-shared": "p2prt shared",
    "ray": "Ray",
    "dask": "Dask",
    "processpool": "ProcessPool",
}
IMPORTS = {
    "p2prt": "p2prt",
    "p2prt-shared": "p2prt",
    "ray": "ray",
    "dask": "distributed",
    "processpool": "concurrent.futures",
}

# (key, label, unit, target text, target value, higher is better)
ROWS = [
    ("startup", "start-up to first result", "s", "<= 0.5", 0.5, False),
    ("rt_median", "no-op round trip, median", "ms", "<= 0.5", 0.5, False),
    ("rt_p99", "no-op round trip, p99", "ms", "<= 0.8", 0.8, False),
    ("burst", "3,000 no-op tasks at once", "tasks/s", ">= 20,000", 20000.0, True),
    ("arg64", "64 MiB argument", "MiB/s", ">= 600", 600.0, True),
    ("res64", "64 MiB result", "MiB/s", ">= 600", 600.0, True),
    ("efficiency", "8 x 0.5 s CPU on 2 slots, efficiency, 1st run", "", ">= 0.9", 0.9, True),
    ("busy_driver", "result while driver computes, median", "ms", "<= 5", 5.0, False),
]

# --------------------------------------------------------------------------- tasks
# Defined in the child's __main__, so Ray, Dask and p2prt ship them by value (cloudpickle)
# and ProcessPoolExecutor (fork) finds them in its copy of __main__.


def noop():
    return None


def payload_len(x):
    return len(x)


def make_payload(n, kind):
    if kind == "numpy":
        import numpy

        return numpy.ones(n, dtype=numpy.uint8)
    return b"\x01" * n


def burn(seconds):
    import time as _time

    start = _time.process_time()
    x = 0
    while _time.process_time() - start < seconds:
        for i in range(1000):
            x += i
    return x


# --------------------------------------------------------------------------- systems


class System:
    """What every system offers the measurements: start, submit, get, stop."""

    def start(self):
        raise NotImplementedError

    def submit(self, fn, *args):
        raise NotImplementedError

    def submit_many(self, fn, n):
        return [self.submit(fn) for _ in range(n)]

    def get(self, handle, timeout):
        raise NotImplementedError

    def get_all(self, handles, timeout):
        raise NotImplementedError

    def stop(self):
        pass


class P2prt(System):
    def __init__(self, cluster=None, board=None, key=None, user=None):
        self.cluster, self.board, self.key, self.user = cluster, board, key, user

    def start(self):
        import p2prt

        self.p2prt = p2prt
        if self.cluster is None:
            p2prt.init(num_cpus=2)
        else:
            p2prt.init(self.cluster, board=self.board, key=self.key, user=self.user)
        self.fns = {}

    def submit(self, fn, *args):
        rf = self.fns.get(fn)
        if rf is None:
            rf = self.fns[fn] = self.p2prt.remote(fn)
        return rf.remote(*args)

    def get(self, handle, timeout):
        return self.p2prt.get(handle, timeout=timeout)

    def get_all(self, handles, timeout):
        return self.p2prt.get(handles, timeout=timeout)

    def stop(self):
        self.p2prt.shutdown()


class Ray(System):
    def start(self):
        import ray

        self.ray = ray
        ray.init(num_cpus=2)
        self.fns = {}

    def submit(self, fn, *args):
        rf = self.fns.get(fn)
        if rf is None:
            rf = self.fns[fn] = self.ray.remote(fn)
        return rf.remote(*args)

    def get(self, handle, timeout):
        return self.ray.get(handle, timeout=timeout)

    def get_all(self, handles, timeout):
        return self.ray.get(handles, timeout=timeout)

    def stop(self):
        self.ray.shutdown()


class Dask(System):
    def start(self):
        import logging

        from distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        # dashboard_address=None: no web server (nor a port clash); nothing else changed.
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)

    def submit(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def get(self, handle, timeout):
        return handle.result(timeout=timeout)

    def get_all(self, handles, timeout):
        from distributed import wait

        wait(handles, timeout=timeout)
        return self.client.gather(handles)

    def stop(self):
        self.client.close(timeout=5)
        self.cluster.close(timeout=5)


class ProcessPool(System):
    def start(self):
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(2)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def get(self, handle, timeout):
        return handle.result(timeout)

    def get_all(self, handles, timeout):
        return [h.result(timeout) for h in handles]

    def stop(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- measurements


def _percentile(values, q):
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))
    return ordered[int(index)]


def _bounded_repeats(fn, repeats, budget):
    """Run ``fn`` (returns a number, higher is better) up to ``repeats`` times, stopping
    early once ``budget`` seconds are spent; the best result."""
    best = None
    start = time.perf_counter()
    for _ in range(repeats):
        value = fn()
        best = value if best is None else max(best, value)
        if time.perf_counter() - start > budget:
            break
    return best


def measure_startup(system):
    system.start()
    system.get(system.submit(noop), 60)
    return time.perf_counter() - _T0


def measure_round_trip(system, n, warmup):
    for _ in range(warmup):
        system.get(system.submit(noop), 10)
    samples = []
    deadline = time.perf_counter() + 20
    for _ in range(n):
        t = time.perf_counter()
        system.get(system.submit(noop), 10)
        samples.append(time.perf_counter() - t)
        if t > deadline:
            break
    return _percentile(samples, 50) * 1e3, _percentile(samples, 99) * 1e3, len(samples)


def measure_burst(system, n, repeats):
    system.get_all(system.submit_many(noop, 50), 30)  # warm-up

    def once():
        t = time.perf_counter()
        system.get_all(system.submit_many(noop, n), 60)
        return n / (time.perf_counter() - t)

    return _bounded_repeats(once, repeats, 15)


def measure_transfer(system, kind, repeats):
    data = make_payload(PAYLOAD, kind)
    system.get(system.submit(payload_len, b"x"), 10)  # warm-up (function shipped)

    def arg():
        t = time.perf_counter()
        n = system.get(system.submit(payload_len, data), 60)
        elapsed = time.perf_counter() - t
        assert n == PAYLOAD, n
        return PAYLOAD / MIB / elapsed

    def result():
        t = time.perf_counter()
        value = system.get(system.submit(make_payload, PAYLOAD, kind), 60)
        elapsed = time.perf_counter() - t
        assert len(value) == PAYLOAD, len(value)
        return PAYLOAD / MIB / elapsed

    return _bounded_repeats(arg, repeats, 10), _bounded_repeats(result, repeats, 10)


def measure_efficiency(system, repeats):
    """Every run's efficiency. Not best-of: the first run comes right after the no-op
    workloads, as it would in a user's program, and a scheduler that still believes
    tasks are tiny shows there."""
    system.get(system.submit(burn, 0.01), 10)  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        system.get_all([system.submit(burn, 0.5) for _ in range(8)], 60)
        runs.append(8 * 0.5 / (2 * (time.perf_counter() - t)))
    return runs


def measure_busy_driver(system, seconds, max_samples):
    for _ in range(20):
        system.get(system.submit(noop), 10)
    samples = []
    done = threading.Event()
    errors = []

    def fetch():
        try:
            while not done.is_set() and len(samples) < max_samples:
                t = time.perf_counter()
                system.get(system.submit(noop), 10)
                samples.append(time.perf_counter() - t)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=fetch, daemon=True)
    deadline = time.perf_counter() + seconds
    thread.start()
    x = 0
    while not done.is_set() and time.perf_counter() < deadline:
        for i in range(2000):  # pure Python: holds the GIL between switch intervals
            x += i * i
    done.set()
    thread.join(15)
    if errors:
        raise errors[0]
    if not samples:
        raise RuntimeError("no result arrived while the driver computed")
    return _percentile(samples, 50) * 1e3, len(samples)


def child_main(name, quick, payload, extra):
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # libraries that print go to stderr; stdout carries only results

    def emit(key, value=None, error=None, note=None):
        record = {"row": key}
        if error is not None:
            record["error"] = error
        else:
            record["value"] = value
        if note:
            record["note"] = note
        out.write(json.dumps(record) + "\n")

    def fail(keys, exc):
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        for key in keys:
            emit(key, error=text)

    if name == "p2prt":
        system = P2prt()
    elif name == "p2prt-shared":
        system = P2prt(extra["cluster"], extra["board"], extra["key"], extra["user"])
    elif name == "ray":
        system = Ray()
    elif name == "dask":
        system = Dask()
    else:
        system = ProcessPool()

    try:
        emit("startup", measure_startup(system))
    except BaseException as exc:
        fail([row[0] for row in ROWS], exc)
        return
    steps = [
        (["rt_median", "rt_p99"], lambda: measure_round_trip(system, 300 if quick else 1000, 50)),
        (["burst"], lambda: measure_burst(system, 3000, 1 if quick else 3)),
        (["arg64", "res64"], lambda: measure_transfer(system, payload, 2 if quick else 3)),
        (["efficiency"], lambda: measure_efficiency(system, 1 if quick else 2)),
        (["busy_driver"], lambda: measure_busy_driver(system, 1.5 if quick else 3.0, 300 if quick else 1000)),
    ]
    for keys, step in steps:
        print(f"[{name}] {', '.join(keys)} ...", file=sys.stderr, flush=True)
        try:
            result = step()
        except BaseException as exc:
            fail(keys, exc)
            continue
        if keys == ["rt_median", "rt_p99"]:
            emit("rt_median", result[0], note=f"n={result[2]}")
            emit("rt_p99", result[1], note=f"n={result[2]}")
        elif keys == ["arg64", "res64"]:
            emit("arg64", result[0])
            emit("res64", result[1])
        elif keys == ["efficiency"]:
            emit("efficiency", result[0], note=", ".join(f"{r:.2f}" for r in result[1:]) or None)
        elif keys == ["busy_driver"]:
            emit("busy_driver", result[0], note=f"n={result[1]}")
        else:
            emit(keys[0], result)
    t = time.perf_counter()
    try:
        system.stop()
    except BaseException as exc:
        traceback.print_exc()
        emit("_shutdown", error=f"{type(exc).__name__}: {exc}")
    emit("_shutdown", time.perf_counter() - t)


# --------------------------------------------------------------------------- parent


class LoadMonitor:
    """Samples, every ``interval`` seconds, the CPU time the whole machine spent busy and
    the CPU time of this process's descendants; the difference is other people's load,
    which skews every number on a 2-core machine (reported per column)."""

    def __init__(self, interval=0.5):
        self.interval = interval
        self.root = os.getpid()
        self.tick = os.sysconf("SC_CLK_TCK")
        self.foreign = 0.0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def _busy():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle

    def _ours(self):
        parents, cpu = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry)
            parents[pid] = int(rest[1])
            cpu[pid] = int(rest[11]) + int(rest[12])
        ours = {}
        for pid, ticks in cpu.items():
            p, hops = pid, 0
            while p > 1 and hops < 64:
                if p == self.root:
                    ours[pid] = ticks
                    break
                p, hops = parents.get(p, 0), hops + 1
        return ours

    def _run(self):
        busy, ours = self._busy(), self._ours()
        while not self._stop.wait(self.interval):
            busy2, ours2 = self._busy(), self._ours()
            mine = sum(t - ours[p] for p, t in ours2.items() if p in ours and t >= ours[p])
            self.foreign += max(0, (busy2 - busy) - mine) / self.tick
            busy, ours = busy2, ours2

    def settle(self, max_wait, window=2.0, threshold=0.10):
        """Wait, at most ``max_wait`` seconds, for ``window`` seconds in which other
        processes used under ``threshold`` of the machine. Returns the seconds waited."""
        start = time.monotonic()
        ncpu = os.cpu_count() or 1
        while time.monotonic() - start < max_wait:
            before = self.foreign
            time.sleep(window)
            if (self.foreign - before) / (ncpu * window) < threshold:
                break
        return time.monotonic() - start

    def available(self):
        return os.path.exists("/proc/stat")

    def start(self):
        if self.available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


class SharedLayout:
    """A board process and ``workers`` 1-slot worker processes on loopback, a throwaway user."""

    USER = "bench"

    def __init__(self, log, workers=2):
        self.n_workers = workers
        import tempfile

        self.log = log
        self.dir = tempfile.mkdtemp(prefix="p2prt-bench-")
        self.procs = []
        self.env = {
            **os.environ,
            "HOME": os.path.join(self.dir, "home"),
            "XDG_CONFIG_HOME": os.path.join(self.dir, "xdg"),
            "P2PRT_USER": self.USER,
        }
        self.env.pop("P2PRT_BOARD", None)
        self.env.pop("P2PRT_KEY_PASSPHRASE", None)
        os.makedirs(self.env["HOME"])
        os.makedirs(self.env["XDG_CONFIG_HOME"])
        self.key = os.path.join(self.dir, "id_ed25519")
        self.address = ""

    def _run(self, *args):
        import subprocess

        subprocess.run(
            [sys.executable, "-m", "p2prt", *args],
            env=self.env,
            check=True,
            timeout=30,
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
        )

    def _spawn(self, *args):
        import subprocess

        proc = subprocess.Popen(
            [sys.executable, "-m", "p2prt", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def _wait_line(self, proc, needle, timeout):
        """The first output line of ``proc`` containing ``needle``; the rest of its
        output is copied to the log by a thread."""
        import queue

        lines = queue.Queue()

        def pump():
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.write(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {needle!r} from {proc.args[3:5]} within {timeout} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{proc.args[3:5]} exited ({proc.poll()}) before {needle!r}")
            if needle in line:
                return line

    def start(self):
        import re

        self._run("-q", "keygen", "--file", self.key)
        board_dir = os.path.join(self.dir, "board")
        self._run("board", "add-user", self.USER, "--key", self.key + ".pub", "--data", board_dir)
        board = self._spawn("board", "--data", board_dir, "--port", "0")
        line = self._wait_line(board, "listening on", 30)
        self.address = re.search(r"listening on ([\d.]+:\d+)", line).group(1)
        workers = [
            self._spawn(
                "worker",
                "--cluster",
                self.cluster,
                "--board",
                self.address,
                "--cpus",
                "1",
                "--key",
                self.key,
                "--user",
                self.USER,
                "--listen",
                "127.0.0.1",
            )
            for _ in range(self.n_workers)
        ]
        for worker in workers:
            self._wait_line(worker, "offering", 60)

    @property
    def cluster(self):
        return f"{self.USER}/personal"

    def extra(self):
        return {"cluster": self.cluster, "board": self.address, "key": self.key, "user": self.USER}

    def stop(self):
        import shutil
        import signal
        import subprocess

        for proc in reversed(self.procs):  # workers first, then the board
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in reversed(self.procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def run_child(name, args, budget, log, env=None, extra=None):
    """Run one system's child; its rows as {key: value or "error: ..."}."""
    import selectors
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--payload", args.payload]
    if args.quick:
        cmd.append("--quick")
    if extra:
        cmd += ["--extra", json.dumps(extra)]
    log.write(f"\n===== {name}: {' '.join(cmd)}\n")
    log.flush()
    results, notes = {}, {}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + budget
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        if not sel.select(remaining):
            continue
        line = proc.stdout.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        key = record["row"]
        results[key] = f"error: {record['error']}" if "error" in record else record["value"]
        if record.get("note"):
            notes[key] = record["note"]
        print(f"  {LABELS[name]:<13} {key:<12} {_fmt(key, results[key])}", file=sys.stderr, flush=True)
    if timed_out or proc.poll() is None:
        try:
            proc.wait(10 if not timed_out else 0.1)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the child and whatever it started
        except ProcessLookupError:
            pass
        proc.wait(10)
    sel.close()
    why = f"timed out after {budget:.0f} s" if timed_out else f"child exited with {proc.returncode}"
    for row in ROWS:
        results.setdefault(row[0], f"error: {why}")
    return results, notes


def _p2prt_revision():
    """`` (git abc1234[-dirty])`` for a p2prt imported from a git checkout, else ``""``."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("p2prt")
    if spec is None or not spec.origin:
        return ""
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=os.path.dirname(spec.origin),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f" (git {rev})" if rev else ""


def _fmt(key, value):
    if isinstance(value, str):
        return value
    if value is None:
        return "—"
    if key == "startup":
        return f"{value:.2f}"
    if key in ("rt_median", "rt_p99", "busy_driver"):
        return f"{value:.2f}"
    if key == "efficiency":
        return f"{value:.2f}"
    if key == "_shutdown":
        return f"{value:.2f} s"
    return f"{value:,.0f}"


def _ratio(p2prt_value, peer_value, higher_better):
    if not isinstance(p2prt_value, float) or not isinstance(peer_value, float) or not p2prt_value or not peer_value:
        return "—"
    ratio = p2prt_value / peer_value if higher_better else peer_value / p2prt_value
    return f"{ratio:.2f}x"


def render(columns, results, notes):
    """The table: one row per workload, one column per system, target, ratios."""
    peers = [c for c in columns if c in ("ray", "dask", "processpool")]
    header = ["workload", *[LABELS[c] for c in columns], "p2prt target"]
    if "p2prt" in columns:
        header += [f"vs {LABELS[p]}" for p in peers]
    lines = []
    for key, label, unit, target, target_value, higher in ROWS:
        row = [f"{label} ({unit})" if unit else label]
        for c in columns:
            value = results.get(c, {}).get(key, "—")
            text = _fmt(key, value)
            if c.startswith("p2prt") and isinstance(value, float):
                met = value >= target_value if higher else value <= target_value
                text += " ok" if met else " MISS"
            if key == "efficiency" and notes.get(c, {}).get(key):
                text += f" (then {notes[c][key]})"
            row.append(text)
        row.append(target)
        if "p2prt" in columns:
            mine = results.get("p2prt", {}).get(key)
            row += [_ratio(mine, results.get(p, {}).get(key), higher) for p in peers]
        lines.append(row)
    if any("_foreign" in results.get(c, {}) for c in columns):
        row = ["other processes' CPU meanwhile (% of machine)"]
        for c in columns:
            value = results.get(c, {}).get("_foreign")
            row.append("—" if value is None else f"{value:.0f}%")
        row += [""] * (len(header) - len(row))
        lines.append(row)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]

    def fmt_row(r):
        cells = (str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    out = [fmt_row(header), rule]
    out += [fmt_row(r) for r in lines]
    return "\n".join(out)


def main(argv=None):
    import argparse
    import importlib.util
    import platform
    import tempfile

    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about half the time)")
    ap.add_argument("--only", default="p2prt,ray,dask,processpool", help="comma-separated: p2prt,ray,dask,processpool")
    ap.add_argument(
        "--layout",
        choices=("embedded", "shared", "both"),
        default="embedded",
        help="p2prt's layout: the embedded cluster, a board + 2 worker processes, or both",
    )
    ap.add_argument("--payload", choices=("bytes", "numpy"), default="bytes", help="the 64 MiB object's type")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds for the whole run (default 170)")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each system, wait up to this long for other processes to go quiet "
        "(a shared machine); not counted in --budget",
    )
    ap.add_argument("--log", help="write the children's output here (default: a temporary file)")
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--extra", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        child_main(args.child, args.quick, args.payload, json.loads(args.extra) if args.extra else {})
        return 0

    start = time.monotonic()
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in wanted:
        if s not in ("p2prt", "ray", "dask", "processpool"):
            ap.error(f"--only: unknown system {s!r}")
    columns = []
    if "p2prt" in wanted:
        if args.layout in ("embedded", "both"):
            columns.append("p2prt")
        if args.layout in ("shared", "both"):
            columns.append("p2prt-shared")
    columns += [s for s in ("ray", "dask", "processpool") if s in wanted]

    log_path = args.log or os.path.join(tempfile.gettempdir(), f"bench_core-{os.getpid()}.log")
    log = open(log_path, "w")
    results, notes, skipped = {}, {}, {}
    # Rough share of the budget per system (Dask and Ray are slow to start and stop).
    weight = {"p2prt": 1.0, "p2prt-shared": 1.2, "ray": 1.6, "dask": 1.8, "processpool": 0.7}
    print(f"bench_core: {', '.join(LABELS[c] for c in columns)}; log: {log_path}", file=sys.stderr)
    monitor = LoadMonitor()
    monitor.start()
    settled = 0.0
    for i, name in enumerate(columns):
        module = IMPORTS[name]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            skipped[name] = f"{module} is not installed"
            results[name] = {row[0]: "not installed" for row in ROWS}
            continue
        if args.settle > 0 and monitor.available():
            waited = monitor.settle(args.settle)
            start += waited
            settled += waited
            print(f"waited {waited:.0f} s for other processes to go quiet", file=sys.stderr)
        left = args.budget - (time.monotonic() - start)
        share = weight[name] / sum(weight[c] for c in columns[i:])
        budget = max(10.0, left * share)
        print(f"{LABELS[name]} (up to {budget:.0f} s) ...", file=sys.stderr, flush=True)
        layout = None
        foreign0, wall0 = monitor.foreign, time.monotonic()
        try:
            env, extra = None, None
            if name == "p2prt-shared":
                layout = SharedLayout(log)
                layout.start()
                env, extra = layout.env, layout.extra()
            results[name], notes[name] = run_child(name, args, budget, log, env=env, extra=extra)
        except Exception as exc:
            traceback.print_exc()
            results[name] = {row[0]: f"error: {type(exc).__name__}: {exc}"[:120] for row in ROWS}
        finally:
            if layout is not None:
                layout.stop()
            log.flush()
        if monitor.available():
            share = (monitor.foreign - foreign0) / ((os.cpu_count() or 1) * (time.monotonic() - wall0))
            results[name]["_foreign"] = 100.0 * share
    monitor.stop()

    versions = []
    for name in dict.fromkeys("p2prt" if c.startswith("p2prt") else c for c in columns):
        if name in skipped or name == "processpool":
            continue
        try:
            from importlib.metadata import version

            dist = {"p2prt": "p2prt", "ray": "ray", "dask": "distributed"}[name]
            text = f"{LABELS[name]} {version(dist)}"
            if name == "p2prt":
                text += _p2prt_revision()
            versions.append(text)
        except Exception:
            pass
    print()
    print(
        f"bench_core, {time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {'--quick, ' if args.quick else ''}payload {args.payload}; {', '.join(versions)}"
    )
    print(render(columns, results, notes))
    shutdowns = ", ".join(
        f"{LABELS[c]} {_fmt('_shutdown', results[c].get('_shutdown'))}"
        for c in columns
        if "_shutdown" in results.get(c, {})
    )
    if shutdowns:
        print(f"shutdown took: {shutdowns}")
    for name, why in skipped.items():
        print(f"{LABELS[name]}: skipped ({why})")
    if any(isinstance(v, str) and v.startswith("error") for r in results.values() for v in r.values()):
        print(f"errors: tracebacks and the systems' own output are in {log_path}")
    print(
        "ratios: how many times better p2prt (embedded) is than the peer (> 1: better); "
        f"whole run {time.monotonic() - start:.0f} s" + (f" (+{settled:.0f} s waiting for quiet)" if settled else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
