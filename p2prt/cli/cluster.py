"""User commands that talk to a board: register, cluster ..., status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..config import config_file, load_user_config

if TYPE_CHECKING:
    from ..board.client import BoardClient
    from ..wire.messages import Message


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", help="board address HOST:PORT (else $P2PRT_BOARD, else config.toml)")
    p.add_argument("--key", help="your SSH private key (default: see p2prt id)")
    p.add_argument(
        "--user", help="your account name on the board (default: $P2PRT_USER, else config user, else login name)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "register",
        help="create your account on an open board",
        epilog="Examples:\n  p2prt register alice --board board.example.org:7790",
        formatter_class=fmt,
    )
    p.add_argument("name")
    _common(p)
    p.set_defaults(handler=cmd_register)

    c = sub.add_parser(
        "cluster",
        help="create clusters and manage their members",
        epilog="Examples:\n  p2prt cluster create friends\n  p2prt cluster add alice/friends bob carol\n"
        "  p2prt cluster remove alice/friends carol\n  p2prt cluster list\n"
        "  p2prt cluster members alice/friends",
        formatter_class=fmt,
    )
    cs = c.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    x = cs.add_parser(
        "create",
        help="create OWNER/NAME owned by you",
        epilog="Examples:\n  p2prt cluster create friends        # makes alice/friends when you are alice",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("name")
    _common(x)
    x.set_defaults(handler=cmd_cluster, action="create")
    for action, helptext in (("add", "add members (owner only)"), ("remove", "remove members (owner only)")):
        x = cs.add_parser(
            action,
            help=helptext,
            epilog=f"Examples:\n  p2prt cluster {action} alice/friends bob carol",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        x.add_argument("cluster", metavar="OWNER/NAME")
        x.add_argument("users", nargs="+", metavar="USER")
        _common(x)
        x.set_defaults(handler=cmd_cluster, action=action)
    x = cs.add_parser(
        "delete",
        help="delete a cluster you own",
        epilog="Examples:\n  p2prt cluster delete alice/friends",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("cluster", metavar="OWNER/NAME")
    _common(x)
    x.set_defaults(handler=cmd_cluster, action="delete")
    x = cs.add_parser(
        "list",
        help="clusters you own or belong to",
        epilog="Examples:\n  p2prt cluster list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(x)
    x.set_defaults(handler=cmd_cluster, action="list")
    x = cs.add_parser(
        "members",
        help="members of a cluster",
        epilog="Examples:\n  p2prt cluster members alice/friends",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    x.add_argument("cluster", metavar="OWNER/NAME")
    _common(x)
    x.set_defaults(handler=cmd_cluster, action="members")

    s = sub.add_parser(
        "status",
        help="workers, leases and waiting requests",
        epilog="Examples:\n  p2prt status\n  p2prt status --cluster alice/friends --json",
        formatter_class=fmt,
    )
    s.add_argument("--cluster", help="only this cluster")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _common(s)
    s.set_defaults(handler=cmd_status)


def _run(args: argparse.Namespace, fn: Callable[[BoardClient], Awaitable[Any]], user: str | None = None) -> Any:
    import trio

    from ..board.client import open_board_client, resolve_board_address
    from ..identity import NodeIdentity, default_user_name, load_user_key

    address = resolve_board_address(args.board)
    key = load_user_key(args.key)
    identity = NodeIdentity.create(key, user or args.user or default_user_name())

    async def main() -> Any:
        async with open_board_client(address, identity, heartbeat=False) as board:
            return await fn(board)

    return trio.run(main)


def cmd_register(args: argparse.Namespace) -> int:
    from ..wire import board as m

    name = _run(args, lambda b: b.call(lambda rid: m.Register(rid, args.name)), user=args.name)
    print(f"registered {name}")
    cfg = load_user_config()
    if cfg.user is None and not args.user:
        path = config_file()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as f:
            f.write(f'user = "{name}"\n')
        print(f'wrote user = "{name}" to {path}')
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..wire import board as m

    action = args.action
    makers: dict[str, Callable[[int], Message]] = {
        "create": lambda rid: m.ClusterCreate(rid, args.name),
        "delete": lambda rid: m.ClusterDelete(rid, getattr(args, "cluster", "")),
        "add": lambda rid: m.ClusterAdd(rid, getattr(args, "cluster", ""), getattr(args, "users", [])),
        "remove": lambda rid: m.ClusterRemove(rid, getattr(args, "cluster", ""), getattr(args, "users", [])),
        "list": lambda rid: m.ClusterList(rid),
        "members": lambda rid: m.ClusterMembers(rid, getattr(args, "cluster", "")),
    }
    value = _run(args, lambda b: b.call(makers[action]))
    if action == "create":
        print(f"created {value}")
    elif action == "delete":
        print(f"deleted {args.cluster}")
    elif action == "add":
        print(f"added to {args.cluster}: {', '.join(value) or '(nobody new)'}")
    elif action == "remove":
        print(f"removed from {args.cluster}: {', '.join(value) or '(nobody)'}")
    elif action == "list":
        for c in value:
            print(f"{c['name']:<32} owner {c['owner']:<16} {c['members']} member(s)")
    else:
        for u in value:
            print(u)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..wire import board as m

    status = _run(args, lambda b: b.call(lambda rid: m.StatusRequest(rid, args.cluster)))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print_status(status)
    return 0


def print_status(status: dict[str, Any]) -> None:
    """The board's status as tables (rich; plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)
    workers = status["workers"]
    table = Table(title=f"Workers ({len(workers)})", title_justify="left", box=None, pad_edge=False)
    for name, justify in (("cluster", "left"), ("user", "left"), ("host", "left"), ("address", "left"),
                          ("slots", "right"), ("busy", "right"), ("reachability", "left"), ("peer", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for w in workers:
        busy = int(w["busy"])
        load = f"[bold]{busy}[/bold]" if busy and busy >= int(w["slots"]) else str(busy)
        table.add_row(w["cluster"], w["user"], w["host"], w.get("address") or "", str(w["slots"]), load,
                      w.get("reachability", ""), w["peer_id"][:12])
    console.print(table)
    leases = status["leases"]
    table = Table(title=f"Leases per user ({sum(u['leases'] for u in leases)})", title_justify="left", box=None,
                  pad_edge=False)
    for name, justify in (("cluster", "left"), ("user", "left"), ("leases", "right"), ("cpus", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for u in leases:
        table.add_row(u["cluster"], u["user"], str(u["leases"]), str(u["cpus"]))
    console.print(table)
    waiting = status["waiting"]
    table = Table(title=f"Waiting lease requests ({len(waiting)})", title_justify="left", box=None, pad_edge=False)
    for name, justify in (("cluster", "left"), ("user", "left"), ("count", "right"), ("cpus each", "right"),
                          ("client", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in waiting:
        table.add_row(r["cluster"], r["user"], str(r["count"]), str(r["num_cpus"]), r["client"][:12])
    console.print(table)
