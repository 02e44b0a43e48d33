"""``p2prt config``: every setting's effective value and where it came from."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="show the effective settings and where each comes from",
        description="Every setting is looked up the same way: command-line flag > environment (P2PRT_*) > "
        "~/.config/p2prt/config.toml > built-in default. This shows what applies here and now.",
        epilog="Examples:\n  p2prt config\n  p2prt config --json\n  P2PRT_BOARD=board.example.org:7790 p2prt config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(handler=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    from ..config import SETTINGS, config_file, resolve

    rows: list[dict[str, str | None]] = []
    for spec in SETTINGS:
        value, source = resolve(spec.name)
        rows.append({"name": spec.name, "value": value, "source": source, "env": spec.env, "flag": spec.flag,
                     "help": spec.help})
    if args.json:
        print(json.dumps({"file": str(config_file()), "settings": rows}, indent=2))
        return 0
    print(f"config file: {config_file()}{'' if config_file().exists() else ' (none)'}")
    width = max(len(spec.name) for spec in SETTINGS)
    for r in rows:
        shown = "(not set)" if r["value"] is None else str(r["value"])
        print(f"  {r['name']!s:<{width}}  {shown:<28} {r['source']}")
    return 0
