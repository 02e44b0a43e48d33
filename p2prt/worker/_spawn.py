"""Starting and stopping executor subprocesses: command line, environment, sandbox.

An executor is ``python -m p2prt.worker.executor FD [--memory BYTES] [--cpu SECONDS]``,
optionally wrapped in bubblewrap::

    bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --tmpfs $HOME \\
          [--ro-bind P P ...] --unshare-net --unshare-pid --unshare-ipc --unshare-uts \\
          --unshare-cgroup-try --new-session --cap-drop ALL --die-with-parent python -m ...

where the ``P`` are the directories Python needs that live under ``/tmp`` or ``$HOME``
(a virtualenv in the home folder, this package's source tree, ``PYTHONPATH`` entries), so
the executor can still import them read-only while everything else there is hidden.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from ..errors import ConfigError

__all__ = ["bwrap_path", "describe_exit", "executor_argv", "executor_env", "terminate"]

#: The directory holding the ``p2prt`` package (put on the executor's ``PYTHONPATH``).
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def bwrap_path() -> str:
    """Where bubblewrap is installed. Raises :class:`ConfigError` if it is not."""
    path = shutil.which("bwrap")
    if path is None:
        raise ConfigError(
            "the executor sandbox needs bubblewrap (bwrap), which is not installed on this machine; "
            "install it (Debian/Ubuntu: apt-get install bubblewrap) or run without the sandbox"
        )
    return path


def executor_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The executor's environment: ``env`` (default: ours) with this package importable."""
    out = dict(os.environ if env is None else env)
    paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    if PACKAGE_ROOT not in paths:
        out["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT, *paths])
    return out


def executor_argv(
    python: str,
    fd: int,
    *,
    memory_limit: int | None,
    cpu_time_limit: int | None,
    sandbox: bool,
    env: Mapping[str, str],
) -> list[str]:
    """The command line that starts one executor on inherited file descriptor ``fd``."""
    argv = [python, "-m", "p2prt.worker.executor", str(fd)]
    if memory_limit is not None:
        argv += ["--memory", str(int(memory_limit))]
    if cpu_time_limit is not None:
        argv += ["--cpu", str(int(cpu_time_limit))]
    if not sandbox:
        return argv
    home = env.get("HOME", "")
    hidden = ["/tmp"]
    if home and os.path.isabs(home) and Path(home).resolve() != Path("/"):
        hidden.append(str(Path(home).resolve()))
    prefix = [bwrap_path(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in hidden:
        prefix += ["--tmpfs", path]
    for path in _needed_under(hidden, python, env):
        prefix += ["--ro-bind", path, path]
    # No network, no view of other processes (a task cannot signal its worker or the
    # user's programs), no shared IPC, no terminal to inject into, no capabilities.
    confine = ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--new-session", "--cap-drop", "ALL", "--die-with-parent"]
    return [*prefix, *confine, *argv]


def _needed_under(hidden: list[str], python: str, env: Mapping[str, str]) -> list[str]:
    """Directories Python needs that a ``--tmpfs`` over ``hidden`` would hide."""
    wanted = [PACKAGE_ROOT, sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(python).resolve().parent)]
    wanted += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    wanted += [p for p in sys.path if p]
    roots = [Path(h) for h in hidden]
    keep: list[Path] = []
    for raw in wanted:
        try:
            path = Path(raw).resolve()
        except OSError:
            continue
        if not path.is_dir() or any(path == r for r in roots):
            continue
        if any(r in path.parents for r in roots):
            keep.append(path)
    keep.sort(key=lambda p: len(p.parts))
    out: list[Path] = []
    for path in keep:
        if not any(p == path or p in path.parents for p in out):
            out.append(path)
    return [str(p) for p in out]


def describe_exit(pid: int, returncode: int | None, *, sandboxed: bool) -> str:
    """Human text for an executor's end, e.g. ``executor pid 12 died with signal 9 (SIGKILL)``."""
    if returncode is None:
        return f"executor pid {pid} stopped answering"
    sig = -returncode if returncode < 0 else (returncode - 128 if sandboxed and returncode > 128 else 0)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "unknown signal"
        return f"executor pid {pid} died with signal {sig} ({name})"
    return f"executor pid {pid} exited with code {returncode}"


async def open_executor(argv: list[str], fd: int, env: Mapping[str, str]) -> trio.Process:
    """Start an executor process that inherits ``fd``, in its own session (so a Ctrl-C
    meant for the worker does not reach its tasks)."""
    return await trio.lowlevel.open_process(
        argv,
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        env=dict(env),
        start_new_session=True,
    )


async def terminate(proc: trio.Process, *, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the process is reaped.
    Call it shielded from cancellation."""
    if proc.returncode is None:
        proc.terminate()
        with trio.move_on_after(grace):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
