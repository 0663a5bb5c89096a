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
again (a fresh state-vector exchange) when it next loads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from accord.engine.errors import CloseCode, MalformedMessage, StorageError
from accord.engine.model import CalendarId
from accord.engine.receipts import CLIENT_ORIGIN
from accord.engine.session import (
    AwarenessReceived,
    CalendarRefused,
    CalendarRequested,
    Event,
    NothingNew,
    Session,
    UpdateReceived,
)

from . import presence
from .admission import IGNORED, RESYNC, Admission, Admitted
from .auth import OPEN_PEER_GRANT, Grant
from .calendars import CalendarHandle, CalendarSet, matches
from .connection import Connection, Kind
from .metrics import Metrics
from .notice import Notice
from .pipeline import CommitPipeline
from .receipts import Receipts

log = logging.getLogger(__name__)


class Hub:
    """Connections, subscriptions and event handling (see the module docstring)."""

    def __init__(self, calendars: CalendarSet, pipeline: CommitPipeline, admission: Admission, metrics: Metrics,
                 *, notice: Notice, peer_globs: list[str], max_message_bytes: int, outbox_messages: int,
                 is_deciding: Callable[[str], bool] = lambda _calendar: False,
                 receipts: Receipts | None = None) -> None:
        self.is_deciding = is_deciding  # this relay decides the calendar (its recorded home)
        self.receipts = receipts
        self.calendars = calendars
        self.pipeline = pipeline
        self.admission = admission
        self.metrics = metrics
        self.notice = notice
        self.peer_globs = peer_globs
        self.max_message_bytes = max_message_bytes
        self.outbox_messages = outbox_messages
        self.connections: set[Connection] = set()

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
        await self._connection(websocket, verdict.kind, verdict.grant, verdict.calendar, verdict.peer_id).run(self)

    def peer_connection(self, websocket: ClientConnection, url: str) -> Connection:
        """Wrap an outbound peer link's websocket (the link runs it)."""
        return self._connection(websocket, Kind.PEER, OPEN_PEER_GRANT, None, url)

    def _connection(self, websocket: ServerConnection | ClientConnection, kind: Kind, grant: Grant,
                    calendar: CalendarId | None, peer_id: str) -> Connection:
        # ACKs go to terminals only: stock Yjs clients do not know them, relays do not read them.
        session = Session(self.calendars, calendar=calendar, send_acks=calendar is None and kind is not Kind.PEER,
                          max_message_bytes=self.max_message_bytes)
        return Connection(websocket, session, kind=kind, grant=grant, metrics=self.metrics, peer_id=peer_id,
                          outbox_messages=self.outbox_messages)

    # ---- ConnectionHandler ----------------------------------------------------------------------

    async def connection_opened(self, connection: Connection) -> None:
        """Open the one calendar of a y-websocket connection, or every shared calendar for a peer."""
        self.connections.add(connection)
        log.info("connection opened", extra={"conn": connection.label,
                                             "remote": _remote(connection)})
        self.notice.notify()
        if connection.session.single is not None:
            await self._open(connection, connection.session.single)
        elif connection.is_peer:
            for name in await self.calendars.known():
                if matches(name, self.peer_globs):
                    await self._open(connection, name)

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
                if handle is not None and connection in handle.subscribers:
                    presence.broadcast(handle, payload, sender=connection)
            case CalendarRefused(calendar, code, reason):
                log.warning("calendar refused by other side", extra={"conn": connection.label, "calendar": calendar,
                                                                     "code": code, "reason": reason})
            case _:
                pass  # SyncCompleted, Acknowledged, AwarenessQueried: nothing to do on a relay

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        presence.clear(connection, self.calendars.loaded)
        for name in connection.calendars():
            handle = self.calendars.loaded.get(name)
            if handle is not None:
                handle.subscribers.discard(connection)
        log.info("connection closed", extra={"conn": connection.label, "code": connection.websocket.close_code,
                                             "messages": connection.session.messages_in})
        self.notice.notify()

    # ---- calendar-set hooks ---------------------------------------------------------------------

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        """Make the peers part of a calendar that just loaded and open it on their links."""
        if not matches(handle.name, self.peer_globs):
            return
        for connection in list(self.connections):
            if connection.is_peer and connection.grant.allows(handle.name):
                self._subscribe(connection, handle)
                connection.flush()

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        for connection in handle.subscribers:
            connection.session.forget(handle.name)
        handle.subscribers.clear()

    # ---- subscriptions --------------------------------------------------------------------------

    async def _open(self, connection: Connection, name: CalendarId) -> CalendarHandle | None:
        """Subscribe ``connection`` to ``name`` (loading it); None if refused."""
        if not connection.grant.allows(name) or (connection.is_peer and not matches(name, self.peer_globs)):
            self.metrics.refused["forbidden_calendar"] += 1
            await self._refuse(connection, name, CloseCode.FORBIDDEN, f"not allowed: {name}")
            return None
        try:
            handle = await self.calendars.get(name)
        except StorageError as exc:
            log.error("calendar unavailable", extra={"calendar": name, "error": str(exc)})
            await self._refuse(connection, name, CloseCode.INTERNAL_ERROR, "calendar store is damaged")
            return None
        self._subscribe(connection, handle)
        return handle

    @staticmethod
    def _subscribe(connection: Connection, handle: CalendarHandle) -> None:
        handle.subscribers.add(connection)
        connection.session.open(handle.name)

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
        receipts = self.receipts
        stamping = receipts is not None and not connection.is_peer and receipts.wanted(handle)
        try:
            change = handle.replica.apply(update, origin=CLIENT_ORIGIN if stamping else None)
        except MalformedMessage:
            # Yrs may have integrated part of an update it then refused; that part is in the
            # document now, so store it like the relay's own writes before closing the sender.
            self.pipeline.submit_local(handle)
            raise
        echo = False
        if stamping and change is not None:
            assert receipts is not None
            change, echo = receipts.stamp(handle, change)  # the request and its receipt travel together
        await self.pipeline.submit(handle, change, connection, echo=echo)


def _remote(connection: Connection) -> str:
    address = connection.websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
