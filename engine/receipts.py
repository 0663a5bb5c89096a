"""Receipts: a relay clock's word on when a booking request first reached a relay.

A request's age decides whether its hold expired (``hold_ttl``: see :mod:`engine.decisions`).
The terminal's own stamp (``requested_at``) cannot measure it: a terminal whose clock runs
behind would see every booking expire, one that runs ahead never. So the first relay that
stores a request from one of its clients writes a **receipt** in the root map ``receipts``:

- key ``<reservation id>/<request digest>/<relay id>`` (the digest of
  :func:`engine.authority.request_digest`: a reschedule is a new request with a new receipt;
  the relay id keeps two relays that both got the request, e.g. from a terminal that switched
  relays, from writing the same set-once key);
- value the relay's UTC time, ISO 8601 (:func:`engine.model.format_time`).

Receipts are written in the same change as the request they stamp, so every replica that has
the request has its receipt; a relay writes them only for calendars with a hold TTL.
Only relays write receipts: relays refuse them from clients (``relay-only``), as set-once
entries like verdicts. The home counts a request's age from its earliest receipt, never from
before it was first stored; a receipt dated after the home's clock counts as now.

What a receipt does not protect against: a partner relay may date a receipt early, so that a
request it relays expires. That is a refusal (a request rejected ``expired``), never a double
booking, and the same relay could as well withhold the request.

Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pycrdt import Map

from .authority import request_digest
from .errors import InvalidReservation
from .model import LIFECYCLE_MARKS, format_time, parse_time

ROOT = "receipts"
CLIENT_ORIGIN = "client-update"
"""Transaction origin a relay tags a client's update with, so that :class:`Stamper` sees it."""
_REQUEST_KEYS = frozenset({"resource", "start", "end"})
_MARKS = tuple(key for key, _status in LIFECYCLE_MARKS)


def receipt_key(reservation_id: str, digest: str, relay_id: str) -> str:
    """The ``receipts`` key of a relay's receipt for one request of a reservation."""
    return f"{reservation_id}/{digest}/{relay_id}"


def parse_receipt_key(key: str) -> tuple[str, str] | None:
    """``(reservation id, request digest)`` of a receipt key; None if it has not that form."""
    parts = key.rsplit("/", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1]


class ReceiptIndex:
    """The earliest receipt of each request of a calendar, kept in step with its ``receipts`` map.

    Unreadable receipts (a key or time not of the form above) are ignored.
    """

    def __init__(self, receipts: Map[Any]) -> None:
        self.receipts = receipts
        self._earliest: dict[tuple[str, str], datetime] = {}
        for key, value in receipts.items():
            self._add(str(key), value)
        self._subscription = receipts.observe(self._on_change)

    def earliest(self, reservation_id: str, digest: str) -> datetime | None:
        """When the request first reached a relay, by that relay's clock (None: no receipt)."""
        return self._earliest.get((reservation_id, digest))

    def has(self, reservation_id: str, digest: str) -> bool:
        """True if some relay already stamped this request."""
        return (reservation_id, digest) in self._earliest

    def close(self) -> None:
        """Stop following the map."""
        self.receipts.unobserve(self._subscription)

    def _on_change(self, event: Any) -> None:
        for key, change in event.keys.items():  # set-once: relays refuse deletes and overwrites
            if change.get("action") != "delete":
                self._add(str(key), change.get("newValue"))

    def _add(self, key: str, value: object) -> None:
        request = parse_receipt_key(key)
        if request is None or not isinstance(value, str):
            return
        try:
            at = parse_time(value)
        except InvalidReservation:
            return
        known = self._earliest.get(request)
        if known is None or at < known:
            self._earliest[request] = at


class Stamper:
    """Writes this relay's receipts for the requests its clients' updates make (one calendar).

    It watches the ``reservations`` map for transactions tagged :data:`CLIENT_ORIGIN` and
    remembers the reservations they touched; :meth:`stamp`, called right after the relay
    applied such an update, writes a receipt for each current request no relay stamped yet,
    in one transaction tagged ``origin``. The relay stores and forwards that together with the
    client's change.

    Args:
        reservations: the calendar's ``reservations`` map.
        receipts: the calendar's ``receipts`` map (of the same document).
        relay_id: this relay's id (part of every receipt key).
        enabled: whether the calendar wants receipts now (it has a hold TTL).
    """

    def __init__(self, reservations: Map[Any], receipts: Map[Any], relay_id: str,
                 enabled: Callable[[], bool]) -> None:
        self.reservations = reservations
        self.index = ReceiptIndex(receipts)
        self.relay_id = relay_id
        self.enabled = enabled
        self.origin = ("receipts", relay_id)
        self._touched: set[str] = set()
        self._subscription = reservations.observe_deep(self._on_change)

    def close(self) -> None:
        """Stop watching the document."""
        self.reservations.unobserve(self._subscription)
        self.index.close()

    def _on_change(self, events: list[Any]) -> None:
        for event in events:
            if event.transaction.origin != CLIENT_ORIGIN:
                continue
            path = event.path
            if not path:
                self._touched.update(str(key) for key in event.keys)
            elif len(path) == 1 and not _REQUEST_KEYS.isdisjoint(event.keys):
                self._touched.add(str(path[0]))

    def stamp(self, now: datetime) -> int:
        """Write receipts, dated ``now``, for the unstamped requests of the reservations client
        updates touched since the last call; returns how many were written."""
        touched, self._touched = self._touched, set()
        if not touched or not self.enabled():
            return 0
        due: list[str] = []
        for rid in sorted(touched):
            entry = self.reservations.get(rid)
            if not isinstance(entry, Map):
                continue
            fields = entry.to_py() or {}
            if any(mark in fields for mark in _MARKS) or not fields.keys() >= _REQUEST_KEYS:
                continue
            digest = request_digest(rid, fields)
            if not self.index.has(rid, digest):
                due.append(receipt_key(rid, digest, self.relay_id))
        if due:
            stamp = format_time(parse_time(now))
            receipts = self.index.receipts
            with receipts.doc.transaction(origin=self.origin):
                for key in due:
                    receipts[key] = stamp
        return len(due)
