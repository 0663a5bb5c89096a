"""The ``accord`` command: dispatches to ``relay``, ``terminal``, ``store``, ``token`` and ``demo``.

This is the one module that knows every subcommand; it imports each only when it runs.
Exit codes are ``accord.engine.errors.ExitCode``: 0 ok, 1 error the user can fix, 2 bad usage,
3 relay unreachable, 4 refused by the relay, 5 booking rejected, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from accord import __version__
from accord.engine.errors import ExitCode

SUBCOMMANDS = {
    "relay": ("accord.relay.cli", "run the websocket relay (server) for one channel"),
    "terminal": ("accord.terminal.cli", "offline-first client: book, reschedule, cancel, list, sync, watch"),
    "store": ("accord.store_cli", "inspect and maintain a store file: check, compact, backup"),
    "token": ("accord.relay.token_cli", "mint a relay token (the token file keeps only its hash)"),
    "demo": ("accord.demo", "two relays and two terminals walk through the two-channel scenario"),
}

EPILOG = """examples:
  accord relay --id relay-a --port 8765 --db relay-a.sqlite --home 'clinic-*'
  accord terminal book --relay ws://127.0.0.1:8765 --calendar clinic-1 --resource room-1 \\
      --start 2026-12-01T09:00Z --end 2026-12-01T09:30Z --patient P-0042
  accord store check relay-a.sqlite
  accord demo
"""


def main(argv: list[str] | None = None) -> int:
    """Run ``accord`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="accord",
        description="accord: CRDT sync for reservations across relays and offline terminals.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"accord {__version__}")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items()))
    if not args:
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    if args[0] in ("-h", "--help", "--version"):
        parser.parse_args(args)
        return ExitCode.OK
    if args[0] not in SUBCOMMANDS:
        parser.print_usage(sys.stderr)
        print(f"accord: unknown command {args[0]!r}; choose from {', '.join(sorted(SUBCOMMANDS))}", file=sys.stderr)
        return ExitCode.USAGE
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    try:
        code: int = module.main(args[1:])
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
