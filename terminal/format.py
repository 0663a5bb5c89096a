"""Human-readable output of the terminal CLI: tables, one-reservation views, change lines.

Times are shown in the zone the caller gives (:mod:`.zones`: ``--tz``, ``--utc``, the calendar's
setting or this machine's), ``YYYY-MM-DD HH:MM``; reservation ids as short ids
(:func:`~accord.terminal.ids.short_id`: their last 8 characters, what ``show`` accepts).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from accord.engine.model import Reservation, Status

from .conflicts import Conflict
from .ids import short_id
from .status import SyncState, TerminalStatus

NOTE_WIDTH = 30

SYNC_LABELS = {
    SyncState.LOCAL: "saved locally",
    SyncState.STORED: "on relay",
    SyncState.DECIDED: "decided",
}


def when(value: datetime, tz: tzinfo = UTC) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def span(start: datetime, end: datetime, tz: tzinfo = UTC) -> str:
    """``2026-12-01 09:00-09:30`` in ``tz`` (the end's date is shown only if it differs)."""
    start_local, end_local = start.astimezone(tz), end.astimezone(tz)
    tail = end_local.strftime("%H:%M") if start_local.date() == end_local.date() else when(end_local, tz)
    return f"{when(start_local, tz)}-{tail}"


def zone_name(tz: tzinfo) -> str:
    """``Europe/Berlin``, ``UTC``: how a zone is named in headers."""
    return str(getattr(tz, "key", None) or tz.tzname(None) or tz)


def clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def status_text(reservation: Reservation) -> str:
    """The status, plus a pending or rejected reschedule of a booked reservation, and what a
    rejection conflicts with (short id) or why it was rejected."""
    text = str(reservation.status)
    if reservation.proposal:
        text += f" (move {reservation.proposal})"
    if reservation.status is Status.REJECTED or reservation.proposal == "rejected":
        if reservation.conflict_with:
            text += f" by {short_id(reservation.conflict_with)}"
        elif reservation.reason:
            text += f": {reservation.reason}"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in [headers, *rows]]
    return "\n".join(lines)


def reservation_headers(tz: tzinfo) -> tuple[str, ...]:
    return (f"TIME ({zone_name(tz)})", "RESOURCE", "STATUS", "PATIENT", "SERVICE", "NOTE", "ID", "SYNC")


def reservation_row(reservation: Reservation, sync: SyncState, tz: tzinfo = UTC) -> list[str]:
    slot = reservation.slot
    return [
        span(slot.start, slot.end, tz),
        slot.resource,
        status_text(reservation),
        clip(reservation.patient, 20),
        clip(reservation.service, 16),
        clip(reservation.note, NOTE_WIDTH),
        short_id(reservation.id),
        SYNC_LABELS[sync],
    ]


def reservation_table(items: Sequence[tuple[Reservation, SyncState]], tz: tzinfo = UTC) -> str:
    """The ``list`` table."""
    if not items:
        return "no reservations"
    return table(reservation_headers(tz), [reservation_row(r, s, tz) for r, s in items])


def describe(reservation: Reservation, sync: SyncState, tz: tzinfo = UTC) -> str:
    """The ``show`` view: one ``field: value`` line each, empty fields left out."""
    fields: list[tuple[str, str]] = [
        ("id", reservation.id),
        ("calendar", reservation.calendar),
        ("status", status_text(reservation)),
        ("sync", SYNC_LABELS[sync]),
        ("requested", f"{reservation.resource} {span(reservation.start, reservation.end, tz)} {zone_name(tz)}"),
    ]
    if reservation.booked is not None:
        booked = reservation.booked
        fields.append(("booked", f"{booked.resource} {span(booked.start, booked.end, tz)} {zone_name(tz)}"))
    fields += [
        ("patient", reservation.patient),
        ("service", reservation.service),
        ("note", reservation.note),
        ("reason", reservation.reason),
        ("conflicts with", reservation.conflict_with),
        ("decided by", reservation.decided_by),
        ("created", f"{when(reservation.created_at, tz)} by {reservation.created_by}"),
        ("updated", f"{when(reservation.updated_at, tz)} by {reservation.updated_by}"),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in fields if value)


def conflicts_text(conflicts: Sequence[Conflict], sync_of: dict[str, SyncState], tz: tzinfo = UTC) -> str:
    """The ``list --conflicts`` view: one block per overbooked run."""
    if not conflicts:
        return "no conflicts"
    blocks = []
    for conflict in conflicts:
        title = (
            f"{conflict.resource} {span(conflict.start, conflict.end, tz)} {zone_name(tz)}: "
            f"{len(conflict.reservations)} bookings overlap, capacity {conflict.capacity}"
        )
        rows = [reservation_row(r, sync_of.get(r.id, SyncState.STORED), tz) for r in conflict.reservations]
        blocks.append(title + "\n" + table(reservation_headers(tz), rows))
    return "\n\n".join(blocks)


def status_text_block(status: TerminalStatus) -> str:
    """The ``status`` view."""
    lines = [
        f"terminal:   {status.name}",
        f"relay:      {status.relay or '(none)'} ({status.link})",
        f"pending:    {status.pending} local change(s) not yet stored on the relay",
        f"last ack:   {when(status.last_ack_at) + ' UTC' if status.last_ack_at else 'never'}",
    ]
    if status.last_error:
        lines.append(f"last error: {status.last_error}")
    for calendar in status.calendars:
        extra = f", refused: {calendar.refused}" if calendar.refused else ""
        lines.append(f"calendar:   {calendar.name}: {calendar.pending} pending{extra}")
    return "\n".join(lines)


def change_line(kind: str, reservation: Reservation | None, calendar: str, reservation_id: str,
                tz: tzinfo = UTC, fields: Sequence[str] = ()) -> str:
    """One ``watch`` line."""
    if reservation is None:
        return f"{kind:<7} {calendar} {short_id(reservation_id)}"
    slot = reservation.slot
    return (
        f"{kind:<7} {calendar} {short_id(reservation.id)} {status_text(reservation)} "
        f"{slot.resource} {span(slot.start, slot.end, tz)} {clip(reservation.patient, 20)}"
        + (f" [changed: {', '.join(fields)}]" if fields else "")
    )
