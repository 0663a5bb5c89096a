"""The audit trail: who changed which reservation, where, when, and what, hash-chained per calendar.

Theory of operation
-------------------
The relay that first stores a client's change writes one **audit entry** per reservation the
change touched, into the calendar document itself, in the relay-only root ``receipts`` (beside
the hold-TTL receipts of :mod:`engine.receipts`), under key ``audit/<relay id>/<entry id>``,
in the same change as the client's update. So every replica that has the change has its entry:
partner relays, terminals, a restored backup. Relays refuse writes to ``receipts`` from
clients (``relay-only``) and entries are set-once, so a terminal can neither forge nor erase one.

An entry (:class:`AuditEntry`) says *who* (the token's name and role, the terminal's actor from
the reservation's ``updated_by``), *where* (the relay id), *when* (the relay's clock) and *what*
(``create``/``update``/``delete``, the NAMES of the fields that changed, the status before and
after). Field VALUES are never kept: not the patient, not a note, not times; a privacy officer
gets who/when/what, and the reservation's current values stay where access control already is.

Beside the document, every relay appends each entry it stores (its own, and those a partner
relay's updates bring) to its store's ``audit`` table in the same transaction as the update
rows, as a hash chain per calendar: row ``n`` carries ``sha256(prev hash, calendar, key, entry)``
(:func:`link`). :func:`verify_chain` finds an edited, removed or reordered row;
:func:`compare_with_document` finds rows missing at the tail (or edited with a recomputed chain)
against the entries the document holds. Compaction rewrites update rows only: the table and the
document's entries both survive it.

Trust: an entry is the word of the relay that wrote it. A partner relay's entries are its claim
about its own clients (like its receipts); a relay that withholds a change also withholds its entry.
A terminal that moves between relays carries the entries its first relay wrote to the next one
(in its sync answer), so relays accept audit entries from clients too, still set-once; but such
a row is marked ``via`` the client's token (``client:desk-1``): it is that client's word about a
relay's word, not a relay's. A change that arrives with entries of another relay for a reservation
was stored there first: the receiving relay writes no entry of its own for that reservation.

Nothing here does I/O or reads a clock: callers pass ``now`` and entry ids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pycrdt import Map

from .calendar import Calendar
from .model import derive_status, format_time, parse_time

PREFIX = "audit/"
VERSION = 1
GENESIS = "0" * 64  # the "previous hash" of a calendar's first row
MAX_FIELDS = 24  # field names listed per entry (then a count): an entry stays far below 4 KiB
MAX_NAME_CHARS = 64
LOAD_ORIGIN = "load"  # Replica.load's transaction origin: entries already stored


class Op:
    """What a change did to a reservation."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to one reservation, as the first relay that stored it saw it (no field values)."""

    key: str  # the entry's key in the document's ``receipts`` root (unique)
    reservation: str
    relay: str
    at: datetime  # the relay's clock, UTC
    by: str  # the token's name
    role: str  # the token's role
    actor: str  # the terminal's actor (the reservation's ``updated_by``), "" if none
    op: str  # Op.*
    fields: tuple[str, ...]  # names of the fields that changed (never their values)
    status_before: str | None
    status_after: str | None
    more_fields: int = 0  # changed fields not listed (past MAX_FIELDS)
    via: str = ""  # how this store got it: "" (its relay wrote it, or a peer relayed it) or "client:<token>"; not encoded

    def encode(self) -> str:
        """The entry's stored text (compact JSON; the key is not part of it)."""
        body: dict[str, Any] = {"v": VERSION, "res": self.reservation, "relay": self.relay, "at": format_time(self.at),
                                "by": self.by, "role": self.role, "actor": self.actor, "op": self.op,
                                "fields": list(self.fields), "from": self.status_before, "to": self.status_after}
        if self.more_fields:
            body["more"] = self.more_fields
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, key: str, text: str) -> AuditEntry | None:
        """The entry stored as ``text`` under ``key``; None if it is not an audit entry."""
        if not is_audit_key(key) or not text.startswith("{"):
            return None
        try:
            body = json.loads(text)
            return cls(key=key, reservation=str(body["res"]), relay=str(body["relay"]), at=parse_time(body["at"]),
                       by=str(body["by"]), role=str(body["role"]), actor=str(body.get("actor", "")),
                       op=str(body["op"]), fields=tuple(str(f) for f in body.get("fields", ())),
                       status_before=body.get("from"), status_after=body.get("to"),
                       more_fields=int(body.get("more", 0)))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json`` and the FHIR facade (AuditEvent/Provenance)."""
        return {"key": self.key, "reservation": self.reservation, "relay": self.relay, "at": format_time(self.at),
                "by": self.by, "role": self.role, "actor": self.actor, "op": self.op, "fields": list(self.fields),
                "more_fields": self.more_fields, "status_before": self.status_before,
                "status_after": self.status_after, "via": self.via}


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """An entry to append to a store's audit log (the store chains it)."""

    calendar: str
    key: str
    entry: str
    via: str = ""  # "": written by this relay or received from a peer; "client:<token name>": carried by a client


@dataclass(frozen=True, slots=True)
class AuditRow:
    """A stored audit row: position ``n`` (1, 2, ... per calendar), the entry, and its chain links."""

    calendar: str
    n: int
    key: str
    entry: str
    prev: str
    hash: str
    via: str = ""


def audit_key(relay_id: str, entry_id: str) -> str:
    """The ``receipts`` key of an audit entry."""
    return f"{PREFIX}{relay_id}/{entry_id}"


def is_audit_key(key: str) -> bool:
    """True if ``key`` has the form of an audit entry's key (its value decides: see :meth:`AuditEntry.decode`)."""
    return key.startswith(PREFIX) and key.count("/") >= 2


def link(prev: str, calendar: str, key: str, entry: str, via: str = "") -> str:
    """The chain hash of a row: sha256 over the previous row's hash and this row's content."""
    return hashlib.sha256("\n".join((prev, calendar, key, entry, via)).encode()).hexdigest()


def chain(calendar: str, tail: tuple[int, str], records: list[AuditRecord]) -> list[AuditRow]:
    """Rows for ``records`` following a calendar's last row ``tail`` (``(0, GENESIS)``: none yet)."""
    n, prev = tail
    rows = []
    for record in records:
        n += 1
        digest = link(prev, calendar, record.key, record.entry, record.via)
        rows.append(AuditRow(calendar, n, record.key, record.entry, prev, digest, record.via))
        prev = digest
    return rows


def verify_chain(calendar: str, rows: list[AuditRow]) -> list[str]:
    """Problems with a calendar's stored rows (in ``n`` order): a gap, a broken link, a bad hash."""
    problems = []
    prev = GENESIS
    for expected, row in enumerate(rows, start=1):
        if row.n != expected:
            problems.append(f"calendar {calendar!r}: audit row {expected} is missing (next is {row.n})")
        if row.prev != prev:
            problems.append(f"calendar {calendar!r}: audit row {row.n} does not follow row {row.n - 1}")
        if link(row.prev, calendar, row.key, row.entry, row.via) != row.hash:
            problems.append(f"calendar {calendar!r}: audit row {row.n} was altered (hash mismatch)")
        prev = row.hash
    return problems


def document_entries(receipts: Map[Any]) -> dict[str, str]:
    """The audit entries a calendar document holds, ``{key: stored text}``."""
    return {str(key): value for key, value in receipts.items()
            if isinstance(value, str) and AuditEntry.decode(str(key), value) is not None}


def compare_with_document(calendar: str, rows: list[AuditRow], entries: dict[str, str]) -> list[str]:
    """Problems between a store's audit rows and the entries its document holds: an entry the
    log lacks (a row removed at the tail), a row whose text differs from the document's."""
    problems = []
    stored = {row.key: row for row in rows}
    missing = sorted(set(entries) - set(stored))
    if missing:
        problems.append(f"calendar {calendar!r}: {len(missing)} audit entries of the document are missing "
                        f"from the audit log (first {missing[0]})")
    for key, text in entries.items():
        row = stored.get(key)
        if row is not None and row.entry != text:
            problems.append(f"calendar {calendar!r}: audit row {row.n} differs from the document's entry")
    return problems


@dataclass(slots=True)
class _Touched:
    created: bool = False
    deleted: bool = False
    old: dict[str, Any] = field(default_factory=dict)  # changed key -> value before (absent: added); never logged
    added: set[str] = field(default_factory=set)


class ChangeWatch:
    """Which reservations (and which of their fields) the changes applied under :meth:`capture` touched.

    Watches the ``reservations`` map; outside :meth:`capture` its observer returns at once.
    """

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        self._active = False
        self._touched: dict[str, _Touched] = {}
        self._subscription = calendar.reservations.observe_deep(self._on_change)

    def close(self) -> None:
        """Stop watching."""
        self.calendar.reservations.unobserve(self._subscription)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record what the changes made inside this block touch (for :meth:`entries`)."""
        self._touched.clear()
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def _on_change(self, events: list[Any]) -> None:
        if not self._active:
            return
        for event in events:
            path = event.path
            if not path:
                for key, change in event.keys.items():
                    touched = self._touched.setdefault(str(key), _Touched())
                    action = change.get("action")
                    if action == "add":
                        touched.created = True
                    elif action == "delete":
                        touched.deleted = True
                        old = change.get("oldValue")
                        if isinstance(old, Map):
                            touched.old = json.loads(str(old))
            elif len(path) == 1:
                touched = self._touched.setdefault(str(path[0]), _Touched())
                for key, change in event.keys.items():
                    name = str(key)
                    if name in touched.old or name in touched.added:
                        continue  # the first value seen is the value before
                    if change.get("action") == "add":
                        touched.added.add(name)
                    else:
                        touched.old[name] = change.get("oldValue")

    def entries(self, *, now: datetime, relay_id: str, by: str, role: str,
                entry_ids: Iterator[str], recorded: frozenset[str] = frozenset()) -> list[AuditEntry]:
        """One entry per reservation the last :meth:`capture` touched (then forgets them), but
        none for the ``recorded`` ones (the change brought another relay's entries for them)."""
        touched, self._touched = self._touched, {}
        out = []
        for rid in sorted(set(touched) - recorded):
            item = touched[rid]
            entry = self.calendar.reservations.get(rid)
            # Yrs' own JSON is several times cheaper than Map.to_py() (pycrdt-limits.md).
            after: dict[str, Any] = json.loads(str(entry)) if isinstance(entry, Map) else {}
            if item.deleted and not isinstance(entry, Map):
                op, names, before, after_fields = Op.DELETE, sorted(item.old), item.old, None
            elif item.created:
                op, names, before, after_fields = Op.CREATE, sorted(after), None, after
            else:
                before = {k: v for k, v in after.items() if k not in item.added}
                before.update(item.old)
                for name, value in item.old.items():
                    if value is None:
                        before.pop(name, None)
                op, names, after_fields = Op.UPDATE, sorted(item.added | set(item.old)), after
            listed = tuple(name[:MAX_NAME_CHARS] for name in names[:MAX_FIELDS])
            out.append(AuditEntry(
                key=audit_key(relay_id, next(entry_ids)), reservation=rid, relay=relay_id, at=parse_time(now),
                by=by, role=role, actor=str((after_fields or before or {}).get("updated_by", ""))[:MAX_NAME_CHARS],
                op=op, fields=listed, status_before=self._status(rid, before), status_after=self._status(rid, after_fields),
                more_fields=max(0, len(names) - MAX_FIELDS)))
        return out

    def _status(self, rid: str, fields: dict[str, Any] | None) -> str | None:
        if fields is None:
            return None
        calendar = self.calendar
        try:
            return str(derive_status(fields, has_home=calendar.has_home, decided=calendar.decision_state(rid, fields)))
        except Exception:  # a reservation a client wrote badly still gets its entry, without a status
            return None


class LedgerWatch:
    """Collects the audit entries that changes bring into a document (any source but a load),
    for the store to append in the same transaction as those changes (:meth:`take`)."""

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar
        self._pending: list[AuditRecord] = []
        self.via = ""  # set while a client's update is applied (see the module docstring)
        self._subscription = calendar.receipts.observe(self._on_change)

    def close(self) -> None:
        """Stop watching."""
        self.calendar.receipts.unobserve(self._subscription)

    def _on_change(self, event: Any) -> None:
        if event.transaction.origin == LOAD_ORIGIN:
            return
        for key, change in event.keys.items():
            name = str(key)
            if change.get("action") == "add" and is_audit_key(name):
                value = change.get("newValue")
                if isinstance(value, str) and AuditEntry.decode(name, value) is not None:
                    self._pending.append(AuditRecord(self.calendar.name, name, value, self.via))

    def carried(self) -> frozenset[str]:
        """Reservations that entries pending here, carried by a client, are about."""
        return frozenset(entry.reservation for record in self._pending if record.via
                         and (entry := AuditEntry.decode(record.key, record.entry)) is not None)

    def take(self) -> list[AuditRecord]:
        """Entries that arrived since the last call, in arrival order."""
        pending, self._pending = self._pending, []
        return pending


def write_entries(calendar: Calendar, entries: list[AuditEntry], origin: object) -> None:
    """Write ``entries`` into the document's ``receipts`` root in one transaction tagged ``origin``."""
    receipts = calendar.receipts
    with calendar.doc.transaction(origin=origin):
        for entry in entries:
            receipts[entry.key] = entry.encode()


def read_entries(rows: list[AuditRow], reservation_id: str | None = None) -> list[AuditEntry]:
    """The entries of stored rows (in log order), optionally of one reservation only."""
    out = []
    for row in rows:
        entry = AuditEntry.decode(row.key, row.entry)
        if entry is not None and (reservation_id is None or entry.reservation == reservation_id):
            out.append(dataclasses.replace(entry, via=row.via) if row.via else entry)
    return out
