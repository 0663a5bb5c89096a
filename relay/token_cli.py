"""``accord token new``: mint a token and print the line to add to a relay's token file.

The secret is printed once, on stdout (give it to the terminal, partner relay or monitor); the
token file gets only its SHA-256 (``sha256:<hex>``), so a copy of the file grants nothing. After
editing the file, ``kill -HUP <relay pid>`` (or ``systemctl reload``) makes the relay use it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from accord.engine.errors import ExitCode

from .auth import Role, new_token, token_hash

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord token", description="mint relay tokens",
        epilog="example:\n  accord token new --name desk-1 --role terminal --calendars 'clinic-*'\n"
               "  # add the printed line to the relay's --tokens file, then: kill -HUP <relay pid>",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = sub.add_parser("new", help="mint a token: the secret on stdout, the token-file line on stderr "
                                     "(both on stdout with --json)")
    new.add_argument("--name", required=True, help="what logs and metrics call it, e.g. desk-1")
    new.add_argument("--role", default="terminal", choices=[str(r) for r in Role],
                     help="terminal (default), admin, peer, read-only or monitor")
    new.add_argument("--calendars", nargs="+", default=["*"], metavar="GLOB",
                     help="calendars it may open (default all), e.g. --calendars 'clinic-*' shared/lobby")
    new.add_argument("--json", action="store_true", help='print {"token": ..., "line": ...}')
    return parser


def main(argv: list[str]) -> int:
    """Run ``accord token`` with ``argv``; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int | None) else ExitCode.USAGE
    if not _NAME.fullmatch(args.name):
        print(f"accord token: --name {args.name!r}: letters, digits, . _ - (at most 64)", file=sys.stderr)
        return ExitCode.USAGE
    if any(not glob or any(c.isspace() or c == "#" for c in glob) for glob in args.calendars):
        print("accord token: --calendars: globs cannot hold spaces or '#'", file=sys.stderr)
        return ExitCode.USAGE
    secret = new_token()
    line = f"{token_hash(secret)} {args.role} {' '.join(args.calendars)} name={args.name}"
    if args.json:
        print(json.dumps({"token": secret, "line": line}))
    else:
        print(secret)
        print(f"add to the token file: {line}", file=sys.stderr)
    return ExitCode.OK
