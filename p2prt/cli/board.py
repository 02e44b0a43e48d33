"""``p2prt board``: run a board, and the operator's account commands on its host."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, KeyLoadError

if TYPE_CHECKING:
    from ..identity.keys import SshPublicKey

# Kept in step with p2prt.board (imported lazily: parsing arguments must stay cheap).
DEFAULT_BOARD_PORT = 7790
REGISTRATION_POLICIES = ("closed", "open")

_EXAMPLES = """Examples:
  p2prt board --data ~/p2prt-board --host 0.0.0.0 --port 7790
  p2prt board --data ~/p2prt-board --dashboard 8080     # then open http://127.0.0.1:8080/
  p2prt board add-user alice --key ~/alice.pub --data ~/p2prt-board
  p2prt board add-user bob --key 'ssh-ed25519 AAAA... bob@laptop' --data ~/p2prt-board
  p2prt board list-users --data ~/p2prt-board
  p2prt board remove-user bob --data ~/p2prt-board"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "board",
        help="run a message board, or manage its users",
        description="Run a p2prt message board (accounts, clusters, leases; never payloads), "
        "or, with a sub-command, manage its users directly in its data folder — whether or not it runs.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, help="the board's data folder (key, database); required")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_BOARD_PORT, help=f"TCP port (default {DEFAULT_BOARD_PORT}; 0 = any)"
    )
    p.add_argument(
        "--registration",
        choices=REGISTRATION_POLICIES,
        default="closed",
        help="closed (default): only the operator adds users; open: anyone may register a name",
    )
    p.add_argument("--heartbeat-timeout", type=float, default=15.0, help="seconds of silence before a peer is lost")
    p.add_argument(
        "--dht-host",
        help="address for the board's DHT node (UDP; default: --host, none if that is 0.0.0.0)",
    )
    p.add_argument("--no-dht", action="store_true", help="run no DHT node (peers find each other through the board)")
    p.add_argument("--dashboard", type=int, metavar="PORT",
                   help="serve a read-only web dashboard on this port (0: any free port)")
    p.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                   help="address of the dashboard (default 127.0.0.1: it shows every cluster on the board)")
    p.set_defaults(handler=cmd_serve)
    ops = p.add_subparsers(dest="board_command", metavar="OPERATOR-COMMAND")

    a = ops.add_parser(
        "add-user",
        help="add a user (or more keys to one)",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("name")
    a.add_argument(
        "--key",
        required=True,
        action="append",
        help="an OpenSSH public key line, or a file of them (.pub, authorized_keys); repeatable",
    )
    a.add_argument("--data", required=True, type=Path, dest="data")
    a.set_defaults(handler=cmd_add_user)

    r = ops.add_parser(
        "remove-user",
        help="remove a user: their keys, memberships, clusters; live sessions end",
        epilog="Examples:\n  p2prt board remove-user dave --data ~/p2prt-board",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("name")
    r.add_argument("--data", required=True, type=Path, dest="data")
    r.set_defaults(handler=cmd_remove_user)

    ls = ops.add_parser(
        "list-users",
        help="list users and their key fingerprints",
        epilog="Examples:\n  p2prt board list-users --data ~/p2prt-board",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--data", required=True, type=Path, dest="data")
    ls.set_defaults(handler=cmd_list_users)


def _read_keys(values: list[str]) -> list[SshPublicKey]:
    from ..identity.keys import SshPublicKey

    keys: list[SshPublicKey] = []
    for value in values:
        path = Path(value).expanduser()
        if path.is_file():
            lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if not lines:
                raise KeyLoadError(f"{path} holds no public key")
            keys.extend(SshPublicKey.parse(ln) for ln in lines)
        else:
            keys.append(SshPublicKey.parse(value))
    return keys


def cmd_add_user(args: argparse.Namespace) -> int:
    from ..board.store import Store

    keys = _read_keys(args.key)
    with Store.open(args.data) as store:
        if store.user_exists(args.name):
            added = store.add_keys(args.name, keys)
            print(f"{args.name}: added {len(added)} key(s)")
        else:
            store.add_user(args.name, keys, now=time.time())
            print(f"added user {args.name}")
        for k in keys:
            print(f"  {k.fingerprint} {k.key_type}")
    return 0


def cmd_remove_user(args: argparse.Namespace) -> int:
    from ..board.store import Store

    with Store.open(args.data) as store:
        store.remove_user(args.name)
    print(f"removed user {args.name} (a running board ends their sessions and leases now)")
    return 0


def cmd_list_users(args: argparse.Namespace) -> int:
    from ..board.store import Store

    with Store.open(args.data) as store:
        users = store.list_users()
    if not users:
        print("no users yet: p2prt board add-user NAME --key PUBKEY --data DIR")
    for u in users:
        print(u.name)
        for k in u.keys:
            print(f"  {k.fingerprint} {k.key_type}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from ..board.config import BoardConfig
    from ..board.scheduler import SchedulerConfig
    from ..board.server import BoardServer

    if args.data is None:
        raise ConfigError("p2prt board needs --data DIR (where its key and database live)")
    timeout = args.heartbeat_timeout
    config = BoardConfig(
        data_dir=args.data,
        host=args.host,
        port=args.port,
        registration=args.registration,
        heartbeat_interval=max(0.05, timeout / 3),
        scheduler=SchedulerConfig(worker_timeout=timeout, client_timeout=timeout, lease_ttl=2 * timeout),
        dht=not args.no_dht,
        dht_host=args.dht_host,
    )

    async def main() -> None:
        server = BoardServer(config)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            print(f"p2prt board listening on {config.host}:{port}", flush=True)
            print(f"board key fingerprint {server.fingerprint}", flush=True)
            if server.dht_address is not None:
                print(f"DHT bootstrap node on udp {server.dht_address.host}:{server.dht_address.port}", flush=True)
            if args.dashboard is not None:
                from ..board.dashboard import serve_dashboard

                url = await nursery.start(serve_dashboard, server.dashboard_snapshot, args.dashboard_host, args.dashboard)
                print(f"dashboard on {url}", flush=True)
            print(f"registration {config.registration}; data in {config.data_dir}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    print("p2prt board stopped", file=sys.stderr)
    return 0
