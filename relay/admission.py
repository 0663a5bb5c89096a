"""Admission: who may connect (the handshake) and which updates may reach a calendar.

:meth:`Admission.admit_connection` turns a websocket handshake into what the connection may
do (:class:`Admitted`) or why it may not (:class:`Refusal`): the token, the role it asks for,
the endpoint (multiplexed ``/.accord/v1`` or a y-websocket ``/<calendar>``).

:meth:`Admission.check_update` judges one update before it is applied. A read-only connection
gets nothing applied (and is closed if it tried to add anything); every other update is judged
by the calendar's :class:`~accord.engine.update_policy.UpdatePolicy`, from clients and peers
alike: reservations, verdicts and home records are never deleted or overwritten, lifecycle marks
never removed, retired decision keys never written, resources and settings changed only by an
admin token (or, at a relay that is not the calendar's home, by a peer that may be relaying the
home's own change), and values there are validated; relay receipts come from peers only. A forged verdict needs no refusal: it is
simply not a decision (:mod:`accord.engine.authority`). The per-calendar policy index is kept
here, in step with every change the document makes (:meth:`Admission.observe`, a pipeline change
hook); it is dropped when the calendar unloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import urllib.parse
from dataclasses import dataclass

import pycrdt
from websockets.http11 import Request

from accord.engine.audit import is_audit_key
from accord.engine.errors import AccordError, CloseCode, InvalidCalendarName
from accord.engine.model import CalendarId, check_calendar_name
from accord.engine.place_codes import HOMES, RESERVATIONS
from accord.engine.protocol import covers, decode_state_vector
from accord.engine.replica import Change
from accord.engine.session import RELAY_HEADER, ROLE_HEADER, SYNC_PATH, parse_bearer
from accord.engine.update_policy import FIELD_CHARS, OTHER_FIELD_CHARS, Category, UpdatePolicy, Violation

from .auth import Grant, Role, TokenBook
from .calendars import CalendarHandle
from .config import DEFAULT_MAX_CALENDAR_BYTES, DEFAULT_MAX_RESERVATIONS
from .connection import Kind

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A handshake that may proceed: what the connection is and may open."""

    kind: Kind
    grant: Grant
    calendar: CalendarId | None  # the one calendar of a y-websocket connection
    peer_id: str = ""
    token: str | None = None  # as presented (kept in memory to re-check it when tokens reload; never logged)
    token_id: str = ""  # which token (a digest, never the token): subscriptions are capped per token


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection or an update is refused: close code, reason, and the metric label."""

    code: CloseCode
    reason: str
    metric: str


IGNORED = Refusal(CloseCode.NORMAL, "a read-only client's sync reply adds nothing: ignored", "")
RESYNC = Refusal(CloseCode.NORMAL, "update builds on data this relay lacks: dropped, and asked for again by STEP1",
                 "missing_dependency")


OFF_LOOP_POLICY_BYTES = 256 * 1024  # a calendar state this large gets its policy built in a thread


class Admission:
    """The relay's gatekeeper (see the module docstring)."""

    def __init__(self, tokens: TokenBook, *, max_reservations: int = DEFAULT_MAX_RESERVATIONS,
                 max_calendar_bytes: int = DEFAULT_MAX_CALENDAR_BYTES) -> None:
        self.tokens = tokens
        self.max_reservations = max_reservations
        self.max_calendar_bytes = max_calendar_bytes
        self._policies: dict[CalendarId, UpdatePolicy] = {}
        # Per calendar: its state's size when its policy was built plus every change since (an
        # upper bound: changes overlap less than they add; exact again after the next load).
        self._bytes: dict[CalendarId, int] = {}

    # ---- connections ----------------------------------------------------------------------------

    def admit_connection(self, request: Request) -> Admitted | Refusal:
        """Check a websocket handshake's token, role and path."""
        split = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(split.query)
        token = parse_bearer(request.headers.get("Authorization")) or next(iter(query.get("token", [])), None)
        path = urllib.parse.unquote(split.path)
        wants_peer = path == SYNC_PATH and request.headers.get(ROLE_HEADER, "terminal").lower() == "peer"
        grant = self.tokens.check(token, wants_peer=wants_peer)
        if grant is None:
            return Refusal(CloseCode.UNAUTHORIZED, "missing or wrong token", "unauthorized")
        if grant.role is Role.MONITOR:
            return Refusal(CloseCode.FORBIDDEN, "a monitor token reads /metrics and /healthz only", "forbidden")
        token_id = token_digest(token if not self.tokens.is_open else None)
        if path == SYNC_PATH:
            if wants_peer and grant.role is not Role.PEER:
                return Refusal(CloseCode.FORBIDDEN, "this token may not peer", "forbidden")
            if wants_peer:
                return Admitted(Kind.PEER, grant, None, request.headers.get(RELAY_HEADER, "")[:64], token, token_id)
            return Admitted(Kind.READ_ONLY if grant.role is Role.READ_ONLY else Kind.TERMINAL, grant, None, "", token,
                            token_id)
        try:
            calendar = check_calendar_name(path.lstrip("/"))
        except InvalidCalendarName as exc:
            return Refusal(CloseCode.NOT_FOUND, str(exc), "bad_calendar")
        if not grant.allows(calendar):
            return Refusal(CloseCode.FORBIDDEN, f"token may not open {calendar}", "forbidden")
        return Admitted(Kind.READ_ONLY if grant.role is Role.READ_ONLY else Kind.YJS, grant, calendar, "", token, token_id)

    # ---- updates --------------------------------------------------------------------------------

    def check_update(self, kind: Kind, grant: Grant, handle: CalendarHandle, update: bytes, *,
                     home_here: bool) -> Refusal | None:
        """None if ``update`` (from a connection of ``kind`` with ``grant``) may be applied.

        ``home_here``: this relay is the calendar's home (then even peers may not change its
        resources and settings: they reach the home through admins connected to it).

        Raises:
            MalformedMessage: the update cannot be read exactly as Yrs would read it; the
                sender is closed with 1007 rather than applying bytes nobody checked.
        """
        if not grant.can_write:
            if self._is_redundant(handle, update):
                return IGNORED
            return Refusal(CloseCode.FORBIDDEN, "read-only token: writes are not accepted", "read_only")
        policy = self._policy(handle)
        quota = self._over_quota(handle, policy, update)
        if quota is not None:
            return quota
        if not policy.might_violate(update):
            return None
        admin_ok = grant.role is Role.ADMIN or (kind is Kind.PEER and not home_here)
        for violation in policy.violations(update):
            if violation.category is Category.ADMIN_WRITE and admin_ok:
                continue
            if violation.category is Category.RELAY_ONLY and (kind is Kind.PEER or is_audit_key(violation.key)):
                continue  # a terminal carries the audit entries of the relay it used before (engine/audit.py)
            return _refusal(violation)
        return None

    def observe(self, handle: CalendarHandle, change: Change) -> None:
        """Keep the calendar's policy index in step with a change the document made."""
        policy = self._policies.get(handle.name)
        if policy is not None:
            policy.observe(change.update)
            self._bytes[handle.name] += len(change.update)

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        """Build a large calendar's policy index in a worker thread as it loads (pure Python over
        its full state: ~1 s for 10,000 reservations, which would otherwise hold the event loop at
        its first write). Kept only if nothing changed the calendar meanwhile; else the first
        write builds it from the state then, as for small calendars."""
        state = handle.replica.full_state()
        if handle.name in self._policies or len(state) < OFF_LOOP_POLICY_BYTES:
            return
        before = handle.replica.state_vector()
        try:
            policy = await asyncio.to_thread(UpdatePolicy.from_update, state)
        except AccordError:
            return  # the first write builds it, and reports
        if not handle.unloaded and handle.name not in self._policies and handle.replica.state_vector() == before:
            self._policies[handle.name] = policy
            self._bytes[handle.name] = len(state)

    def forget(self, handle: CalendarHandle) -> None:
        """The calendar left memory: drop its index."""
        self._policies.pop(handle.name, None)
        self._bytes.pop(handle.name, None)

    @staticmethod
    def _is_redundant(handle: CalendarHandle, update: bytes) -> bool:
        """True if ``update`` adds no operation the calendar lacks."""
        try:
            theirs = decode_state_vector(pycrdt.get_state(update))
        except (ValueError, AccordError):
            return False
        return covers(handle.replica.clocks(), theirs)

    def brings_home_record(self, handle: CalendarHandle, update: bytes) -> bool:
        """True if ``update`` (admitted) writes a home record ``handle`` lacks: content a home
        relay stored before, coming back (a terminal resending to a home restored from a backup
        that predates the calendar).

        Raises:
            MalformedMessage: ``update`` cannot be read (the admission refused it already).
        """
        return self._policy(handle).new_entries(update, HOMES) > 0

    def _policy(self, handle: CalendarHandle) -> UpdatePolicy:
        policy = self._policies.get(handle.name)
        if policy is None:
            state = handle.replica.full_state()
            policy = self._policies[handle.name] = UpdatePolicy.from_update(state)
            self._bytes[handle.name] = len(state)
        return policy

    def _over_quota(self, handle: CalendarHandle, policy: UpdatePolicy, update: bytes) -> Refusal | None:
        """A refusal if applying ``update`` would take the calendar past a quota."""
        if self._bytes[handle.name] + len(update) > self.max_calendar_bytes:
            return Refusal(CloseCode.FORBIDDEN, f"calendar is full: it may hold {self.max_calendar_bytes >> 20} MiB "
                                                "(relay limit --max-calendar-mb)", "calendar_bytes")
        held = policy.entries_in(RESERVATIONS)
        # A new reservation takes more than 16 bytes of an update: count them only when it matters.
        # Only new entries count: a calendar already past the limit (it was lowered, or the relay's
        # own writes passed it) still takes edits, so that reservations can be cancelled or moved.
        if held + len(update) // 16 > self.max_reservations and \
                (new := policy.new_entries(update, RESERVATIONS)) and held + new > self.max_reservations:
            return Refusal(CloseCode.FORBIDDEN, f"calendar is full: it may hold {self.max_reservations} reservations "
                                                "(relay limit --max-reservations)", "calendar_full")
        return None


def token_digest(token: str | None) -> str:
    """A short name for a token, safe to keep and log (``open`` on a relay without tokens: all
    its clients count as one)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else "open"


REASONS = {
    Category.ENTRY_DELETED: "reservations, verdicts and home records are never deleted; cancel instead",
    Category.ENTRY_OVERWRITTEN: "reservations, verdicts and home records are written once",
    Category.MARK_REMOVED: "a lifecycle mark (cancelled, checked in, ...) is never removed",
    Category.RETIRED_KEY: "decision keys are retired; only the home's signed verdicts decide",
    Category.ADMIN_WRITE: "resources and calendar settings need an admin token",
    Category.RELAY_ONLY: "receipts are written by relays only",
    Category.INVALID_VALUE: "invalid value (resource id, name, capacity 1-1000, hold_ttl 60-2592000 s, receipt)",
    Category.UNKNOWN_ROOT: "not part of an accord calendar",
    Category.NOT_A_MAP_ENTRY: "not part of an accord calendar",
    Category.TOO_LARGE: "a key or value is longer than its limit",
    Category.NOT_PLAIN: "reservation fields hold plain values (text, numbers), not nested types or bytes",
}


def _refusal(violation: Violation) -> Refusal:
    """The close code, reason and metric label for a rule an update breaks."""
    metric = str(violation.category).replace("-", "_")
    if violation.category is Category.MISSING_DEPENDENCY:
        # Honest writers get here too (an edit that overtook its own sync, a mesh delivering out
        # of order): an update that cannot be placed cannot be judged, so it is not applied, and
        # the relay asks for everything it lacks again; the answer brings the update and what it
        # builds on together, judged as one.
        return RESYNC
    where = f" ({violation.root}{'/' + violation.field if violation.field else ''})" if violation.root else ""
    reason = REASONS[violation.category]
    if violation.category is Category.TOO_LARGE and violation.root == "reservations" and violation.field != "key":
        limit = FIELD_CHARS.get(violation.field.encode(), OTHER_FIELD_CHARS)
        reason = f"a reservation field holds at most {limit} characters"
    return Refusal(CloseCode.FORBIDDEN, reason + where, metric)
