"""``accord relay wait URL...``: wait until relays accept connections (for scripts that start
relays in the background and go on at once, like the README's quick start).

Exit 0 once every relay accepts a TCP connection, 3 (unreachable) if one does not within
``--timeout`` seconds, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.parse

from accord.engine.errors import ExitCode

POLL_S = 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord relay wait", description="wait until relays accept connections",
        epilog="example:\n  accord relay --id relay-1 --port 8765 --db relay-1.sqlite 2>relay-1.log &\n"
               "  accord relay wait ws://127.0.0.1:8765 --timeout 10",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("urls", nargs="+", metavar="URL", help="relay URL, e.g. ws://127.0.0.1:8765")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="give up after this long (default 10); exit 3")
    return parser


def _address(url: str) -> tuple[str, int]:
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("ws", "wss") or not split.hostname:
        raise ValueError(f"{url!r} is not a relay URL; write it like ws://127.0.0.1:8765")
    return split.hostname, split.port or (443 if split.scheme == "wss" else 80)


async def _wait(address: tuple[str, int], deadline: float) -> bool:
    while True:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(*address),
                                                     max(0.01, deadline - time.monotonic()))
        except (OSError, TimeoutError):
            if time.monotonic() + POLL_S > deadline:
                return False
            await asyncio.sleep(POLL_S)
            continue
        writer.close()
        return True


def main(argv: list[str]) -> int:
    """Run ``accord relay wait`` with ``argv`` (after ``wait``)."""
    args = build_parser().parse_args(argv)
    try:
        addresses = [_address(url) for url in args.urls]
    except ValueError as exc:
        print(f"accord relay wait: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    deadline = time.monotonic() + max(0.0, args.timeout)

    async def wait_all() -> list[bool]:
        return list(await asyncio.gather(*(_wait(a, deadline) for a in addresses)))

    late = [url for url, ok in zip(args.urls, asyncio.run(wait_all()), strict=True) if not ok]
    if late:
        print(f"accord relay wait: no answer within {args.timeout:g} s from {', '.join(late)}; "
              "is the relay running (see its log)?", file=sys.stderr)
        return ExitCode.UNREACHABLE
    return ExitCode.OK
