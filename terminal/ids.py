"""Reservation ids as people read and type them. Ids are UUIDv7 strings, too long to read out at
a desk, so the terminal shows the *last* :data:`SHORT_ID` characters (the leading ones are a
timestamp, shared by everything booked within the same minute) and accepts any fragment of at
least :data:`MIN_ID_FRAGMENT` characters that a single id starts or ends with; a fragment that
several ids match raises :class:`~accord.terminal.errors.AmbiguousId`, one that none matches
:class:`~accord.engine.errors.ReservationNotFound`.
"""

from __future__ import annotations

from collections.abc import Iterable

from accord.engine.errors import ReservationNotFound
from accord.engine.model import CalendarId, ReservationId

from .errors import AmbiguousId

SHORT_ID = 8
MIN_ID_FRAGMENT = 4
SHOWN_MATCHES = 5


def short_id(reservation_id: str) -> str:
    """The last 8 characters (unique enough to type; ``accord terminal show`` accepts them)."""
    return reservation_id[-SHORT_ID:]


def resolve_id(calendar: CalendarId, ids: Iterable[str], fragment: str) -> ReservationId:
    """The one id among ``ids`` (of ``calendar``) that is, starts with or ends with ``fragment``.

    Raises:
        ReservationNotFound: no id matches (the message says how to find the right one).
        AmbiguousId: several match; the caller asks for more characters.
    """
    keys = [str(k) for k in ids]
    text = fragment.strip().lower()
    if text in keys:
        return ReservationId(text)
    matches = sorted(k for k in keys if k.startswith(text) or k.endswith(text)) if len(text) >= MIN_ID_FRAGMENT else []
    if len(matches) == 1:
        return ReservationId(matches[0])
    if matches:
        shown = ", ".join(matches[:SHOWN_MATCHES])
        raise AmbiguousId(f"id {fragment!r} matches {len(matches)} reservations ({shown}); give more characters")
    raise ReservationNotFound(
        f"no reservation {fragment!r} in calendar {calendar!r} on this terminal; "
        "check the id (see `accord terminal list`), or sync and try again"
    )
