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
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NoReturn

from accord import logs
from accord.engine.errors import AccordError, NotFound, StorageError
from accord.engine.model import CalendarId, Reservation, Status, check_calendar_name, format_time

from . import format as fmt
from .client import DEFAULT_STORE, ChangeKind, SyncState, Terminal, default_name
from .errors import DecisionTimeout, RelayRefused, RelayUnreachable, SyncTimeout
from .link import LinkState, endpoint_url

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_REJECTED = 5
EXIT_INTERRUPTED = 130

DEFAULT_RELAY = "ws://127.0.0.1:8765"
DEFAULT_TIMEOUT_S = 2.0
LONG_TIMEOUT_S = 10.0  # sync and book --wait
WATCH_STATE_POLL_S = 3600.0

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
  accord terminal watch --json                       # one JSON line per change, until Ctrl-C

IDs: the full id or at least 4 of its first or last characters (list shows the last 8).
Times: RFC 3339 with an offset (2026-12-01T09:30+01:00 or 2026-12-01T08:30Z); lists show UTC.
Exit codes: 0 ok, 1 error (the message says how to fix it), 2 bad usage, 3 relay unreachable,
4 refused by the relay, 5 booking rejected, 130 interrupted.
"""


class UsageError(Exception):
    """Bad command line: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _env(name: str, fallback: str | None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or fallback


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 86400 seconds")
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
    group.add_argument("--calendar", metavar="NAME", default=_env("ACCORD_CALENDAR", None),
                       help="calendar to work on (env ACCORD_CALENDAR), e.g. --calendar clinic-1; "
                       "status, sync and watch default to every calendar this terminal holds")
    group.add_argument("--as", dest="actor", metavar="NAME", default=_env("ACCORD_AS", None),
                       help="who is writing, recorded on each change (env ACCORD_AS; default this host's name), "
                       "e.g. --as desk-1")
    group.add_argument("--timeout", type=_positive, default=None, metavar="SECONDS",
                       help=f"how long to wait for the relay in each step (default {DEFAULT_TIMEOUT_S:g} s; "
                       f"{LONG_TIMEOUT_S:g} s for sync and book --wait), e.g. --timeout 5")
    group.add_argument("--json", action="store_true",
                       help="machine-readable output: one JSON object on stdout (JSON lines for watch), "
                       "errors as JSON on stderr")
    group.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                       help="log detail on stderr (default WARNING); logs carry ids and counts, never patient data")

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
    book.add_argument("--start", required=True, help="start, RFC 3339 with offset, e.g. 2026-12-01T09:00Z")
    book.add_argument("--end", required=True, help="end (after start), e.g. 2026-12-01T09:30Z")
    book.add_argument("--patient", required=True, help="patient reference (an id, not a name), e.g. P-0042")
    book.add_argument("--service", default="", help="service code, e.g. consult")
    book.add_argument("--note", default="", help="free text for the desk")
    book.add_argument("--wait", action="store_true",
                      help="wait for the home relay's decision; exit 5 if rejected, 3 if the relay is unreachable")

    reschedule = command("reschedule", "ask for a new time (and optionally resource)",
                         "accord terminal reschedule 3f9c2a1b --start 2026-12-01T10:00Z --end 2026-12-01T10:30Z")
    reschedule.add_argument("id", help="reservation id (full, or at least 4 first/last characters)")
    reschedule.add_argument("--start", required=True, help="new start, e.g. 2026-12-01T10:00Z")
    reschedule.add_argument("--end", required=True, help="new end, e.g. 2026-12-01T10:30Z")
    reschedule.add_argument("--resource", default=None, help="new resource (default: keep)")

    cancel = command("cancel", "cancel a reservation (the record stays)",
                     "accord terminal cancel 3f9c2a1b --reason 'patient called'")
    cancel.add_argument("id", help="reservation id (full, or at least 4 first/last characters)")
    cancel.add_argument("--reason", default="", help="why (shown to other desks)")

    check_in = command("check-in", "the patient has arrived (booked reservations only)", "accord terminal check-in 3f9c2a1b")
    check_in.add_argument("id", help="reservation id (full, or at least 4 first/last characters)")

    edit = command("edit", "change the note or service", "accord terminal edit 3f9c2a1b --note 'needs wheelchair access'")
    edit.add_argument("id", help="reservation id (full, or at least 4 first/last characters)")
    edit.add_argument("--note", default=None, help="new note")
    edit.add_argument("--service", default=None, help="new service code")

    listing = command("list", "show reservations as a table (or overlapping bookings with --conflicts)",
                      "accord terminal list --calendar clinic-1 --resource room-1 --date 2026-12-01")
    listing.add_argument("--resource", default=None, help="only this resource")
    listing.add_argument("--date", type=_day, default=None, metavar="YYYY-MM-DD", help="only this day (UTC)")
    listing.add_argument("--conflicts", action="store_true",
                         help="only bookings that overlap beyond the resource's capacity (calendars without a home relay)")

    show = command("show", "show one reservation in full", "accord terminal show 3f9c2a1b --json")
    show.add_argument("id", help="reservation id (full, or at least 4 first/last characters)")

    command("sync", "push local changes and pull the relay's now; exit 3 if the relay is unreachable",
            "accord terminal sync --timeout 10")
    command("status", "link state, pending local changes, last acknowledgement", "accord terminal status --json")
    command("watch", "print changes as they arrive until Ctrl-C (exit 130)", "accord terminal watch --calendar clinic-1 --json")
    return parser


# ---- output ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Output:
    """Where results, notes and errors go (plain text or JSON)."""

    json: bool

    def result(self, text: str, data: Any) -> None:
        print(json.dumps(data) if self.json else text, flush=True)

    def note(self, text: str) -> None:
        print(json.dumps({"note": text}) if self.json else f"accord terminal: {text}", file=sys.stderr, flush=True)

    def error(self, text: str, code: int) -> int:
        if self.json:
            print(json.dumps({"error": text, "exit": code}), file=sys.stderr, flush=True)
        else:
            print(f"accord terminal: error: {text}", file=sys.stderr, flush=True)
        return code


def reservation_json(reservation: Reservation, sync: SyncState) -> dict[str, Any]:
    return {**reservation.to_json(), "sync": str(sync)}


# ---- the commands --------------------------------------------------------------------------------


@dataclass(slots=True)
class Context:
    terminal: Terminal
    args: argparse.Namespace
    out: Output
    timeout_s: float
    calendar: CalendarId | None
    link: LinkState = LinkState.OFFLINE

    def need_calendar(self) -> CalendarId:
        if self.calendar is None:
            raise UsageError(
                f"accord terminal {self.args.command}: give --calendar NAME or set ACCORD_CALENDAR (e.g. clinic-1)"
            )
        return self.calendar

    @property
    def online(self) -> bool:
        return self.link is LinkState.ONLINE


async def reach_relay(ctx: Context) -> None:
    """Connect and pull (bounded by --timeout); a refusal raises, anything else degrades to local data."""
    t = ctx.terminal
    ctx.link = await t.wait_connected(ctx.timeout_s)
    if ctx.link is LinkState.REFUSED:
        raise _refused(t)
    if not ctx.online:
        return
    try:
        await t.synced(ctx.timeout_s, calendars=[ctx.calendar] if ctx.calendar else None)
    except SyncTimeout:
        ctx.out.note(f"the relay did not answer within {ctx.timeout_s:g} s; working with this terminal's data")
    except RelayUnreachable:
        ctx.link = LinkState.OFFLINE


async def push(ctx: Context) -> bool:
    """After a write: wait (bounded) until the relay stored it. False if it stays local for now."""
    t = ctx.terminal
    if ctx.online:
        try:
            await t.synced(ctx.timeout_s, calendars=[ctx.need_calendar()])
            return True
        except (RelayUnreachable, SyncTimeout):
            pass
    reason = t.status().last_error or "not connected"
    ctx.out.note(
        f"saved locally; relay {t.relay} unreachable ({reason}); it will sync later "
        "(the next `accord terminal` command that reaches the relay sends it, e.g. `accord terminal sync`)"
    )
    return False


def offline_read_note(ctx: Context) -> None:
    if not ctx.online:
        status = ctx.terminal.status()
        last = fmt.when(status.last_ack_at) + " UTC" if status.last_ack_at else "never"
        ctx.out.note(f"relay {ctx.terminal.relay} unreachable; showing this terminal's data (last synced: {last})")


async def cmd_book(ctx: Context) -> int:
    t, args, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    reservation = await t.book(calendar, resource=args.resource, start=args.start, end=args.end,
                               patient=args.patient, service=args.service, note=args.note)
    stored = await push(ctx)
    code = EXIT_OK
    if args.wait:
        if not stored:
            raise RelayUnreachable(
                f"reservation {reservation.id} is saved locally but the relay is unreachable, so no decision yet; "
                "run `accord terminal sync` when it is back"
            )
        reservation = await t.decision(calendar, reservation.id, timeout=ctx.timeout_s)
        if reservation.status is Status.REJECTED:
            detail = reservation.reason or "the slot is taken"
            if reservation.conflict_with:
                detail += f" (conflicts with {reservation.conflict_with})"
            ctx.out.note(f"reservation {reservation.id} was rejected: {detail}; reschedule it or book another slot")
            code = EXIT_REJECTED
    sync = t.sync_state(calendar, reservation.id)
    ctx.out.result(reservation.id, reservation_json(reservation, sync))
    return code


async def _write(ctx: Context, action: Callable[[CalendarId, str], Awaitable[Reservation]]) -> int:
    t, calendar = ctx.terminal, ctx.need_calendar()
    await reach_relay(ctx)
    rid = await t.resolve(calendar, ctx.args.id)
    reservation = await action(calendar, rid)
    await push(ctx)
    sync = t.sync_state(calendar, reservation.id)
    ctx.out.result(f"{reservation.id} {fmt.status_text(reservation)}", reservation_json(reservation, sync))
    return EXIT_OK


async def cmd_reschedule(ctx: Context) -> int:
    a = ctx.args
    return await _write(ctx, lambda c, r: ctx.terminal.reschedule(c, r, start=a.start, end=a.end, resource=a.resource))


async def cmd_cancel(ctx: Context) -> int:
    return await _write(ctx, lambda c, r: ctx.terminal.cancel(c, r, reason=ctx.args.reason))


async def cmd_check_in(ctx: Context) -> int:
    return await _write(ctx, lambda c, r: ctx.terminal.check_in(c, r))


async def cmd_edit(ctx: Context) -> int:
    a = ctx.args
    if a.note is None and a.service is None:
        raise UsageError("accord terminal edit: give --note TEXT and/or --service CODE")
    return await _write(ctx, lambda c, r: ctx.terminal.edit(c, r, note=a.note, service=a.service))


async def cmd_list(ctx: Context) -> int:
    t, args, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    between = None
    if args.date is not None:
        day_start = datetime.combine(args.date, time(0), tzinfo=UTC)
        between = (day_start, day_start + timedelta(days=1))
    items = await t.list(calendar, resource=args.resource, between=between)
    sync_of = {r.id: t.sync_state(calendar, r.id) for r in items}
    if args.conflicts:
        conflicts = await t.conflicts(calendar, resource=args.resource, between=between)
        data = {
            "calendar": calendar,
            "conflicts": [
                {
                    "resource": c.resource,
                    "start": format_time(c.start),
                    "end": format_time(c.end),
                    "capacity": c.capacity,
                    "reservations": [reservation_json(r, t.sync_state(calendar, r.id)) for r in c.reservations],
                }
                for c in conflicts
            ],
        }
        ctx.out.result(fmt.conflicts_text(conflicts, sync_of), data)
        return EXIT_OK
    rows = [(r, sync_of[r.id]) for r in items]
    ctx.out.result(
        fmt.reservation_table(rows),
        {"calendar": calendar, "reservations": [reservation_json(r, s) for r, s in rows]},
    )
    return EXIT_OK


async def cmd_show(ctx: Context) -> int:
    t, calendar = ctx.terminal, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    rid = await t.resolve(calendar, ctx.args.id)
    reservation = await t.get(calendar, rid)
    sync = t.sync_state(calendar, rid)
    ctx.out.result(fmt.describe(reservation, sync), reservation_json(reservation, sync))
    return EXIT_OK


async def cmd_sync(ctx: Context) -> int:
    t = ctx.terminal
    ctx.link = await t.wait_connected(ctx.timeout_s)
    if ctx.link is LinkState.OFFLINE or ctx.link is LinkState.CONNECTING:
        status = t.status()
        raise RelayUnreachable(
            f"relay {t.relay} is unreachable ({status.last_error or 'no answer within the timeout'}); "
            f"{status.pending} local change(s) are saved here; check --relay, or try again later"
        )
    await t.synced(ctx.timeout_s, calendars=[ctx.calendar] if ctx.calendar else None)
    status = t.status()
    ctx.out.result(
        f"synced with {t.relay}: {len(status.calendars)} calendar(s), {status.pending} pending",
        {**status.to_json(), "synced": True},
    )
    return EXIT_OK


async def cmd_status(ctx: Context) -> int:
    t = ctx.terminal
    ctx.link = await t.wait_connected(ctx.timeout_s)
    if ctx.online:
        with contextlib.suppress(SyncTimeout, RelayUnreachable, RelayRefused):
            await t.synced(ctx.timeout_s, calendars=[ctx.calendar] if ctx.calendar else None)
    status = t.status()
    ctx.out.result(fmt.status_text_block(status), status.to_json())
    return EXIT_OK


async def cmd_watch(ctx: Context) -> int:
    t = ctx.terminal
    wanted = {ctx.calendar} if ctx.calendar else set(t.calendars())
    if not wanted:
        raise UsageError("accord terminal watch: this terminal holds no calendar yet; give --calendar NAME")
    for name in sorted(wanted):
        await t.open(name)
    stream = t.changes()
    state = await t.wait_connected(ctx.timeout_s)
    _note_link(ctx, state)
    if state is LinkState.REFUSED:
        raise _refused(t)
    printer = asyncio.create_task(_print_changes(ctx, stream, wanted), name="watch-printer")
    states = asyncio.create_task(_watch_link(ctx), name="watch-link")
    try:
        done, _ = await asyncio.wait({printer, states}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise RelayRefused
        return EXIT_OK
    finally:
        stream.close()
        for task in (printer, states):
            task.cancel()
        await asyncio.wait({printer, states})


async def _print_changes(ctx: Context, stream: Any, wanted: set[CalendarId]) -> None:
    t = ctx.terminal
    async for notice in stream:
        if notice.calendar not in wanted:
            continue
        if notice.kind is ChangeKind.OVERFLOW:
            ctx.out.result(f"overflow {notice.calendar}: many changes; run `accord terminal list`",
                           {"kind": str(notice.kind), "calendar": notice.calendar, "id": None, "reservation": None})
            continue
        for rid in notice.reservation_ids:
            try:
                reservation: Reservation | None = await t.get(notice.calendar, rid)
            except NotFound:
                reservation = None
            data = {
                "kind": str(notice.kind),
                "calendar": notice.calendar,
                "id": rid,
                "reservation": reservation_json(reservation, t.sync_state(notice.calendar, rid)) if reservation else None,
            }
            ctx.out.result(fmt.change_line(str(notice.kind), reservation, notice.calendar, rid), data)


async def _watch_link(ctx: Context) -> None:
    """Report link changes on stderr; return (so watch ends with exit 4) when the relay refuses us."""
    t = ctx.terminal
    state = t.status().link
    while True:
        new = await t.wait_link_change(state, WATCH_STATE_POLL_S)
        if new is state:
            continue
        state = new
        _note_link(ctx, state)
        if state is LinkState.REFUSED:
            raise _refused(t)


def _note_link(ctx: Context, state: LinkState) -> None:
    t = ctx.terminal
    if state is LinkState.ONLINE:
        ctx.out.note(f"connected to {t.relay}; watching")
    elif state is LinkState.OFFLINE:
        ctx.out.note(f"relay {t.relay} unreachable ({t.status().last_error}); retrying, changes made here still show")


def _refused(t: Terminal) -> RelayRefused:
    code = t.link.refused_code if t.link is not None and t.link.refused_code else 4401
    return RelayRefused(f"relay {t.relay} refused this terminal: {t.status().last_error}; check --token or ACCORD_TOKEN", code)


COMMANDS: dict[str, Callable[[Context], Awaitable[int]]] = {
    "book": cmd_book,
    "reschedule": cmd_reschedule,
    "cancel": cmd_cancel,
    "check-in": cmd_check_in,
    "edit": cmd_edit,
    "list": cmd_list,
    "show": cmd_show,
    "sync": cmd_sync,
    "status": cmd_status,
    "watch": cmd_watch,
}


async def run(args: argparse.Namespace, out: Output) -> int:
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
        return out.error(str(exc), EXIT_USAGE)
    except SystemExit as exc:  # --help
        return int(exc.code or 0) if isinstance(exc.code, int | None) else EXIT_USAGE
    logs.configure(args.log_level)
    # aiosqlite's DEBUG lines quote SQL parameters, i.e. the stored updates with patient data.
    logging.getLogger("aiosqlite").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return asyncio.run(run(args, out))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except UsageError as exc:
        return out.error(str(exc), EXIT_USAGE)
    except RelayRefused as exc:
        return out.error(str(exc), EXIT_REFUSED)
    except RelayUnreachable as exc:
        return out.error(str(exc), EXIT_UNREACHABLE)
    except (SyncTimeout, DecisionTimeout) as exc:
        return out.error(str(exc), EXIT_ERROR)
    except StorageError as exc:
        return out.error(f"{exc} (store: {args.store}; choose another with --store or ACCORD_STORE)", EXIT_ERROR)
    except AccordError as exc:
        return out.error(str(exc), EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
