"""Time zones at the desk: which zone the terminal shows and reads times in.

Reservations are stored in UTC; people read and type local time. The zone, first match wins:

1. ``--utc``;
2. ``--tz NAME`` (an IANA name such as ``Europe/Berlin``), or the ``ACCORD_TZ`` environment variable;
3. the calendar's own setting (``meta.time_zone``, set by an admin with ``accord terminal time-zone``),
   which the board uses too, so that the two agree;
4. this machine's local zone.

A time typed with an offset (``2026-12-01T09:00+01:00``, ``...Z``) means what it says; one without
(``2026-12-01T09:00``, or ``2026-12-01 09:00``) is read in the zone above.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from accord.engine.errors import InvalidReservation


def zone(name: str) -> tzinfo:
    """The zone called ``name`` (``UTC`` or an IANA name).

    Raises:
        InvalidReservation: no such zone (the message gives examples).
    """
    text = name.strip()
    if text.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidReservation(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or America/New_York, or UTC"
        ) from None


def machine_zone() -> tzinfo:
    """This machine's local zone."""
    local = datetime.now().astimezone().tzinfo
    return local if local is not None else UTC


def choose(*, utc: bool, tz: str | None, calendar_zone: str | None) -> tzinfo:
    """The display zone, by the order in the module docstring.

    Raises:
        InvalidReservation: ``tz`` is not a zone.
    """
    if utc:
        return UTC
    if tz:
        return zone(tz)
    if calendar_zone:
        try:
            return zone(calendar_zone)
        except InvalidReservation:
            pass  # a setting this machine's tz database lacks: fall back
    return machine_zone()


def read_time(text: str, tz: tzinfo) -> str:
    """``text`` as an RFC 3339 time with an offset: unchanged if it has one, else read in ``tz``.

    Raises:
        InvalidReservation: not a date and time.
    """
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise InvalidReservation(
            f"time {text!r} is not a date and time; write it like 2026-12-01T09:30 (local) "
            "or 2026-12-01T09:30+01:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.isoformat()
