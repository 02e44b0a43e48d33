"""Every ``p2prt`` command explains itself, takes -v/-q where a user types them, and its
errors say what to do next."""

from __future__ import annotations

import pytest

from p2prt.cli.main import _subcommands, build_parser, main

COMMANDS = [c.prog.removeprefix("p2prt ").split() for c in _subcommands(build_parser())]


def test_every_command_is_listed() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"worker", "board", "status", "demo", "keygen", "cluster create", "board add-user"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_has_examples_and_output_options(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Examples:" in text and f"p2prt {' '.join(command)}" in text.split("Examples:")[1]
    assert "-v, --verbose" in text and "-q, --quiet" in text


def test_verbosity_after_the_command_wins() -> None:
    parser = build_parser()
    assert parser.parse_args(["status"]).verbose == 0
    assert parser.parse_args(["-v", "status"]).verbose == 1
    assert parser.parse_args(["status", "-vv"]).verbose == 2
    assert parser.parse_args(["worker", "--cluster", "a/b", "-q"]).quiet is True


def test_a_missing_board_address_says_how_to_set_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2prt: error:") and "Traceback" not in err
    assert "--board" in err and "P2PRT_BOARD" in err
