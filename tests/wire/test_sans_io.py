"""The wire layer is sans-IO: importing it must not pull in trio, sockets or asyncio.

Checked in a fresh interpreter, because this test process has long imported all three.
Submodules are discovered rather than listed, so a module added later is covered too.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import p2prt.wire

FORBIDDEN = ("trio", "socket", "asyncio")

WIRE_MODULES = [
    "p2prt.wire",
    *sorted(f"p2prt.wire.{info.name}" for info in pkgutil.iter_modules(p2prt.wire.__path__)),
]


def _forbidden_after_importing(modules: list[str]) -> tuple[list[str], list[str]]:
    """Import ``modules`` in a fresh interpreter; return (forbidden before, forbidden after)."""
    code = textwrap.dedent(
        f"""
        import importlib, json, sys
        forbidden = {FORBIDDEN!r}
        before = [m for m in forbidden if m in sys.modules]
        for name in {modules!r}:
            importlib.import_module(name)
        after = [m for m in forbidden if m in sys.modules]
        print(json.dumps([before, after]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, after = json.loads(proc.stdout.strip().splitlines()[-1])
    return before, after


def test_wire_submodules_are_discovered() -> None:
    for name in ("frames", "messages", "control", "cipher", "handshake"):
        assert f"p2prt.wire.{name}" in WIRE_MODULES


def test_importing_wire_pulls_in_no_io() -> None:
    before, after = _forbidden_after_importing(WIRE_MODULES)
    assert before == [], f"the bare interpreter already imports {before}; the check would prove nothing"
    assert after == [], f"importing p2prt.wire imported {after}; the wire layer must stay sans-IO"


def test_each_wire_submodule_alone_pulls_in_no_io() -> None:
    # One interpreter per module, so one module cannot hide behind another's import order.
    for name in WIRE_MODULES:
        _, after = _forbidden_after_importing([name])
        assert after == [], f"importing {name} imported {after}"
