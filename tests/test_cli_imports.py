"""The CLI parses arguments without importing the roles, and the package loads its API on
first use (start-up time of workers and executors)."""

from __future__ import annotations

import subprocess
import sys


def test_cli_constants_match_the_board() -> None:
    from p2prt.board.client import DEFAULT_BOARD_PORT
    from p2prt.board.config import REGISTRATION_POLICIES
    from p2prt.cli import board as cli_board

    assert cli_board.DEFAULT_BOARD_PORT == DEFAULT_BOARD_PORT
    assert cli_board.REGISTRATION_POLICIES == REGISTRATION_POLICIES


def test_parsing_arguments_imports_no_role() -> None:
    code = (
        "import sys, p2prt.cli.main as m; m.build_parser().parse_args(['worker', '--cluster', 'a/b']); "
        "print(sorted(x for x in ('trio', 'sqlite3', 'p2prt.board.server', 'p2prt.worker.server') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_package_loads_the_api_on_first_use() -> None:
    code = (
        "import sys, p2prt; heavy = ('p2prt._api', 'p2prt._remote', 'p2prt.client.objects', 'cloudpickle', 'trio'); "
        "print(sorted(x for x in heavy if x in sys.modules)); "
        "from p2prt import *; from p2prt._api import init as i; from p2prt.client.objects import ObjectRef as R; "
        "print(p2prt.init is i, ObjectRef is R, 'remote' in dir(p2prt), hasattr(p2prt, 'nope'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True True True False"]
