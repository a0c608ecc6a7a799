"""`inspector keys new` and `inspector keys hash`: API keys for the service, and the hashed form its config can
hold instead of the key (service/keys.py says why a salted SHA-256 suffices for generated keys).

`hash` reads the key from standard input, never from the command line, so it stays out of shell history and
process listings.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from inspector.cli.arguments import Subcommands, UsageError, help_handler


def add_parser(sub: Subcommands) -> None:
    keys = sub.add_parser("keys", help="make API keys and their hashes for the service config", description=__doc__)
    keys.set_defaults(handler=help_handler(keys))
    actions = keys.add_subparsers(title="keys commands", metavar="ACTION")
    p = actions.add_parser("new", help="print a new random key and the hash to put in the config")
    p.add_argument("--role", choices=("camera", "operator"), default="camera", help="which key (default camera)")
    p.set_defaults(handler=run_new)
    p = actions.add_parser("hash", help="read a key on standard input, print its hash for the config")
    p.add_argument("--role", choices=("camera", "operator"), default="camera", help="which key (default camera)")
    p.set_defaults(handler=run_hash)


def run_new(args: argparse.Namespace) -> int:
    from inspector.service.keys import hash_key, new_key

    key = new_key()
    print(f"key (give it to the {'camera' if args.role == 'camera' else 'operators'}; shown once): {key}")
    print(f"config: {args.role}_key: {hash_key(key)}")
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from inspector.service.keys import hash_key

    key = getpass.getpass("key: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise UsageError("no key given on standard input")
    print(f"{args.role}_key: {hash_key(key)}")
    return 0
