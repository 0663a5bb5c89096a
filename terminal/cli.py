"""``accord terminal``: book, reschedule, cancel, list, sync and watch from a shell.

Every invocation opens the terminal's store, tries the relay for at most ``--timeout``
seconds (pull first, so ids and statuses are fresh; push after a write), and reports. Writes
never need the relay: with the relay unreachable they are saved locally, a note says so on
stderr, and the next invocation that reaches the relay sends them.

Exit codes: 0 ok, 1 an error the message tells how to fix, 2 bad usage, 3 relay unreachable
(``sync``, ``book --wait``), 4 refused by the relay (token), 5 booking rejected
(``book --wait``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import date, timedelta
from typing import NoReturn

from accord import logs
from accord.engine.calendar import MAX_HOLD_TTL, MIN_HOLD_TTL
from accord.engine.errors import AccordError, ExitCode, StorageError
from accord.engine.model import check_calendar_name
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES

from .client import Terminal, default_name
from .commands import (
    COMMANDS,
    DEFAULT_RELAY,
    DEFAULT_TIMEOUT_S,
    LONG_TIMEOUT_S,
    Context,
    Output,
    UsageError,
)
from .errors import DecisionTimeout, RelayRefused, RelayUnreachable, SyncTimeout
from .link import endpoint_url
from .store import DEFAULT_STORE

log = logging.getLogger(__name__)
ID_HELP = "reservation id: what list shows (8 characters), at least its first 4, or the full id"

EXAMPLES = """examples:
  export ACCORD_RELAY=ws://127.0.0.1:8765 ACCORD_CALENDAR=clinic-1 ACCORD_AS=desk-1
  accord terminal book --resource room-1 --start 2026-12-01T09:00Z --end 2026-12-01T09:30Z --patient P-0042
  accord terminal book --resource room-1 --start 2026-12-01T09:00+01:00 --end 2026-12-01T09:30+01:00 \\
      --patient P-0042 --wait --timeout 10          # wait for the home relay's decision (exit 5 if rejected)
  accord terminal list --date 2026-12-01
  accord terminal list --conflicts
  accord terminal reschedule 3f9c2a1b --start 2026-12-01T10:00Z --end 2026-12-01T10:30Z
  accord terminal cancel 3f9c2a1b --reason "patient called"
  accord terminal sync --timeout 10                  # push and pull now; exit 3 if the relay is unreachable
  accord terminal sync --relay wss://relay.clinic.example:8765 --ca-file clinic-ca.pem   # TLS, private CA
  accord terminal watch --json                       # one JSON line per change, until Ctrl-C

IDs: what list shows (the last 8 characters), or at least its first 4; or the full id.
Times: local (2026-12-01T09:30, in --tz / ACCORD_TZ / the calendar's zone / this machine's) or with
an offset (2026-12-01T09:30+01:00 or 2026-12-01T08:30Z); lists show the same zone.
Exit codes: 0 ok, 1 error (the message says how to fix it), 2 bad usage, 3 relay unreachable,
4 refused by the relay, 5 booking rejected, 130 interrupted.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Output.error adds the "accord terminal: error:" prefix; name the subcommand only.
        where = self.prog.removeprefix("accord terminal").strip()
        raise UsageError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)")


def _env(name: str, fallback: str | None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or fallback


def _message_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes; write it like 8388608") from None
    if value < 65536:
        raise argparse.ArgumentTypeError(f"{value} bytes is too small a message limit; use at least 65536")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 86400 seconds")
    return value


def _capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to 1000")
    return value


def _hold_ttl(text: str) -> int:
    """A hold TTL argument: whole seconds in range, or 'off' (0)."""
    if text.strip().lower() == "off":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds or 'off'") from None
    if not MIN_HOLD_TTL <= value <= MAX_HOLD_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} must be from {MIN_HOLD_TTL} to {MAX_HOLD_TTL} seconds")
    return value


def _patient_ref(text: str) -> str:
    value = text.strip()
    if not value or any(ch.isspace() for ch in value):
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like a name; give the patient's reference (an id without spaces, e.g. P-0042): "
            "reservations travel to other channels, names do not belong in them")
    return value


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write it like 2026-12-01") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``accord terminal`` parser; option defaults come from ACCORD_* environment variables."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection and output (every command; env vars give defaults)")
    group.add_argument("--store", metavar="PATH", default=_env("ACCORD_STORE", DEFAULT_STORE),
                       help=f"this terminal's SQLite store (env ACCORD_STORE; default ./{DEFAULT_STORE}), "
                       "e.g. --store desk-1.sqlite")
    group.add_argument("--relay", metavar="URL", default=_env("ACCORD_RELAY", DEFAULT_RELAY),
                       help=f"relay to sync with (env ACCORD_RELAY; default {DEFAULT_RELAY}), e.g. --relay ws://10.0.0.5:8765")
    group.add_argument("--token", metavar="TOKEN", default=_env("ACCORD_TOKEN", None),
                       help="bearer token for the relay (env ACCORD_TOKEN; default none), e.g. --token desk-secret")
    group.add_argument("--ca-file", metavar="PEM", default=_env("ACCORD_CA_FILE", None),
                       help="for a wss:// relay, trust only the CA certificates in this PEM file, e.g. a private "
                       "CA's (env ACCORD_CA_FILE; default the system's CA store), e.g. --ca-file clinic-ca.pem")
    group.add_argument("--calendar", metavar="NAME", default=_env("ACCORD_CALENDAR", None),
                       help="calendar to work on (env ACCORD_CALENDAR), e.g. --calendar clinic-1; "
                       "status, sync and watch default to every calendar this terminal holds")
    group.add_argument("--as", dest="actor", metavar="NAME", default=_env("ACCORD_AS", None),
                       help="who is writing, recorded on each change (env ACCORD_AS; default this host's name), "
                       "e.g. --as desk-1")
    group.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS",
                       help=f"how long to wait for the relay in each step (default {DEFAULT_TIMEOUT_S:g} s; "
                       f"{LONG_TIMEOUT_S:g} s for sync and book --wait), e.g. --timeout 5")
    group.add_argument("--tz", metavar="ZONE", default=_env("ACCORD_TZ", None),
                       help="show and read times in this IANA zone (env ACCORD_TZ; default the calendar's zone "
                       "setting, else this machine's), e.g. --tz Europe/Berlin")
    group.add_argument("--utc", action="store_true", help="show and read times in UTC")
    group.add_argument("--max-message-bytes", type=_message_limit, metavar="BYTES",
                       default=_env("ACCORD_MAX_MESSAGE_BYTES", str(DEFAULT_MAX_MESSAGE_BYTES)),
                       help="largest message accepted from the relay (env ACCORD_MAX_MESSAGE_BYTES; default "
                       f"{DEFAULT_MAX_MESSAGE_BYTES} = 8 MiB, the relay's default); larger syncs are sent and received "
                       "in pieces of an eighth of it, so keep it within 8x of the relay's --max-message-bytes, "
                       "e.g. --max-message-bytes 16777216")
    group.add_argument("--json", action="store_true",
                       help="machine-readable output: one JSON object on stdout (JSON lines for watch), "
                       "errors as JSON on stderr")
    group.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log detail on stderr (default WARNING); logs carry ids and counts, never patient data")
    group.add_argument("--log-format", default=logs.LogFormat.TEXT, choices=[str(f) for f in logs.LogFormat],
                       help="log lines as key=value text (default) or JSON objects, one per line; "
                       "both stamped in RFC 3339 with the UTC offset")

    parser = _Parser(
        prog="accord terminal",
        description="Offline-first terminal: every command works on this terminal's own store and syncs with the "
        "relay when it can. Writes are saved locally first and reach the relay now or on a later command.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name, parents=[common], help=help_text, description=help_text,
            epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return made

    book = command("book", "request a reservation; prints its id",
                   "accord terminal book --calendar clinic-1 --resource room-1 --start 2026-12-01T09:00Z "
                   "--end 2026-12-01T09:30Z --patient P-0042 --note 'first visit'")
    book.add_argument("--resource", required=True, help="room, clinician or device id, e.g. room-1")
    book.add_argument("--start", required=True,
                      help="start, local time (see --tz) or with an offset, e.g. 2026-12-01T09:00 or 2026-12-01T09:00Z")
    book.add_argument("--end", required=True, help="end (after start), e.g. 2026-12-01T09:30")
    book.add_argument("--patient", required=True, type=_patient_ref,
                      help="patient reference (an id, not a name: no spaces), e.g. P-0042")
    book.add_argument("--allow-past", action="store_true", help="allow a start in the past (refused otherwise)")
    book.add_argument("--service", default="", help="service code, e.g. consult")
    book.add_argument("--note", default="", help="free text for the desk")
    book.add_argument("--wait", action="store_true",
                      help="wait for the home relay's decision; exit 5 if rejected, 3 if the relay is unreachable")

    reschedule = command("reschedule", "ask for a new time (and optionally resource)",
                         "accord terminal reschedule 3f9c2a1b --start 2026-12-01T10:00Z --end 2026-12-01T10:30Z")
    reschedule.add_argument("id", help=ID_HELP)
    reschedule.add_argument("--start", required=True, help="new start, local time or with an offset, e.g. 2026-12-01T10:00")
    reschedule.add_argument("--end", required=True, help="new end, e.g. 2026-12-01T10:30")
    reschedule.add_argument("--resource", default=None, help="new resource (default: keep)")
    reschedule.add_argument("--allow-past", action="store_true", help="allow a start in the past (refused otherwise)")

    cancel = command("cancel", "cancel a reservation (the record stays)",
                     "accord terminal cancel 3f9c2a1b --reason 'patient called'")
    cancel.add_argument("id", help=ID_HELP)
    cancel.add_argument("--reason", default="", help="why (shown to other desks)")

    check_in = command("check-in", "the patient has arrived (booked reservations only)", "accord terminal check-in 3f9c2a1b")
    check_in.add_argument("id", help=ID_HELP)
    noshow = command("noshow", "the patient did not come (booked reservations only)", "accord terminal noshow 3f9c2a1b")
    noshow.add_argument("id", help=ID_HELP)
    fulfil = command("fulfil", "the visit took place (booked or checked in)", "accord terminal fulfil 3f9c2a1b")
    fulfil.add_argument("id", help=ID_HELP)
    error = command("entered-in-error", "mark a reservation that should never have existed (the record stays)",
                    "accord terminal entered-in-error 3f9c2a1b --reason 'duplicate'")
    error.add_argument("id", help=ID_HELP)
    error.add_argument("--reason", default="", help="why (shown to other desks)")

    edit = command("edit", "change the note or service", "accord terminal edit 3f9c2a1b --note 'needs wheelchair access'")
    edit.add_argument("id", help=ID_HELP)
    edit.add_argument("--note", default=None, help="new note")
    edit.add_argument("--service", default=None, help="new service code")

    listing = command("list", "show reservations as a table (or overlapping bookings with --conflicts)",
                      "accord terminal list --calendar clinic-1 --resource room-1 --date 2026-12-01")
    listing.add_argument("--resource", default=None, help="only this resource")
    listing.add_argument("--date", type=_day, default=None, metavar="YYYY-MM-DD", help="only this day (in the zone of --tz)")
    listing.add_argument("--conflicts", action="store_true",
                         help="only bookings that overlap beyond the resource's capacity (calendars without a home relay)")

    show = command("show", "show one reservation in full", "accord terminal show 3f9c2a1b --json")
    show.add_argument("id", help=ID_HELP)

    command("sync", "push local changes and pull the relay's now; exit 3 if the relay is unreachable",
            "accord terminal sync --timeout 10")
    command("status", "link state, pending local changes, last acknowledgement", "accord terminal status --json")
    command("watch", "print changes as they arrive until Ctrl-C (exit 130)", "accord terminal watch --calendar clinic-1 --json")

    resource = command("resource", "declare or change a resource (relays with tokens: an admin token only; "
                       "others are refused with exit 4)",
                       "accord terminal resource room-2 --name 'Room 2' --capacity 2 --token admin-secret")
    resource.add_argument("id", help="resource id: letters, digits, . _ -, e.g. room-2")
    resource.add_argument("--name", default=None, help="display name (default: the id)")
    resource.add_argument("--capacity", type=_capacity, default=1,
                          help="how many booked reservations may overlap on it, 1-1000 (default 1)")
    command("resources", "list the calendar's declared resources", "accord terminal resources --calendar clinic-1")
    setting = command("hold-ttl", "show or set the calendar's hold TTL: the home rejects (reason expired) a pending "
                      "booking that first reached a relay longer ago (admin token on relays with tokens)",
                      "accord terminal hold-ttl 900 --calendar clinic-1 --token admin-secret")
    setting.add_argument("seconds", nargs="?", type=_hold_ttl, default=None,
                         help=f"whole seconds, {MIN_HOLD_TTL}-{MAX_HOLD_TTL}, or 'off' to remove it; "
                              "without it, print the current setting")
    command("retry", "send the local changes the relay refused (see status) again, with this command's token",
            "accord terminal retry --calendar clinic-1 --token desk-secret")
    command("discard", "drop the local changes of a calendar the relay has not stored (e.g. ones it refused); "
            "the calendar is pulled from the relay again", "accord terminal discard --calendar clinic-1")
    time_zone = command("time-zone", "show or set the zone desks and the board show the calendar in "
                        "(admin token on relays with tokens)",
                        "accord terminal time-zone Europe/Berlin --calendar clinic-1 --token admin-secret")
    time_zone.add_argument("name", nargs="?", default=None,
                           help="an IANA zone name, or 'off' to remove it; without it, print the current setting")
    free = command("free", "list a resource's free intervals on one day (its opening hours less its bookings; "
                   "pending ones count as taken)",
                   "accord terminal free --calendar clinic-1 --resource room-1 --date 2026-12-01 --duration 30m")
    free.add_argument("--resource", required=True, help="resource id, e.g. room-1")
    free.add_argument("--date", type=_day, required=True, metavar="YYYY-MM-DD", help="the day (in the zone of --tz)")
    free.add_argument("--duration", type=_duration, default=None, metavar="30m",
                      help="only intervals at least this long (e.g. 30m, 1h, 90m)")
    hours = command("hours", "show or set a resource's weekly opening hours and dated exceptions, in the calendar's "
                    "time zone (admin token on relays with tokens)",
                    "accord terminal hours room-1 --weekly '{\"mon\": [[\"08:00\", \"17:00\"]]}' "
                    "--exceptions '{\"2026-12-25\": []}' --token admin-secret")
    hours.add_argument("id", help="a declared resource id, e.g. room-1")
    hours.add_argument("--weekly", type=_json_arg, default=None,
                       help='JSON: day -> [[open, close], ...], e.g. {"mon": [["08:00", "12:00"], ["13:00", "17:00"]]}; '
                            "days not named are closed")
    hours.add_argument("--exceptions", type=_json_arg, default=None,
                       help='JSON: date -> intervals, e.g. {"2026-12-25": []} (closed) or {"2026-12-24": [["08:00", "12:00"]]}')
    hours.add_argument("--clear", action="store_true", help="remove both: open around the clock again")
    return parser


def _duration(text: str) -> timedelta:
    value = text.strip().lower()
    units = {"m": 60, "h": 3600, "min": 60}
    number, unit = value.rstrip("minh"), value[len(value.rstrip("minh")):] or "m"
    if not number.isdigit() or unit not in units or int(number) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write it like 30m or 1h")
    return timedelta(seconds=int(number) * units[unit])


def _json_arg(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not JSON") from None


async def run(args: argparse.Namespace, out: Output) -> ExitCode:
    """Open the terminal, run one command, close the terminal."""
    long_wait = args.command == "sync" or (args.command == "book" and args.wait)
    timeout_s = args.timeout or (LONG_TIMEOUT_S if long_wait else DEFAULT_TIMEOUT_S)
    calendar = check_calendar_name(args.calendar) if args.calendar else None
    if args.relay:
        try:
            endpoint_url(args.relay)
        except ValueError as exc:
            raise UsageError(f"--relay: {exc}") from None
    terminal = Terminal(
        relay=args.relay or None,
        store=args.store,
        token=args.token,
        name=args.actor or default_name(),
        connect_timeout_s=timeout_s,
        max_message_bytes=args.max_message_bytes,
        ca_file=args.ca_file,
    )
    async with terminal:
        ctx = Context(terminal, args, out, timeout_s, calendar)
        if calendar is not None:
            await terminal.open(calendar)
        log.debug("running command", extra={"command": args.command})
        return await COMMANDS[args.command](ctx)


def main(argv: list[str] | None = None) -> int:
    """Run ``accord terminal`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    out = Output(json="--json" in argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return out.error(str(exc), ExitCode.USAGE)
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int | None) else ExitCode.USAGE
    logs.configure(args.log_level, args.log_format)
    try:
        return asyncio.run(run(args, out))
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except UsageError as exc:
        return out.error(str(exc), ExitCode.USAGE)
    except RelayRefused as exc:
        return out.error(str(exc), ExitCode.REFUSED)
    except RelayUnreachable as exc:
        return out.error(str(exc), ExitCode.UNREACHABLE)
    except (SyncTimeout, DecisionTimeout) as exc:
        return out.error(str(exc), ExitCode.ERROR)
    except StorageError as exc:
        return out.error(f"{exc} (store: {args.store}; choose another with --store or ACCORD_STORE)", ExitCode.ERROR)
    except AccordError as exc:
        return out.error(str(exc), ExitCode.ERROR)


if __name__ == "__main__":
    sys.exit(main())
