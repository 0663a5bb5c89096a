"""The hub: which connection is subscribed to which calendar, and what each session event does.

Every connection (inbound terminals, stock Yjs clients, peers, and the relay's own outbound
peer links) reports to the hub (:class:`~accord.relay.connection.ConnectionHandler`):

- a calendar a session asks for is checked against the token's globs (and, for peers, the
  ``--peer-calendars`` globs), loaded, subscribed and opened on the session, or refused;
- an update is judged by :class:`~accord.relay.admission.Admission`, applied to the replica
  and handed to the :class:`~accord.relay.pipeline.CommitPipeline` (stored, then forwarded
  and acknowledged);
- presence goes to the calendar's other stock clients (:mod:`~accord.relay.presence`).

Peers are subscribed to every calendar they may share as it loads (a calendar-set hook), so an
update reaches every relay; a calendar that unloads is forgotten on their sessions and opened
again (a fresh state-vector exchange) when it next loads. A calendar that loads empty (a name
only read) is offered to peers only once its first write is stored (a pipeline batch hook).

**Peer link-up** costs what differs, not what is stored: each side opens on the link only the
calendars it has loaded, and sends the stored state vectors of everything else it may share,
in batches of :data:`STATES_BATCH` (``STATES`` messages). The receiver compares each with its
own stored vector (:func:`~accord.engine.storage.state_vectors.differ`) and opens only the
calendars that differ, which loads them on both sides; the rest stay on disk.

**Subscription caps.** A client connection may hold at most ``max_subscriptions_per_connection``
calendars, and all connections of one token together ``max_subscriptions_per_token``; the one
that asks for more is closed with 4429 (TOO_MANY_SUBSCRIPTIONS) and a reason naming the limit,
counted in ``accord_refused_connections_total``. Peers are not capped: they hold what the relays share.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from pycrdt import Doc
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from accord.engine.calendar import Calendar
from accord.engine.errors import AccordError, CloseCode, MalformedMessage, StorageError
from accord.engine.model import CalendarId, check_text
from accord.engine.protocol import decode_state_vector
from accord.engine.receipts import CLIENT_ORIGIN
from accord.engine.replica import Change
from accord.engine.session import (
    AwarenessReceived,
    CalendarRefused,
    CalendarRequested,
    Event,
    NothingNew,
    Session,
    StatesAnnounced,
    UpdateReceived,
)
from accord.engine.storage.state_vectors import differ

from . import presence
from .admission import IGNORED, RESYNC, Admission, Admitted
from .audit import Audit
from .auth import OPEN_PEER_GRANT, Grant, Role, TokenBook
from .calendars import CalendarHandle, CalendarSet, matches
from .connection import Connection, Kind
from .metrics import Metrics
from .notice import Notice
from .pipeline import CommitPipeline
from .receipts import Receipts

log = logging.getLogger(__name__)
STATES_BATCH = 1000  # stored state vectors per STATES message (~30 KiB)
T = TypeVar("T")


class Hub:
    """Connections, subscriptions and event handling (see the module docstring)."""

    def __init__(self, calendars: CalendarSet, pipeline: CommitPipeline, admission: Admission, metrics: Metrics,
                 *, notice: Notice, peer_globs: list[str], max_message_bytes: int, outbox_messages: int,
                 is_deciding: Callable[[str], bool] = lambda _calendar: False,
                 receipts: Receipts | None = None, audit: Audit | None = None,
                 max_subscriptions_per_connection: int = 1000, max_subscriptions_per_token: int = 10_000) -> None:
        self.is_deciding = is_deciding  # this relay decides the calendar (its recorded home)
        self.receipts = receipts
        self.audit = audit  # records clients' changes (see relay/audit.py)
        self.first_write: Callable[[CalendarHandle], None] = lambda _handle: None  # the home takes it
        self.calendars = calendars
        self.pipeline = pipeline
        self.admission = admission
        self.metrics = metrics
        self.notice = notice
        self.peer_globs = peer_globs
        self.max_message_bytes = max_message_bytes
        self.outbox_messages = outbox_messages
        self.connections: set[Connection] = set()
        self.max_subscriptions_per_connection = max_subscriptions_per_connection
        self.max_subscriptions_per_token = max_subscriptions_per_token
        self._token_of: dict[Connection, str] = {}
        self._subscriptions: Counter[Connection] = Counter()  # client connections only
        self._token_subscriptions: Counter[str] = Counter()
        self._capped: set[Connection] = set()  # closing for passing a cap
        self._edit_client = random.getrandbits(32)  # the Yjs client of this process's client_edit writes
        self._scratch: OrderedDict[CalendarId, Calendar] = OrderedDict()  # client_edit's kept copies

    # ---- accepting ------------------------------------------------------------------------------

    async def serve(self, websocket: ServerConnection) -> None:
        """Serve one inbound websocket (the server's handler): admit it, then run it."""
        assert websocket.request is not None
        verdict = self.admission.admit_connection(websocket.request)
        if not isinstance(verdict, Admitted):
            self.metrics.refused[verdict.metric] += 1
            log.info("connection refused", extra={"code": int(verdict.code), "reason": verdict.reason})
            await websocket.close(verdict.code, verdict.reason)
            return
        connection = self._connection(websocket, verdict.kind, verdict.grant, verdict.calendar, verdict.peer_id,
                                      token=verdict.token)
        self._token_of[connection] = verdict.token_id
        await connection.run(self)

    def peer_connection(self, websocket: ClientConnection, url: str,
                        calendars: tuple[str, ...] = ("*",)) -> Connection:
        """Wrap an outbound peer link's websocket (the link runs it); it shares only ``calendars``."""
        grant = OPEN_PEER_GRANT if calendars == ("*",) else Grant(Role.PEER, calendars, "outbound")
        return self._connection(websocket, Kind.PEER, grant, None, url, inbound=False)

    def _connection(self, websocket: ServerConnection | ClientConnection, kind: Kind, grant: Grant,
                    calendar: CalendarId | None, peer_id: str, *, token: str | None = None,
                    inbound: bool = True) -> Connection:
        # ACKs go to terminals only: stock Yjs clients do not know them, relays do not read them.
        session = Session(self.calendars, calendar=calendar, send_acks=calendar is None and kind is not Kind.PEER,
                          max_message_bytes=self.max_message_bytes, cut_elsewhere=True)
        return Connection(websocket, session, kind=kind, grant=grant, metrics=self.metrics, peer_id=peer_id,
                          outbox_messages=self.outbox_messages, token=token, inbound=inbound)

    # ---- ConnectionHandler ----------------------------------------------------------------------

    async def connection_opened(self, connection: Connection) -> None:
        """Open the one calendar of a y-websocket connection, or every shared calendar for a peer."""
        self.connections.add(connection)
        log.info("connection opened", extra={"conn": connection.label, "token": connection.grant.name,
                                             "remote": _remote(connection)})
        self.notice.notify()
        if connection.session.single is not None:
            await self._open(connection, connection.session.single)
        elif connection.is_peer:
            await self._link_up(connection)

    async def _link_up(self, connection: Connection) -> None:
        """Open the loaded calendars on a new peer link; send the stored state vectors of the rest."""
        for handle in list(self.calendars.loaded.values()):
            if not handle.is_empty() and self._shares(connection, handle.name):
                self._subscribe(connection, handle)
        connection.flush()
        sent = 0
        # A peer token limited to "clinic-7-*" needs only that range of the store read, not all of it.
        for prefix in scan_prefixes(connection.grant.globs) or scan_prefixes(self.peer_globs) or [""]:
            after = prefix[:-1] + chr(ord(prefix[-1]) - 1) if prefix else ""  # just before the range
            while page := await self.calendars.storage.state_vector_page(after, STATES_BATCH):
                after = page[-1][0]
                batch = [(name, sv) for name, sv in page if self._shares(connection, name)]
                if batch:
                    connection.session.send_states(batch)
                    connection.flush()
                    sent += len(batch)
                if prefix and after > prefix and not after.startswith(prefix):
                    break  # past the range (names sort as the store sorts them: by code point)
        log.info("peer link-up: state vectors sent", extra={"conn": connection.label, "calendars": sent,
                                                             "opened": len(connection.calendars())})

    async def _compare_states(self, connection: Connection, entries: tuple[tuple[CalendarId, bytes], ...]) -> None:
        """Open the calendars of a peer's STATES batch whose stored state vectors differ from ours."""
        wanted = [(name, sv) for name, sv in entries
                  if self._shares(connection, name) and not connection.session.serves(name)]
        stored = await self.calendars.storage.state_vectors([name for name, _ in wanted])
        self.metrics.peer_states_compared += len(entries)
        for name, theirs in wanted:
            handle = self.calendars.loaded.get(name)
            ours = handle.replica.state_vector() if handle is not None else stored.get(name)
            if differ(ours, theirs):
                self.metrics.peer_calendars_differing += 1
                await self._open(connection, name)
        self.notice.notify()

    def _shares(self, connection: Connection, name: str) -> bool:
        """True if ``name`` is shared over this peer connection."""
        return matches(name, self.peer_globs) and connection.grant.allows(name)

    async def connection_event(self, connection: Connection, event: Event) -> None:
        match event:
            case CalendarRequested(calendar):
                await self._open(connection, calendar)
            case UpdateReceived(calendar, update, step2):
                handle = await self._subscribed(connection, calendar)
                if handle is not None:
                    await self._receive_update(connection, handle, update, step2=step2)
            case NothingNew(calendar):  # still acknowledged, in order with what came before
                handle = await self._subscribed(connection, calendar)
                if handle is not None:
                    self.metrics.updates_in += 1
                    await self.pipeline.submit(handle, None, connection)
            case AwarenessReceived(calendar, payload):
                handle = self.calendars.loaded.get(calendar)
                if not connection.grant.can_write:  # a read-only viewer is not announced to the desks
                    self.metrics.updates_dropped["read_only_presence"] += 1
                    self.notice.notify()
                elif handle is not None and connection in handle.subscribers:
                    presence.broadcast(handle, payload, sender=connection)
            case StatesAnnounced(entries):
                if connection.is_peer:
                    await self._compare_states(connection, entries)
            case CalendarRefused(calendar, code, reason):
                log.warning("calendar refused by other side", extra={"conn": connection.label, "calendar": calendar,
                                                                     "code": code, "reason": reason})
            case _:
                pass  # SyncCompleted, Acknowledged, AwarenessQueried: nothing to do on a relay

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        sent = connection.websocket.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:  # websockets' own --max-message-bytes check
            self.metrics.updates_dropped["message_too_big"] += 1
        presence.clear(connection, self.calendars.loaded)
        names = connection.calendars()
        for name in names:
            handle = self.calendars.loaded.get(name)
            if handle is not None:
                handle.subscribers.discard(connection)
        self._capped.discard(connection)
        token = self._token_of.pop(connection, "")
        held = self._subscriptions.pop(connection, 0)
        self.metrics.subscriptions -= held
        self._token_subscriptions[token] -= held
        if self._token_subscriptions[token] <= 0:
            del self._token_subscriptions[token]
        # Names that were only read leave now, not after the idle timeout.
        unloaded = sum(1 for name in names if name not in self.pipeline.busy and self.calendars.unload(name))
        if unloaded:
            log.info("empty calendars unloaded", extra={"conn": connection.label, "count": unloaded})
        log.info("connection closed", extra={"conn": connection.label, "code": connection.websocket.close_code,
                                             "messages": connection.session.messages_in})
        self.notice.notify()

    async def tokens_reloaded(self, tokens: TokenBook) -> tuple[int, int]:
        """Re-check every inbound connection's token against a reloaded token file: a revoked
        token's connections close with 4401, a narrowed one's with 4403, the rest keep their
        streams (with the new grant). Returns (closed, kept)."""
        closing = []
        kept = 0
        for connection in list(self.connections):
            if not connection.inbound:
                continue
            grant = tokens.check(connection.token, wants_peer=connection.is_peer)
            if grant is None:
                closing.append(connection.close(CloseCode.UNAUTHORIZED, "token revoked"))
            elif not grant.covers(connection.grant):
                closing.append(connection.close(CloseCode.FORBIDDEN, "token's access changed; reconnect"))
            else:
                connection.grant = grant
                kept += 1
        for done in closing:
            await done
        return len(closing), kept

    # ---- calendar-set hooks ---------------------------------------------------------------------

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        """Make the peers part of a calendar that just loaded and open it on their links
        (once it has content: an empty one waits for its first write, :meth:`batch_stored`)."""
        if not handle.is_empty():
            self._open_on_peers(handle)

    def batch_stored(self, handles: list[CalendarHandle]) -> None:
        """A pipeline batch hook: calendars that just got their first content go to the peers."""
        for handle in handles:
            if not handle.peers_open and not handle.is_empty():
                self._open_on_peers(handle)

    def _open_on_peers(self, handle: CalendarHandle) -> None:
        handle.peers_open = True
        if not matches(handle.name, self.peer_globs):
            return
        for connection in list(self.connections):
            if connection.is_peer and connection.grant.allows(handle.name):
                self._subscribe(connection, handle)
                connection.flush()

    def _scratch_of(self, handle: CalendarHandle, actor: str) -> Calendar:
        """The kept copy of the calendar for :meth:`client_edit` (taken out of the cache until the
        edit is through), brought up to date; a new one if none is kept or the kept one holds
        anything the replica lacks (it never should)."""
        replica = handle.replica
        scratch = self._scratch.pop(handle.name, None)
        if scratch is not None:
            theirs = decode_state_vector(replica.state_vector())
            if any(theirs.get(client, 0) < clock for client, clock in decode_state_vector(scratch.doc.get_state()).items()):
                scratch = None
        if scratch is None:
            doc: Doc[Any] = Doc(client_id=self._edit_client)
            doc.apply_update(replica.full_state())
            scratch = Calendar(handle.name, doc, actor=actor, origin="fhir")
        else:
            missing = replica.calendar.doc.get_update(scratch.doc.get_state())
            if missing != b"\x00\x00":
                scratch.doc.apply_update(missing)
            scratch.actor = check_text("actor", actor, required=True)
        return scratch

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        self._scratch.pop(handle.name, None)
        for connection in handle.subscribers:
            connection.session.forget(handle.name)
            self._unsubscribed(connection)
        handle.subscribers.clear()

    # ---- subscriptions --------------------------------------------------------------------------

    async def _open(self, connection: Connection, name: CalendarId) -> CalendarHandle | None:
        """Subscribe ``connection`` to ``name`` (loading it); None if refused."""
        if not connection.grant.allows(name) or (connection.is_peer and not matches(name, self.peer_globs)):
            self.metrics.refused["forbidden_calendar"] += 1
            await self._refuse(connection, name, CloseCode.FORBIDDEN, f"not allowed: {name}")
            return None
        if not connection.is_peer and not connection.session.serves(name) and not self._may_subscribe(connection):
            return None
        try:
            handle = await self.calendars.get(name)
        except StorageError as exc:
            log.error("calendar unavailable", extra={"calendar": name, "error": str(exc)})
            await self._refuse(connection, name, CloseCode.INTERNAL_ERROR, "calendar store is damaged")
            return None
        self._subscribe(connection, handle)
        return handle

    def _may_subscribe(self, connection: Connection) -> bool:
        """False (and the connection closed with 4429) if one more calendar would pass a cap."""
        if connection in self._capped:
            return False  # already closing for it: the names it sent meanwhile are ignored
        token = self._token_of.get(connection, "")
        if self._subscriptions[connection] >= self.max_subscriptions_per_connection:
            metric = "subscriptions_per_connection"
            reason = (f"too many calendars on one connection (limit {self.max_subscriptions_per_connection}, "
                      "--max-subscriptions-per-connection); open fewer or use another connection")
        elif self._token_subscriptions[token] >= self.max_subscriptions_per_token:
            metric = "subscriptions_per_token"
            reason = (f"too many calendars open with this token (limit {self.max_subscriptions_per_token}, "
                      "--max-subscriptions-per-token); close other connections first")
        else:
            return True
        self.metrics.refused[metric] += 1
        self._capped.add(connection)
        log.warning("subscription limit reached; closing", extra={"conn": connection.label, "limit": metric,
                                                                  "calendars": self._subscriptions[connection]})
        # Not awaited: the reader must keep draining what the client sent meanwhile, or the
        # client's answer to the close frame could not be read (the closing handshake would stall).
        connection.close_soon(CloseCode.TOO_MANY_SUBSCRIPTIONS, reason)
        return False

    def _subscribe(self, connection: Connection, handle: CalendarHandle) -> None:
        if not connection.is_peer and connection not in handle.subscribers and connection in self._token_of:
            self._subscriptions[connection] += 1
            self._token_subscriptions[self._token_of[connection]] += 1
            self.metrics.subscriptions += 1
        handle.subscribers.add(connection)
        connection.session.open(handle.name)

    def _unsubscribed(self, connection: Connection) -> None:
        if not connection.is_peer and self._subscriptions.get(connection, 0) > 0:
            self._subscriptions[connection] -= 1
            self._token_subscriptions[self._token_of.get(connection, "")] -= 1
            self.metrics.subscriptions -= 1

    @staticmethod
    async def _refuse(connection: Connection, name: CalendarId, code: CloseCode, reason: str) -> None:
        if connection.is_stock_yjs:  # y-websocket knows no per-calendar refusal: close it
            await connection.close(code, reason)
            return
        connection.session.refuse(name, code, reason)

    async def _subscribed(self, connection: Connection, calendar: CalendarId) -> CalendarHandle | None:
        handle = self.calendars.loaded.get(calendar)
        if handle is not None and connection in handle.subscribers:
            return handle
        return await self._open(connection, calendar)

    # ---- updates --------------------------------------------------------------------------------

    async def _receive_update(self, connection: Connection, handle: CalendarHandle, update: bytes, *,
                              step2: bool = False) -> None:
        """Check, apply and queue one update for commit (then forward and acknowledge)."""
        self.metrics.updates_in += 1
        refusal = self.admission.check_update(connection.kind, connection.grant, handle, update,
                                              home_here=self.is_deciding(handle.name))
        if refusal is IGNORED:
            return
        if refusal is RESYNC:
            self.metrics.updates_dropped[refusal.metric] += 1
            if step2:  # the answer to our STEP1 is itself incomplete: asking again would loop
                log.info("sync answer builds on data the sender lacks too; closing it to retry later",
                         extra={"conn": connection.label, "calendar": handle.name})
                await connection.close(CloseCode.TRY_AGAIN_LATER, "your state builds on updates you do not have; "
                                                                  "reconnect once you have them")
                return
            log.info("update dropped until its dependencies arrive; resyncing",
                     extra={"conn": connection.label, "calendar": handle.name})
            connection.session.resync(handle.name)
            return
        if refusal is not None:
            self.metrics.updates_dropped[refusal.metric] += 1
            log.warning("update refused", extra={"conn": connection.label, "calendar": handle.name,
                                                 "reason": refusal.reason})
            # Its later updates would depend on the refused one and could never apply: close it.
            await connection.close(refusal.code, refusal.reason)
            return
        try:
            change, echo, reply = self._apply_admitted(handle, update, None if connection.is_peer else connection.grant)
        except MalformedMessage:
            # Yrs may have integrated part of an update it then refused; that part is in the
            # document now, so store it like the relay's own writes before closing the sender.
            self.pipeline.submit_local(handle)
            raise
        await self.pipeline.submit(handle, change, connection, echo=echo, reply=reply)

    def _apply_admitted(self, handle: CalendarHandle, update: bytes,
                        client: Grant | None) -> tuple[Change | None, bool, bytes | None]:
        """Apply an update the admission let through: from a client (its ``grant``) or a peer
        (None). A client's first content gets the home record first, its requests this relay's
        receipts and its changes audit entries, merged into the one change that is stored and
        forwarded. Returns (change, echo it to the sender, the entries to send the sender back).

        Raises:
            MalformedMessage: Yrs refused the update half way (see :meth:`Replica.apply`).
        """
        if client is not None and update[:1] != b"\x00" and handle.is_empty() \
                and not self.admission.brings_home_record(handle, update):
            # A client's first content: the home record goes first. Unless the content brings
            # the home's own record back (a home restored from an older backup): writing the
            # record again, a second Yjs item under the same signed key, would make every
            # replica's copy of the original look like an overwrite to this relay, and refused
            # forever. That content is taken once stored, as a peer's first content is.
            self.first_write(handle)
        receipts, audit = self.receipts, self.audit
        stamping = receipts is not None and client is not None and receipts.wanted(handle)
        if audit is not None:
            audit.watch(handle)  # before applying: a peer's update may bring its relay's entries
        auditing = audit is not None and client is not None
        with audit.capture(handle, client) if audit is not None and client is not None else contextlib.nullcontext():
            change = handle.replica.apply(update, origin=CLIENT_ORIGIN if stamping else None)
        echo, reply = False, None
        if stamping and change is not None:
            assert receipts is not None
            change, echo = receipts.stamp(handle, change)  # the request and its receipt travel together
        if auditing and change is not None:
            assert audit is not None and client is not None
            change, reply = audit.record(handle, client, change)  # so do a change and its entries
        return change, echo, reply

    async def client_edit(self, grant: Grant, name: CalendarId, operation: Callable[[Calendar], T], *,
                          actor: str) -> T:
        """Make a write as a terminal holding ``grant`` would, for the relay's own front ends
        (the FHIR facade): ``operation`` runs on a scratch copy of the calendar (writing as
        ``actor``), and the update it makes takes a client's path: judged by
        :meth:`Admission.check_update`, applied, stamped with a receipt, stored by the commit
        pipeline and forwarded, so the home decides it like any booking. Returns once stored.

        The copy is kept between writes (for the :data:`SCRATCH_CALENDARS` calendars written last)
        and brought up to date with what the replica gained since: a write to a 10,000-reservation
        calendar costs milliseconds, not the full-state copy (~0.2 s) a new one takes. Its writes carry
        this hub's own Yjs client id, which stays valid because nothing awaits between the edit and
        applying its update to the replica; a copy whose write was refused or failed is dropped.

        Raises:
            EditRefused: the update policy refused the write (nothing was applied).
            InvalidReservation, InvalidTransition, ReservationNotFound: from ``operation``.
            StorageError: the store failed for good.
        """
        if not grant.can_write or not grant.allows(name):
            raise EditRefused(f"this token may not write {name}")
        handle = await self.calendars.get(name)
        replica = handle.replica
        before = replica.state_vector()
        scratch = self._scratch_of(handle, actor)  # out of the cache: kept again only if the write goes through
        result = operation(scratch)
        update = scratch.doc.get_update(before)
        if update == b"\x00\x00":
            self._scratch[name] = scratch  # nothing new: the copy is still the replica's
            return result
        refusal = self.admission.check_update(Kind.TERMINAL, grant, handle, update, home_here=self.is_deciding(name))
        if refusal is not None:
            self.metrics.updates_dropped[refusal.metric or "refused"] += 1
            raise EditRefused(refusal.reason)
        self._scratch[name] = scratch
        while len(self._scratch) > SCRATCH_CALENDARS:
            self._scratch.popitem(last=False)
        self.metrics.updates_in += 1
        change, _echo, _reply = self._apply_admitted(handle, update, grant)  # as a client's, by the token
        target = replica.state_vector()
        await self.pipeline.submit(handle, change, None)
        await self.notice.wait_for(lambda: self.calendars.is_committed(name, target), 10.0)
        return result


SCRATCH_CALENDARS = 8  # client_edit copies kept (least recently written dropped first)


class EditRefused(AccordError):
    """A front end's write that the update policy (or the token) does not allow."""


def scan_prefixes(globs: list[str] | tuple[str, ...]) -> list[str] | None:
    """The name prefixes that cover ``globs`` if each is a literal name or a literal followed by
    one ``*`` (nested prefixes folded into the shorter); None if any glob needs a full scan."""
    prefixes = set()
    for glob in globs:
        literal = glob[:-1] if glob.endswith("*") else glob
        if not literal or any(ch in literal for ch in "*?["):
            return None
        prefixes.add(literal)
    return sorted(p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes))


def _remote(connection: Connection) -> str:
    address = connection.websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
