"""``p2prt keygen`` and ``p2prt id``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from ..identity import PASSPHRASE_ENV, default_user_name, find_key_path, keygen, load_user_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 key for p2prt",
        description="Create an Ed25519 SSH key (OpenSSH format, mode 0600). Refuses to overwrite.",
        epilog="Examples:\n  p2prt keygen\n  p2prt keygen --file ~/.ssh/id_p2prt --passphrase",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--file", "-f", help="where to write the key (default: ~/.config/p2prt/id_ed25519)")
    p.add_argument(
        "--passphrase",
        action="store_true",
        help=f"protect the key with a passphrase (from {PASSPHRASE_ENV} or a prompt)",
    )
    p.set_defaults(handler=cmd_keygen)

    p = sub.add_parser(
        "id",
        help="show which key and user name p2prt will use",
        description="Show the key p2prt would use (--key, config, ~/.ssh/id_ed25519, ~/.config/p2prt/id_ed25519), "
        "its fingerprint and public key — give the public key to a board operator or cluster owner.",
        epilog="Examples:\n  p2prt id\n  p2prt id --key ~/.ssh/id_ecdsa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key", help="private key file to use")
    p.set_defaults(handler=cmd_id)


def cmd_keygen(args: argparse.Namespace) -> int:
    passphrase: bytes | None = None
    if args.passphrase:
        if PASSPHRASE_ENV in os.environ:
            passphrase = os.environ[PASSPHRASE_ENV].encode()
        else:
            first = getpass.getpass("New passphrase: ")
            if first != getpass.getpass("Same passphrase again: "):
                print("p2prt: error: passphrases differ", file=sys.stderr)
                return 1
            passphrase = first.encode()
    path, key = keygen(args.file, passphrase=passphrase)
    print(f"Wrote {path} and {path}.pub")
    print(f"Fingerprint: {key.public.fingerprint}")
    print(f"Public key:  {key.public.line}")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    path = find_key_path(args.key)
    key = load_user_key(path)
    print(f"user:        {default_user_name()}")
    print(f"key file:    {path}")
    print(f"fingerprint: {key.public.fingerprint}")
    print(f"public key:  {key.public.line}")
    return 0
