"""``p2prt`` command line: argument parsing, logging set-up, and dispatch.

Each sub-command lives in its own module with ``register(subparsers)`` and a handler
that returns an exit code. Errors from :mod:`p2prt.errors` are printed as one line
(``p2prt: error: ...``) with exit code 1; ``-v`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import P2prtError
from . import board, cluster, config_cmd, demo, keys, worker

_COMMANDS = (keys, board, cluster, worker, demo, config_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2prt",
        description="Pool idle computers into one encrypted peer-to-peer compute cluster.",
        epilog="Examples:\n  p2prt demo\n  p2prt keygen\n  p2prt worker --cluster alice/friends --board HOST:PORT\n"
        "  p2prt board --data ~/p2prt-board\n  p2prt cluster create friends\n  p2prt status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"p2prt {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    for command in _subcommands(parser):
        # -v/-q also after the command (p2prt worker -v ...); given there, they win.
        group = command.add_argument_group("output")
        group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                           help="more output (-vv for debug)")
        group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors")
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser, at any depth (``cluster create`` too)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.append(child)
                found.extend(_subcommands(child))
    return found


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level > logging.DEBUG:
        # The kademlia package logs every unanswered UDP request (a departed peer) as an
        # error; p2prt's DHT layer reports what matters itself.
        for name in ("kademlia", "rpcudp"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
        return code
    except P2prtError as exc:
        if args.verbose:
            raise
        print(f"p2prt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into e.g. head: stop quietly, as Unix tools do.
        sys.stderr.close()
        return 141


def run() -> None:
    sys.exit(main())
