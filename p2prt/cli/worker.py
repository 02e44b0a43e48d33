"""``p2prt worker``: lend this machine's CPUs to a cluster."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys

from ..errors import ConfigError

_EXAMPLES = """Examples:
  p2prt worker --cluster alice/friends
  p2prt worker --cluster alice/friends --cpus 4 --duration 2h --board board.example.org:7790
  p2prt worker --cluster me/personal --resources gpu=1"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="lend this machine's CPUs to a cluster",
        description="Offer CPU slots to a cluster. Members of that cluster can then run Python code on this "
        "machine: only join clusters whose members you trust.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cluster", required=True, metavar="OWNER/NAME", help="the cluster to serve (you must be a member)")
    p.add_argument("--board", help="board address HOST:PORT (else $P2PRT_BOARD, else config.toml)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="slots to offer (default: all CPUs)")
    p.add_argument("--duration", help="stop after this long (e.g. 90m, 2h, 1d); default: until Ctrl-C")
    p.add_argument("--resources", default="", help="custom resources, e.g. gpu=1,fastdisk=1")
    p.add_argument("--key", help="your SSH private key")
    p.add_argument("--user", help="your account name on the board")
    p.add_argument("--listen", default="0.0.0.0", help="address for clients to connect to (default 0.0.0.0)")
    p.add_argument("--announce", action="append", default=[], help="address to announce instead (repeatable)")
    p.add_argument("--memory-limit", help="per-executor memory limit (address space), e.g. 4G")
    p.add_argument("--cpu-time-limit", type=int, metavar="SECONDS",
                   help="CPU seconds one task may use before its executor is stopped")
    p.add_argument("--sandbox", action="store_true",
                   help="run tasks under bubblewrap (read-only system, private /tmp and home, no network, "
                        "no other processes visible)")
    p.add_argument("--embedded", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=cmd_worker)


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ConfigError(f"bad duration {text!r}: use e.g. 30m, 2h, 1d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_resources(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ConfigError(f"bad resource {item!r}: use name=number") from None
    return out


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not m:
        raise ConfigError(f"bad size {text!r}: use e.g. 512M or 4G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def cmd_worker(args: argparse.Namespace) -> int:
    import trio

    from ..board.client import resolve_board_address
    from ..identity import NodeIdentity, default_user_name, load_user_key
    from ..worker.server import WorkerConfig, WorkerServer

    if args.cpus < 1:
        raise ConfigError("--cpus must be at least 1")
    duration = parse_duration(args.duration) if args.duration else None
    config = WorkerConfig(
        board_address=resolve_board_address(args.board),
        cluster=args.cluster,
        slots=args.cpus,
        resources=parse_resources(args.resources),
        listen_host=args.listen,
        announce=tuple(args.announce),
        memory_limit=parse_size(args.memory_limit) if args.memory_limit else None,
        cpu_time_limit=args.cpu_time_limit,
        sandbox=args.sandbox,
    )
    identity = NodeIdentity.create(load_user_key(args.key), args.user or default_user_name())

    def ready(members: list[str]) -> None:
        if args.embedded:
            return
        print(f"p2prt worker: offering {config.slots} slot(s) to {config.cluster} via board {config.board_address}")
        print(f"These users may run Python code on this machine: {', '.join(members) or '(none)'}")
        print("(the cluster's owner can add members later; use --sandbox to confine tasks)", flush=True)

    async def main() -> None:
        def published(address: tuple[str, int]) -> None:
            if not args.embedded:
                print(f"p2prt worker: address published in the DHT (node on udp {address[0]}:{address[1]})", flush=True)

        server = WorkerServer(config, identity, on_ready=ready, on_published=published)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                with trio.move_on_after(duration if duration is not None else float("inf")):
                    async for _ in signals:
                        break
            nursery.cancel_scope.cancel()

    from ..transport._errors import unwrap_single_group

    with unwrap_single_group():
        trio.run(main)
    if not args.embedded:
        print("p2prt worker stopped", file=sys.stderr)
    return 0
