"""``accord relay``: run a relay until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from accord import config_file, event_loop, logs
from accord.engine.errors import AccordError, ExitCode

from .config import DEFAULT_MAX_CALENDAR_BYTES, DEFAULT_MAX_RESERVATIONS, RelayConfig
from .server import Relay

log = logging.getLogger(__name__)

EXAMPLES = """handing a calendar to another home (relays stopped): accord relay key --help, accord relay handover --help
waiting in a script until relays started in the background listen: accord relay wait --help

examples:
  # a pair of relays on one machine, relay-a home to every clinic-* calendar
  accord relay --id relay-a --port 8765 --db relay-a.sqlite --home 'clinic-*'
  accord relay --id relay-b --port 8766 --db relay-b.sqlite --peer ws://127.0.0.1:8765

  # with tokens (one per line: TOKEN ROLE GLOB...) and TLS, reachable from the network
  accord relay --id front-desk --host 0.0.0.0 --tokens tokens.txt --tls-cert cert.pem --tls-key key.pem \
      --peer 'wss://partner:8765 clinic-shared-*' --peer-token S
  kill -HUP <pid>    # re-read --tls-cert/--tls-key and --tokens (revoked tokens' connections close)

  # the same from a file (see deploy/relay.toml); a flag given here overrides the file
  accord relay --config relay.toml --log-format json
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord relay",
        description="Run a relay: the websocket server of one channel. It stores every update in SQLite before "
        "forwarding or acknowledging it, serves stock Yjs clients at ws://HOST:PORT/<calendar> and terminals and "
        "peer relays at ws://HOST:PORT/.accord/v1, peers with other relays, and decides bookings for the "
        "calendars it is home to. Also serves GET /healthz and GET /metrics.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--id", required=True, dest="relay_id", help="this relay's name (logs, peering, decisions)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one and logs it)")
    parser.add_argument("--fhir-port", type=int, default=None, metavar="PORT",
                        help="serve the FHIR R4 facade (reads and writes) under /fhir on this port too "
                             "(0 picks a free one); without it only FHIR reads (GET /fhir/...) on --port")
    parser.add_argument("--db", default="accord-relay.sqlite",
                        help="SQLite store (default ./accord-relay.sqlite; ':memory:' keeps nothing on disk), or a "
                             "postgresql://user@host/db URL: a store shared by a cluster of relay processes")
    parser.add_argument("--peer", action="append", default=[], metavar="URL", type=_peer_url,
                        help="keep a link to another relay, e.g. ws://10.0.0.2:8765 (repeatable); in a cluster on PostgreSQL "
                             "one process at a time holds the links")
    parser.add_argument("--peer-token", default=None, help="token presented on outbound peer links")
    parser.add_argument("--peer-calendars", action="append", default=None, metavar="GLOB",
                        help="share only calendars matching GLOB with peers (repeatable; default all)")
    parser.add_argument("--home", action="append", default=[], metavar="GLOB",
                        help="decide bookings for calendars matching GLOB (repeatable); exactly one relay per calendar, "
                        "or, in a cluster on one PostgreSQL --db, the same globs on every process: the holder of "
                        "the cluster's home lease decides, another takes over if it fails")
    parser.add_argument("--lease", type=_lease_seconds, default=3.0, metavar="SECONDS",
                        help="in a cluster on PostgreSQL: how long a frozen or cut-off holder of the home (or peering) "
                             "lease keeps it before another process takes over (default 3; heartbeats every sixth of it; "
                             "at least 1)")
    parser.add_argument("--hold-ttl", type=_positive_float, default=None, metavar="SECONDS",
                        help="hold TTL for calendars that set none: as home, reject pending bookings that first "
                             "reached a relay more than SECONDS ago (by that relay's clock); as any relay, stamp "
                             "its clients' requests with receipts. Set it on every relay, or per calendar with "
                             "'accord terminal hold-ttl'")
    parser.add_argument("--tokens", type=Path, default=None, metavar="FILE",
                        help="token file, one 'TOKEN ROLE GLOB...' per line; roles terminal, admin, peer, read-only")
    parser.add_argument("--insecure-open", action="store_true",
                        help="allow listening on a non-loopback address without --tokens")
    parser.add_argument("--tls-cert", type=Path, default=None, metavar="FILE",
                        help="PEM certificate chain: serve wss:// and https:// (every endpoint, the one port) with "
                             "--tls-key; SIGHUP re-reads both")
    parser.add_argument("--tls-key", type=Path, default=None, metavar="FILE",
                        help="PEM private key of --tls-cert (unencrypted; readable by the relay's user only)")
    parser.add_argument("--insecure-plaintext", action="store_true",
                        help="allow listening on a non-loopback address without TLS, e.g. behind a reverse proxy "
                             "that terminates TLS (warned about on every start)")
    parser.add_argument("--peer-ca-file", type=Path, default=None, metavar="FILE",
                        help="verify wss:// peers against the CA certificates in this PEM file only "
                             "(default: the system's CA store)")
    parser.add_argument("--max-message-bytes", type=_positive_int, default=8 * 1024 * 1024, help="largest accepted message")
    parser.add_argument("--max-connections", type=_positive_int, default=1000, help="connections beyond this are refused")
    parser.add_argument("--audit", action=argparse.BooleanOptionalAction, default=False,
                        help="record every client change in the audit trail: who, where, when, which fields "
                             "(default off for now: it doubles the relay's CPU per update and adds ~270 bytes of "
                             "document per change; see README 'Audit trail')")
    parser.add_argument("--max-reservations", type=_positive_int, default=DEFAULT_MAX_RESERVATIONS, metavar="N",
                        help=f"reservations one calendar may hold; writes that would add more are refused "
                             f"(default {DEFAULT_MAX_RESERVATIONS:,})")
    parser.add_argument("--max-calendar-mb", type=_positive_int, default=DEFAULT_MAX_CALENDAR_BYTES >> 20, metavar="MB",
                        help=f"state one calendar may hold, in MiB; writes past it are refused "
                             f"(default {DEFAULT_MAX_CALENDAR_BYTES >> 20})")
    parser.add_argument("--max-subscriptions-per-connection", type=_positive_int, default=1000, metavar="N",
                        help="calendars one client connection may open; past it the connection is closed with 4429 "
                        "(default 1000; peers are not capped)")
    parser.add_argument("--max-subscriptions-per-token", type=_positive_int, default=10_000, metavar="N",
                        help="calendars all connections of one token may open together (default 10000)")
    parser.add_argument("--idle-unload", type=_positive_float, default=300.0, metavar="SECONDS",
                        help="unload calendars nobody used for this long (default 300)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port to FILE once listening")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default=logs.LogFormat.TEXT, choices=[str(f) for f in logs.LogFormat],
                        help="key=value text lines (default) or one JSON object per line; both stamped in RFC 3339 "
                             "with the UTC offset, both with ids and counts only (never patient data or tokens)")
    event_loop.add_flag(parser)
    parser.add_argument(config_file.CONFIG_FLAG, type=Path, default=None, metavar="FILE",
                        help="read options from a TOML file: every flag above is a key, named like the flag without "
                             "'--' (port = 8765, home = [\"clinic-*\"], insecure-open = true); flags given here "
                             "override the file; unknown keys and wrong types are errors (example: deploy/relay.toml)")
    return parser


def _peer_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("ws://", "wss://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a relay URL; write it like ws://10.0.0.5:8765")
    return value


def _lease_seconds(text: str) -> float:
    value = _positive_float(text)
    if value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: a lease shorter than 1 s would be lost to ordinary pauses")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("key", "handover"):  # operations on a stopped relay's store
        from . import handover

        return handover.main(argv)
    if argv and argv[0] == "wait":  # for scripts that start relays in the background
        from . import wait

        return wait.main(argv[1:])
    try:
        argv = config_file.with_config(build_parser, argv)
    except config_file.ConfigFileError as exc:
        print(f"accord relay: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    if not 0 <= args.port <= 65535:
        print(f"accord relay: --port {args.port} is not a port number (0-65535)", file=sys.stderr)
        return ExitCode.USAGE
    config = RelayConfig(
        relay_id=args.relay_id, host=args.host, port=args.port, db_path=args.db, peers=args.peer,
        peer_token=args.peer_token, peer_globs=args.peer_calendars or ["*"], home_globs=args.home,
        tokens_path=args.tokens, insecure_open=args.insecure_open, hold_ttl_s=args.hold_ttl,
        max_message_bytes=args.max_message_bytes, max_connections=args.max_connections,
        idle_unload_s=args.idle_unload, lease_s=args.lease, max_reservations=args.max_reservations, audit=args.audit,
        max_calendar_bytes=args.max_calendar_mb << 20,
        max_subscriptions_per_connection=args.max_subscriptions_per_connection,
        max_subscriptions_per_token=args.max_subscriptions_per_token,
        tls_cert_path=args.tls_cert, tls_key_path=args.tls_key, insecure_plaintext=args.insecure_plaintext,
        peer_ca_path=args.peer_ca_file, fhir_port=args.fhir_port,
    )
    try:
        loop = event_loop.resolve(args.loop)
    except event_loop.LoopUnavailable as exc:
        print(f"accord relay: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return event_loop.run(serve_until_signalled(config, args.port_file), loop)
    except AccordError as exc:
        print(f"accord relay: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    except OSError as exc:
        print(f"accord relay: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return ExitCode.ERROR


async def serve_until_signalled(config: RelayConfig, port_file: Path | None) -> int:
    """Run the relay until SIGTERM or SIGINT; SIGHUP runs :meth:`Relay.reload` (one at a time)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Relay(config) as relay:
        reloads: list[asyncio.Task[object]] = []  # the one running reload, kept referenced

        def reload_requested() -> None:
            if reloads and not reloads[0].done():
                log.info("reload already under way; this SIGHUP is folded into it", extra={"relay": config.relay_id})
                return
            reloads[:] = [loop.create_task(_reload(relay), name="relay-reload")]

        loop.add_signal_handler(signal.SIGHUP, reload_requested)
        if port_file is not None:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(relay.port))
            tmp.replace(port_file)
        await stop.wait()
        loop.remove_signal_handler(signal.SIGHUP)
        await asyncio.gather(*reloads, return_exceptions=True)
        log.info("shutting down", extra={"relay": config.relay_id})
    return ExitCode.OK


async def _reload(relay: Relay) -> object:
    try:
        return await relay.reload()
    except Exception:  # top of the SIGHUP task: a bug in a reload must not go unseen, nor stop the relay
        log.exception("reload failed", extra={"relay": relay.config.relay_id})
        return None
