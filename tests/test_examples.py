"""The examples run as written, so the documentation cannot rot.

- ``examples/quickstart.py`` runs in a subprocess and must print what it promises.
- ``examples/personal_cluster.md`` and ``examples/shared_cluster.md`` are executed
  block by block with the real CLI, the way a reader would type them:

  * a fenced ```` ```sh ```` block starts with ``# terminal N``, optionally followed by
    ``(person)``, ``(keeps running)`` or ``(person, keeps running)``; it runs in
    ``bash -e`` from the working folder. Each terminal is a shell of its own: its
    earlier ``export``/``cd`` lines are replayed before its next block, as a terminal
    keeps them.
  * a block that *keeps running* runs in the background; the test waits for the line
    that says it is ready (``listening on`` for a board, ``These users may run`` for a
    worker, ``started`` for ``long_job.py``). A later block in the same terminal first
    waits for it to end. At the end, every one still running gets Ctrl-C (SIGINT to its
    process group), then SIGKILL if it lingers.
  * a ```` ```python ```` block whose first line is ``# NAME.py`` is saved as that file in
    the working folder.
  * a ```` ```text ```` block is the expected output of the ``sh`` block before it (or,
    with ```` ```text terminal N ````, of terminal N's background process, checked once it
    has ended). Every non-empty line must appear in the output; ``…`` matches anything
    and runs of spaces match any spaces. A block whose expected output shows
    ``p2prt: error:`` may exit non-zero.

Only two things are substituted: the folder ``/tmp/p2prt-try`` (where the walkthroughs
put each person's HOME) becomes a temporary folder, and the board port ``7790`` becomes
a free port. ``p2prt`` and ``python3`` on ``PATH`` are this interpreter's.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOC_DIR = "/tmp/p2prt-try"
DOC_PORT = "7790"
READY = (  # last command of a "keeps running" block -> the line that says it is ready
    (re.compile(r"^p2prt board --data\b"), re.compile(r"listening on")),
    (re.compile(r"^p2prt worker\b"), re.compile(r"These users may run")),
    (re.compile(r"^python3 long_job\.py\b"), re.compile(r"started")),
)
STOPPED = (
    (re.compile(r"^p2prt board --data\b"), "p2prt board stopped"),
    (re.compile(r"^p2prt worker\b"), "p2prt worker stopped"),
)
START_TIMEOUT = 30.0
STEP_TIMEOUT = 60.0
_HEADER = re.compile(r"^# terminal (\d+)(?: \(([^)]*)\))?\s*$")
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


# -- parsing the walkthroughs -------------------------------------------------------------


@dataclass
class Block:
    kind: str  # "sh", "file", "output"
    text: str
    line: int
    terminal: str = ""
    keeps_running: bool = False
    filename: str = ""


def parse_walkthrough(markdown: str) -> list[Block]:
    """The runnable blocks of a walkthrough, in order (see the module docstring)."""
    blocks: list[Block] = []
    for m in _FENCE.finditer(markdown):
        info, body = m.group(1).split(), m.group(2)
        line = markdown.count("\n", 0, m.start()) + 1
        lang = info[0] if info else ""
        first = body.splitlines()[0] if body.strip() else ""
        if lang == "sh":
            header = _HEADER.match(first)
            assert header, f"line {line}: a sh block must start with '# terminal N', not {first!r}"
            notes = [n.strip() for n in (header.group(2) or "").split(",") if n.strip()]
            blocks.append(Block("sh", body, line, terminal=header.group(1), keeps_running="keeps running" in notes))
        elif lang == "python":
            name = re.fullmatch(r"# (\w+\.py)", first)
            assert name, f"line {line}: a python block must start with '# NAME.py'"
            blocks.append(Block("file", body, line, filename=name.group(1)))
        elif lang == "text":
            terminal = info[2] if len(info) == 3 and info[1] == "terminal" else ""
            blocks.append(Block("output", body, line, terminal=terminal))
        else:
            raise AssertionError(f"line {line}: unexpected fenced block {lang!r} in a walkthrough")
    return blocks


def _commands(script: str) -> list[str]:
    return [ln.split("#")[0].strip() for ln in script.splitlines() if ln.split("#")[0].strip()]


def expected_lines(text: str) -> list[tuple[str, re.Pattern[str]]]:
    """Each non-empty line as a pattern: ``…`` matches anything, spaces match spaces."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [r"\s+".join(re.escape(tok) for tok in part.split()) for part in line.split("…")]
        out.append((line.strip(), re.compile(".*?".join(parts))))
    return out


def check_output(expected: str, actual: str, where: str) -> None:
    missing = [line for line, pattern in expected_lines(expected) if not pattern.search(actual)]
    assert not missing, (
        f"{where}: expected lines not in the output:\n  " + "\n  ".join(missing) + f"\n--- output ---\n{actual}"
    )


# -- running them ---------------------------------------------------------------------------


@dataclass
class Background:
    """A "keeps running" block: its process (a session of its own) and its output."""

    terminal: str
    command: str
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _read(bg: Background, ready: re.Pattern[str]) -> None:
    assert bg.proc.stdout is not None
    for line in bg.proc.stdout:
        bg.lines.append(line)
        if ready.search(line):
            bg.ready.set()
    bg.done.set()


def _stop(bg: Background) -> None:
    """Ctrl-C for the block's process group, then SIGKILL if it does not end."""
    for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGKILL, 10.0)):
        if bg.proc.poll() is not None:
            break
        try:
            os.killpg(bg.proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            bg.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    bg.done.wait(5)
    if bg.proc.stdout is not None:
        bg.proc.stdout.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shims(folder: Path) -> Path:
    """``p2prt`` and ``python3`` for this interpreter, first on PATH."""
    folder.mkdir()
    for name, body in (
        ("p2prt", f'exec "{sys.executable}" -m p2prt "$@"\n'),
        ("python3", f'exec "{sys.executable}" "$@"\n'),
    ):
        path = folder / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def _environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2PRT_")}
    for name in ("XDG_CONFIG_HOME", "SSH_AUTH_SOCK"):
        env.pop(name, None)
    env["HOME"] = str(tmp_path / "no-home")  # each terminal exports its own
    env["PATH"] = f"{_shims(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"  # line by line, as on a terminal
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_walkthrough(markdown: str, tmp_path: Path) -> list[Background]:
    """Execute a walkthrough (see the module docstring); returns its background
    processes, all ended by then."""
    work = tmp_path / "try"
    work.mkdir()
    port = str(_free_port())

    def sub(text: str) -> str:
        return text.replace(DOC_DIR, str(work)).replace(DOC_PORT, port)

    env = _environment(tmp_path)
    blocks = parse_walkthrough(markdown)
    replay: dict[str, list[str]] = {}  # per terminal: its export and cd lines so far
    running: dict[str, Background] = {}
    started: list[Background] = []
    latest: dict[str, Background] = {}  # per terminal: the last thing it ran in the background
    deferred: list[tuple[Background, Block]] = []  # outputs to check once the process has ended
    try:
        for i, block in enumerate(blocks):
            where = f"line {block.line}"
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            expected = following.text if following and following.kind == "output" and not following.terminal else ""
            if block.kind == "file":
                (work / block.filename).write_text(sub(block.text))
                continue
            if block.kind == "output":
                if block.terminal:
                    assert block.terminal in latest, f"{where}: terminal {block.terminal} ran nothing in the background"
                    deferred.append((latest[block.terminal], block))
                continue  # other output blocks are checked with the block before them
            term = block.terminal
            previous = running.pop(term, None)
            if previous is not None:  # a terminal runs one thing at a time
                assert previous.done.wait(START_TIMEOUT), f"{where}: terminal {term} is still busy:\n{previous.output}"
                previous.proc.wait(timeout=5)
            text = sub(block.text)
            script = "\n".join(["set -e", *replay.get(term, []), text])
            replay.setdefault(term, []).extend(ln for ln in text.splitlines() if ln.startswith(("export ", "cd ")))
            if block.keeps_running:
                command = _commands(block.text)[-1]
                ready = next((r for c, r in READY if c.match(command)), None)
                assert ready is not None, f"{where}: no readiness line known for {command!r}"
                proc = subprocess.Popen(
                    ["bash", "-c", script],
                    cwd=work,
                    env=env,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                bg = Background(term, command, proc)
                started.append(bg)
                running[term] = latest[term] = bg
                threading.Thread(target=_read, args=(bg, ready), daemon=True).start()
                deadline = time.monotonic() + START_TIMEOUT
                while not bg.ready.wait(0.05):
                    assert not bg.done.is_set(), f"{where}: {command!r} ended before it was ready:\n{bg.output}"
                    assert time.monotonic() < deadline, f"{where}: {command!r} is not ready:\n{bg.output}"
                if following is not None and expected:
                    deferred.append((bg, following))
            else:
                res = subprocess.run(
                    ["bash", "-c", script],
                    cwd=work,
                    env=env,
                    text=True,
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                    timeout=STEP_TIMEOUT,
                )
                output = res.stdout + res.stderr
                may_fail = "p2prt: error:" in expected
                assert res.returncode == 0 or may_fail, f"{where}: exit code {res.returncode}:\n{output}"
                if expected:
                    check_output(sub(expected), output, where)
    finally:
        for bg in reversed(started):
            _stop(bg)
    for bg, block in deferred:
        check_output(sub(block.text), bg.output, f"line {block.line} (terminal {bg.terminal}, {bg.command!r})")
    for bg in started:
        for command, line in STOPPED:
            if command.match(bg.command):
                assert line in bg.output, f"{bg.command!r} did not say {line!r}:\n{bg.output}"
    return started


# -- the tests ------------------------------------------------------------------------------


def test_quickstart(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    env["HOME"] = str(tmp_path)
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "connected to local/personal (embedded: True)",
        "squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "sum of squares 0..10: 385",
        "sum via put: 499500",
        "ready first: [0.05]; still running: 1",
        res.stdout.splitlines()[5],
        "done",
    ]
    assert re.fullmatch(
        r"caught ZeroDivisionError: task divide failed on local@\S+: ZeroDivisionError: division by zero",
        res.stdout.splitlines()[5],
    )


def test_personal_cluster_walkthrough(tmp_path: Path) -> None:
    started = run_walkthrough((EXAMPLES / "personal_cluster.md").read_text(), tmp_path)
    assert [bg.command.split()[:2] for bg in started] == [["p2prt", "board"], ["p2prt", "worker"]]


def test_shared_cluster_walkthrough(tmp_path: Path) -> None:
    started = run_walkthrough((EXAMPLES / "shared_cluster.md").read_text(), tmp_path)
    assert [bg.terminal for bg in started] == ["1", "3", "4"]


@pytest.mark.parametrize("name", ["personal_cluster.md", "shared_cluster.md"])
def test_walkthrough_blocks_are_all_runnable(name: str) -> None:
    """Every shell block has a terminal header, so none is silently skipped."""
    markdown = (EXAMPLES / name).read_text()
    blocks = parse_walkthrough(markdown)
    assert markdown.count("```sh") == sum(b.kind == "sh" for b in blocks) > 0


def test_protocol_doc_lists_every_message() -> None:
    """docs/protocol.md has a row for every board and peer message tag."""
    from p2prt.wire import board, peer
    from p2prt.wire.messages import Message

    doc = (ROOT / "docs" / "protocol.md").read_text()
    for module in (board, peer):
        for name in module.__all__:
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, Message):
                assert f"| `{cls.TAG}` |" in doc, f"{cls.TAG} ({name}) is not in docs/protocol.md"
