"""The ``accord terminal`` commands: each takes a :class:`Context` (an open terminal, the parsed
arguments, the output) and returns an exit code. Argument parsing lives in :mod:`.cli`.

Every command first tries the relay for at most ``--timeout`` seconds (:func:`reach_relay`:
connect and pull), works on the terminal's own data, and after a write waits (bounded) until
the relay stored it (:func:`push`). Nothing here waits on the network without a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from accord.engine.errors import CloseCode, ExitCode, InvalidReservation, NotFound
from accord.engine.model import CalendarId, Reservation, Status, format_time, parse_time
from accord.engine.slots import EXCEPTIONS_KEY, HOURS_KEY, free_intervals

from . import format as fmt
from . import zones
from .changes import ChangeKind, ChangeStream
from .client import Terminal
from .errors import RelayRefused, RelayUnreachable, SyncTimeout
from .ids import short_id
from .link import LinkState
from .status import SyncState

DEFAULT_RELAY = "ws://127.0.0.1:8765"
DEFAULT_TIMEOUT_S = 2.0
LONG_TIMEOUT_S = 10.0  # sync and book --wait
WATCH_STATE_POLL_S = 3600.0

class UsageError(Exception):
    """Bad command line: exit 2."""


# ---- output ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Output:
    """Where results, notes and errors go (plain text or JSON)."""

    json: bool

    def result(self, text: str, data: Any) -> None:
        print(json.dumps(data) if self.json else text, flush=True)

    def note(self, text: str) -> None:
        print(json.dumps({"note": text}) if self.json else f"accord terminal: {text}", file=sys.stderr, flush=True)

    def error(self, text: str, code: ExitCode) -> ExitCode:
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

    def zone(self) -> tzinfo:
        """The zone to show and read times in (see :mod:`.zones`)."""
        calendar_zone = None
        if self.calendar is not None and self.calendar in self.terminal.calendars():
            calendar_zone = self.terminal.peek_time_zone(self.calendar)
        try:
            return zones.choose(utc=self.args.utc, tz=self.args.tz, calendar_zone=calendar_zone)
        except InvalidReservation as exc:
            raise UsageError(f"--tz: {exc}") from None

    def read_time(self, text: str, option: str) -> str:
        """A ``--start``/``--end`` argument as an RFC 3339 time with an offset."""
        try:
            return zones.read_time(text, self.zone())
        except InvalidReservation as exc:
            raise UsageError(f"{option}: {exc}") from None

    def check_not_past(self, start: str) -> None:
        """Refuse a start in the past unless ``--allow-past`` (a typo in the year is the usual cause)."""
        now = self.terminal.clock()
        if parse_time(start) < now - timedelta(minutes=1) and not self.args.allow_past:
            shown = fmt.when(parse_time(start), self.zone())
            raise UsageError(f"--start {shown} is in the past; check the date, or add --allow-past to record it anyway")

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
    if ctx.calendar is not None and ctx.calendar in t.calendars() and t.held(ctx.calendar) \
            and ctx.args.command not in ("retry", "discard"):
        ctx.out.note(f"calendar {ctx.calendar!r} holds local changes the relay refused ({t.held(ctx.calendar)}); "
                     "it is not synced until you run `accord terminal retry` (send them with this token) or "
                     "`accord terminal discard` (drop them)")
        ctx.link = LinkState.OFFLINE  # what this shows and does stays local
        return
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
        tz = ctx.zone()
        last = f"{fmt.when(status.last_ack_at, tz)} {fmt.zone_name(tz)}" if status.last_ack_at else "never"
        ctx.out.note(f"relay {ctx.terminal.relay} unreachable; showing this terminal's data (last synced: {last})")


async def cmd_book(ctx: Context) -> ExitCode:
    t, args, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    start, end = ctx.read_time(args.start, "--start"), ctx.read_time(args.end, "--end")
    ctx.check_not_past(start)
    reservation = await t.book(calendar, resource=args.resource, start=start, end=end,
                               patient=args.patient, service=args.service, note=args.note)
    stored = await push(ctx)
    code = ExitCode.OK
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
            code = ExitCode.REJECTED
    sync = t.sync_state(calendar, reservation.id)
    if code is ExitCode.OK:
        ctx.out.note(f"reservation {short_id(reservation.id)}: {outcome(ctx, reservation, sync)}")
    ctx.out.result(reservation.id, reservation_json(reservation, sync))
    return code


def outcome(ctx: Context, reservation: Reservation, sync: SyncState) -> str:
    """What is true of a booking now, in words a desk can repeat to a patient."""
    slot = f"{reservation.resource} {fmt.span(reservation.start, reservation.end, ctx.zone())}"
    if reservation.status is Status.BOOKED:
        by = f" by the home relay {reservation.decided_by}" if reservation.decided_by else ""
        return f"booked{by}: {slot}"
    if reservation.status is Status.PENDING:
        where = ("stored on the relay; waiting for the home relay's decision" if sync is not SyncState.LOCAL
                 else "saved on this device only; not confirmed (the relay has not stored it yet)")
        return f"pending, {where}: {slot}"
    return f"{fmt.status_text(reservation)}: {slot}"


async def _write(ctx: Context, action: Callable[[CalendarId, str], Awaitable[Reservation]]) -> ExitCode:
    t, calendar = ctx.terminal, ctx.need_calendar()
    await reach_relay(ctx)
    rid = await t.resolve(calendar, ctx.args.id)
    reservation = await action(calendar, rid)
    await push(ctx)
    sync = t.sync_state(calendar, reservation.id)
    ctx.out.result(f"{reservation.id} {fmt.status_text(reservation)}; {fmt.SYNC_LABELS[sync]}",
                   reservation_json(reservation, sync))
    return ExitCode.OK


async def cmd_reschedule(ctx: Context) -> ExitCode:
    a = ctx.args
    start, end = ctx.read_time(a.start, "--start"), ctx.read_time(a.end, "--end")
    ctx.check_not_past(start)
    return await _write(ctx, lambda c, r: ctx.terminal.reschedule(c, r, start=start, end=end, resource=a.resource))


async def cmd_cancel(ctx: Context) -> ExitCode:
    return await _write(ctx, lambda c, r: ctx.terminal.cancel(c, r, reason=ctx.args.reason))


async def cmd_check_in(ctx: Context) -> ExitCode:
    return await _write(ctx, lambda c, r: ctx.terminal.check_in(c, r))


async def cmd_noshow(ctx: Context) -> ExitCode:
    return await _write(ctx, lambda c, r: ctx.terminal.no_show(c, r))


async def cmd_fulfil(ctx: Context) -> ExitCode:
    return await _write(ctx, lambda c, r: ctx.terminal.fulfil(c, r))


async def cmd_entered_in_error(ctx: Context) -> ExitCode:
    return await _write(ctx, lambda c, r: ctx.terminal.entered_in_error(c, r, reason=ctx.args.reason))


async def cmd_edit(ctx: Context) -> ExitCode:
    a = ctx.args
    if a.note is None and a.service is None:
        raise UsageError("accord terminal edit: give --note TEXT and/or --service CODE")
    return await _write(ctx, lambda c, r: ctx.terminal.edit(c, r, note=a.note, service=a.service))


async def cmd_list(ctx: Context) -> ExitCode:
    t, args, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    between = None
    tz = ctx.zone()
    if args.date is not None:
        day_start = datetime.combine(args.date, time(0), tzinfo=tz)
        between = (day_start, datetime.combine(args.date + timedelta(days=1), time(0), tzinfo=tz))
    items = await t.reservations(calendar, resource=args.resource, between=between)
    if not items and not t.peek_has_reservations(calendar):
        where = "here or on the relay" if ctx.online else "on this terminal (the relay was not reached)"
        ctx.out.note(f"calendar {calendar!r} has no reservations {where}; check the name "
                     "(a calendar exists once something is booked in it)")
    sync_of: dict[str, SyncState] = {r.id: t.sync_state(calendar, r.id) for r in items}
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
        ctx.out.result(fmt.conflicts_text(conflicts, sync_of, tz), data)
        return ExitCode.OK
    rows = [(r, sync_of[r.id]) for r in items]
    ctx.out.result(
        fmt.reservation_table(rows, tz),
        {"calendar": calendar, "reservations": [reservation_json(r, s) for r, s in rows]},
    )
    return ExitCode.OK


async def cmd_show(ctx: Context) -> ExitCode:
    t, calendar = ctx.terminal, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    rid = await t.resolve(calendar, ctx.args.id)
    reservation = await t.get(calendar, rid)
    sync = t.sync_state(calendar, rid)
    ctx.out.result(fmt.describe(reservation, sync, ctx.zone()), reservation_json(reservation, sync))
    return ExitCode.OK


async def cmd_sync(ctx: Context) -> ExitCode:
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
    return ExitCode.OK


async def cmd_status(ctx: Context) -> ExitCode:
    t = ctx.terminal
    ctx.link = await t.wait_connected(ctx.timeout_s)
    if ctx.online:
        with contextlib.suppress(SyncTimeout, RelayUnreachable, RelayRefused):
            await t.synced(ctx.timeout_s, calendars=[ctx.calendar] if ctx.calendar else None)
    status = t.status()
    ctx.out.result(fmt.status_text_block(status), status.to_json())
    return ExitCode.OK


async def cmd_watch(ctx: Context) -> ExitCode:
    """Print changes until SIGINT (Ctrl-C: exit 130) or SIGTERM (a service manager: exit 0), or
    until the relay refuses this terminal (exit 4).

    The watch handles both signals itself from its first line on: a signal while it connects
    stops it as cleanly as one later, and a process started with SIGINT ignored (a non-interactive
    shell starts background jobs so, and children inherit it) still stops on Ctrl-C. Its first
    note on stderr ("connected to ...; watching", or "... unreachable ...") comes after that, so
    whoever saw it knows a signal will be handled.
    """
    t = ctx.terminal
    wanted = {ctx.calendar} if ctx.calendar else set(t.calendars())
    if not wanted:
        raise UsageError("accord terminal watch: this terminal holds no calendar yet; give --calendar NAME")
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[ExitCode] = loop.create_future()
    handled = []
    for sig, code in ((signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.OK)):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
            loop.add_signal_handler(sig, _stop, stopped, code)
            handled.append(sig)
    try:
        for name in sorted(wanted):
            await t.open(name)
        stream = t.changes()
        tasks: set[asyncio.Future[Any]] = {
            asyncio.create_task(_print_changes(ctx, stream, wanted), name="watch-printer"),
            asyncio.create_task(_watch_link(ctx), name="watch-link"),
        }
        try:
            done, _ = await asyncio.wait(tasks | {stopped}, return_when=asyncio.FIRST_COMPLETED)
            for task in done & tasks:
                task.result()  # re-raise RelayRefused
            return stopped.result() if stopped.done() else ExitCode.OK
        finally:
            stream.close()
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _stop(stopped: asyncio.Future[ExitCode], code: ExitCode) -> None:
    if not stopped.done():  # the first signal decides the exit code
        stopped.set_result(code)


async def _print_changes(ctx: Context, stream: ChangeStream, wanted: set[CalendarId]) -> None:
    t = ctx.terminal
    seen: dict[tuple[CalendarId, str], Reservation] = {}  # what the last line showed of each reservation
    for name in wanted:
        for known in await t.reservations(name):
            seen[(name, known.id)] = known
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
            changed: list[str] = []
            if reservation is not None:
                changed = changed_fields(seen.get((notice.calendar, rid)), reservation)
                seen[(notice.calendar, rid)] = reservation
            data = {
                "kind": str(notice.kind),
                "calendar": notice.calendar,
                "id": rid,
                "changed": changed,
                "reservation": reservation_json(reservation, t.sync_state(notice.calendar, rid)) if reservation else None,
            }
            ctx.out.result(fmt.change_line(str(notice.kind), reservation, notice.calendar, rid, ctx.zone(), changed),
                           data)


_BOOKKEEPING = frozenset({"updated_at", "updated_by"})


def changed_fields(before: Reservation | None, after: Reservation) -> list[str]:
    """The names of the fields that differ (``["new"]`` for a reservation not seen before)."""
    if before is None:
        return ["new"]
    return [f.name for f in dataclass_fields(after)
            if f.name not in _BOOKKEEPING and getattr(before, f.name) != getattr(after, f.name)]


async def _watch_link(ctx: Context) -> None:
    """Report on stderr how the first connection attempt went, then going online or offline (not
    every retry); raise RelayRefused (exit 4) when the relay refuses this terminal."""
    t = ctx.terminal
    state = reported = await t.wait_connected(ctx.timeout_s)
    _note_link(ctx, state)
    while state is not LinkState.REFUSED:
        # From the state last seen, not a fresh read: a change in between is then reported too.
        state = await t.wait_link_change(state, WATCH_STATE_POLL_S)
        if state is not LinkState.CONNECTING and state is not reported:
            _note_link(ctx, state)
            reported = state
    raise _refused(t)


def _note_link(ctx: Context, state: LinkState) -> None:
    t = ctx.terminal
    if state is LinkState.ONLINE:
        ctx.out.note(f"connected to {t.relay}; watching")
    elif state is LinkState.OFFLINE:
        ctx.out.note(f"relay {t.relay} unreachable ({t.status().last_error}); retrying, changes made here still show")


def _refused(t: Terminal) -> RelayRefused:
    code = t.link.refused_code if t.link is not None and t.link.refused_code else CloseCode.UNAUTHORIZED
    return RelayRefused(f"relay {t.relay} refused this terminal: {t.status().last_error}; check --token or ACCORD_TOKEN", code)


async def cmd_resource(ctx: Context) -> ExitCode:
    """Declare or change a resource; on relays with tokens only an admin token may."""
    t, a, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    resource = await t.put_resource(calendar, a.id, name=a.name or "", capacity=a.capacity)
    await push(ctx)
    ctx.out.result(f"{resource.id} {resource.name} capacity {resource.capacity}",
                   {"calendar": calendar, "id": resource.id, "name": resource.name, "capacity": resource.capacity})
    return ExitCode.OK


async def cmd_resources(ctx: Context) -> ExitCode:
    t, calendar = ctx.terminal, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    found = await t.resources(calendar)
    text = "\n".join(f"{r.id}\t{r.name}\tcapacity {r.capacity}" for r in found) or "no resources declared"
    ctx.out.result(text, {"calendar": calendar, "resources": [{"id": r.id, "name": r.name, "capacity": r.capacity}
                                                              for r in found]})
    return ExitCode.OK


async def cmd_retry(ctx: Context) -> ExitCode:
    """Send a held calendar's refused local changes again, with this command's token."""
    t, calendar = ctx.terminal, ctx.need_calendar()
    if not t.held(calendar):
        ctx.out.result(f"calendar {calendar} holds no refused changes", {"calendar": calendar, "retried": 0})
        return ExitCode.OK
    pending = t.status_of(calendar)
    await t.retry(calendar)
    await reach_relay(ctx)
    await t.synced(ctx.timeout_s, calendars=[calendar])
    ctx.out.result(f"sent {pending} local change(s) of {calendar}; the relay stored them",
                   {"calendar": calendar, "retried": pending})
    return ExitCode.OK


async def cmd_discard(ctx: Context) -> ExitCode:
    """Drop a calendar's local changes the relay has not stored; pull it again."""
    t, calendar = ctx.terminal, ctx.need_calendar()
    dropped = await t.discard(calendar)
    await reach_relay(ctx)
    ctx.out.result(f"dropped {dropped} local change(s) of {calendar}"
                   + ("; pulled it from the relay again" if ctx.online else "; it is pulled again on the next sync"),
                   {"calendar": calendar, "discarded": dropped})
    return ExitCode.OK


async def cmd_time_zone(ctx: Context) -> ExitCode:
    """Show or set the calendar's time zone (an admin setting)."""
    t, a, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    if a.name is not None:
        name = None if a.name.strip().lower() == "off" else a.name.strip()
        if name is not None:
            try:
                zones.zone(name)
            except InvalidReservation as exc:
                raise UsageError(str(exc)) from None
        await t.set_time_zone(calendar, name)
        await push(ctx)
    current = await t.time_zone(calendar)
    ctx.out.result(f"time zone {current}" if current else "no time zone set (desks use their own)",
                   {"calendar": calendar, "time_zone": current})
    return ExitCode.OK


async def cmd_hold_ttl(ctx: Context) -> ExitCode:
    """Show or set the calendar's hold TTL (an admin setting)."""
    t, a, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    if a.seconds is not None:
        await t.set_hold_ttl(calendar, a.seconds or None)
        await push(ctx)
    current = await t.hold_ttl(calendar)
    seconds = None if current is None else int(current.total_seconds())
    ctx.out.result(f"hold TTL {seconds} s" if seconds is not None else "no hold TTL set",
                   {"calendar": calendar, "hold_ttl_s": seconds})
    return ExitCode.OK


async def cmd_free(ctx: Context) -> ExitCode:
    """List a resource's free intervals on one day, in the CLI's zone."""
    t, a, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    offline_read_note(ctx)
    tz = ctx.zone()
    lo = datetime.combine(a.date, time(0), tzinfo=tz)
    hi = datetime.combine(a.date + timedelta(days=1), time(0), tzinfo=tz)
    slots = await t.free_slots(calendar, a.resource, lo, hi)
    free = free_intervals(slots, a.duration or timedelta(0))
    lines = [fmt.span(s.start, s.end, tz) for s in free]
    ctx.out.result("\n".join(lines) or f"no free time on {a.resource} that day",
                   {"calendar": calendar, "resource": a.resource, "date": a.date.isoformat(),
                    "free": [{"start": format_time(s.start), "end": format_time(s.end)} for s in free],
                    "slots": [{"start": format_time(s.start), "end": format_time(s.end), "status": str(s.status)}
                              for s in slots]})
    return ExitCode.OK


async def cmd_hours(ctx: Context) -> ExitCode:
    """Show or set a resource's opening hours (an admin setting)."""
    t, a, calendar = ctx.terminal, ctx.args, ctx.need_calendar()
    await reach_relay(ctx)
    if a.weekly is not None or a.exceptions is not None or a.clear:
        await t.set_opening_hours(calendar, a.id, weekly=a.weekly, exceptions=a.exceptions, clear=a.clear)
        await push(ctx)
    snapshot = t.snapshot(calendar).get("resources", {}).get(a.id, {})
    weekly, exceptions = snapshot.get(HOURS_KEY), snapshot.get(EXCEPTIONS_KEY)
    text = f"weekly {weekly or 'open around the clock'}" + (f"\nexceptions {exceptions}" if exceptions else "")
    ctx.out.result(text, {"calendar": calendar, "resource": a.id,
                          "weekly": json.loads(weekly) if weekly else None,
                          "exceptions": json.loads(exceptions) if exceptions else None})
    return ExitCode.OK


COMMANDS: dict[str, Callable[[Context], Awaitable[ExitCode]]] = {
    "book": cmd_book,
    "reschedule": cmd_reschedule,
    "cancel": cmd_cancel,
    "check-in": cmd_check_in,
    "noshow": cmd_noshow,
    "fulfil": cmd_fulfil,
    "entered-in-error": cmd_entered_in_error,
    "edit": cmd_edit,
    "list": cmd_list,
    "show": cmd_show,
    "sync": cmd_sync,
    "status": cmd_status,
    "watch": cmd_watch,
    "resource": cmd_resource,
    "resources": cmd_resources,
    "hold-ttl": cmd_hold_ttl,
    "time-zone": cmd_time_zone,
    "retry": cmd_retry,
    "discard": cmd_discard,
    "free": cmd_free,
    "hours": cmd_hours,
}
