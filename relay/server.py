"""The relay: a websocket server for one channel that persists, serves stock Yjs clients and
terminals, peers with other relays, and decides bookings for the calendars it is home to.

Endpoints on one port:

- ``ws://HOST:PORT/<calendar>``: y-websocket compatible, one calendar per connection;
  token as ``?token=``.
- ``ws://HOST:PORT/.accord/v1``: accord's multiplexed framing for terminals
  (``X-Accord-Role: terminal``) and peer relays (``X-Accord-Role: peer``); token as
  ``Authorization: Bearer`` or ``?token=``.
- ``GET /healthz`` (200 when the store answers) and ``GET /metrics`` (Prometheus text).

Lifecycle: ``async with Relay(config) as relay:``; on exit it stops accepting, closes peers and
clients with 1001, commits what is queued and closes the store.
"""

from __future__ import annotations

import asyncio
import http
import logging
import urllib.parse
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pycrdt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from accord.engine.decisions import Decider, DecisionMade
from accord.engine.errors import AccordError, CloseCode, InvalidCalendarName, MalformedMessage, StorageError
from accord.engine.model import CalendarId, check_calendar_name
from accord.engine.protocol import (
    EMPTY_UPDATE,
    AwarenessEntry,
    covers,
    decode_awareness,
    decode_state_vector,
    encode_awareness,
)
from accord.engine.storage import CompactionPolicy, MemoryStorage, SqliteStorage, Storage
from accord.engine.sync import (
    Acknowledged,
    AwarenessQueried,
    AwarenessReceived,
    CalendarRefused,
    CalendarsAnnounced,
    Event,
    PeerSync,
    SyncCompleted,
    SyncRequested,
    UpdateReceived,
)
from accord.engine.update_keys import KeyIndex

from . import board
from .auth import Grant, Role, TokenBook
from .calendars import CalendarHandle, CalendarSet, CommitPipeline, matches
from .config import MEMORY_DB, RelayConfig
from .connection import Connection
from .metrics import Metrics
from .peering import SYNC_PATH, PeerLink

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Relay:
    """One relay process's server. See the module docstring."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tokens = TokenBook.load(config.tokens_path)
        if self.tokens.is_open and config.host not in LOOPBACK and not config.insecure_open:
            raise AccordError(
                f"refusing to listen on {config.host} without --tokens: anyone could read patient data; "
                "give --tokens FILE, or --insecure-open if this network is trusted"
            )
        self.connections: set[Connection] = set()
        self.peer_links: list[PeerLink] = []
        self.storage: Storage | None = None
        self.calendars: CalendarSet | None = None
        self.pipeline: CommitPipeline | None = None
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = config.port

    # ---- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` of this relay."""
        return f"ws://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Open the store, listen, start peer links."""
        db = self.config.db_path
        if str(db) == MEMORY_DB:
            self.storage = MemoryStorage()
        else:
            self.storage = await SqliteStorage.open(Path(db))
        self.calendars = CalendarSet(self.storage, on_loaded=self._calendar_loaded)
        self.pipeline = CommitPipeline(
            self.storage, self.metrics, compaction=CompactionPolicy(self.config.compact_rows),
            after_batch=self._after_batch,
        )
        self.pipeline.start()
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_message_bytes,
            compression=None,
            open_timeout=self.config.handshake_timeout_s,
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("relay listening", extra={"relay": self.config.relay_id, "url": self.url,
                                           "home": ",".join(self.config.home_globs) or "-",
                                           "auth": "open" if self.tokens.is_open else "tokens"})
        for url in self.config.peers:
            link = PeerLink(self, url)
            link.start()
            self.peer_links.append(link)
        self._spawn(self._unload_idle_loop(), "idle-unloader")

    async def stop(self) -> None:
        """Stop accepting, close peers and clients with 1001, flush and close the store."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        for link in self.peer_links:
            await link.close()
        closing = [c.websocket.close(CloseCode.GOING_AWAY, "relay shutting down") for c in list(self.connections)]
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.storage is not None:
            await self.storage.close()
        log.info("relay stopped", extra={"relay": self.config.relay_id})
        self._server = None

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload_idle_loop(self) -> None:
        interval = max(0.05, min(30.0, self.config.idle_unload_s / 4))
        while True:
            await asyncio.sleep(interval)
            if self.calendars is not None and self.pipeline is not None:
                self.calendars.unload_idle(self.config.idle_unload_s, self.pipeline.busy)

    # ---- HTTP -------------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path == "/healthz":
            healthy = await self._store_healthy()
            return self._respond(connection, http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE,
                                 "ok\n" if healthy else "store unavailable\n")
        if path == "/metrics":
            response = self._respond(connection, http.HTTPStatus.OK, self.render_metrics())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if request.headers.get("Upgrade", "").lower() != "websocket":
            page = await board.respond(self, connection, request, path)
            if page is not None:
                return page
            return self._respond(connection, http.HTTPStatus.NOT_FOUND, "not found: open a calendar over websocket\n")
        if len(self.connections) >= self.config.max_connections:
            self.metrics.refused["too_many_connections"] += 1
            return self._respond(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None

    @staticmethod
    def _respond(connection: ServerConnection, status: http.HTTPStatus, text: str) -> Response:
        response = connection.respond(status, text)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    async def _store_healthy(self) -> bool:
        if self.storage is None or (self.pipeline is not None and self.pipeline.failed is not None):
            return False
        try:
            await self.storage.get_meta("healthz")
        except (StorageError, OSError, ValueError) as exc:
            log.warning("health check failed", extra={"error": str(exc)})
            return False
        return True

    def render_metrics(self) -> str:
        """The current metrics in Prometheus text format."""
        roles = Counter(c.kind for c in self.connections)
        links = {link.url: link.state for link in self.peer_links}
        loaded = len(self.calendars.loaded) if self.calendars else 0
        return self.metrics.render(connections=roles, calendars_loaded=loaded, peer_links=links)

    # ---- connections ------------------------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        request = websocket.request
        assert request is not None
        split = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(split.query)
        token = _bearer(request.headers) or next(iter(query.get("token", [])), None)
        path = urllib.parse.unquote(split.path)
        role_header = request.headers.get("X-Accord-Role", "terminal").lower()
        wants_peer = path == SYNC_PATH and role_header == "peer"
        grant = self.tokens.check(token, wants_peer=wants_peer)
        if grant is None:
            await self._refuse(websocket, CloseCode.UNAUTHORIZED, "unauthorized", "missing or wrong token")
            return
        if path == SYNC_PATH:
            if wants_peer and grant.role is not Role.PEER:
                await self._refuse(websocket, CloseCode.FORBIDDEN, "forbidden", "this token may not peer")
                return
            kind = "peer" if wants_peer else str(grant.role)
            sync = PeerSync(max_message_bytes=self.config.max_message_bytes)
            peer_id = request.headers.get("X-Accord-Relay", "")[:64] if wants_peer else ""
        else:
            try:
                calendar = check_calendar_name(path.lstrip("/"))
            except InvalidCalendarName as exc:
                await self._refuse(websocket, CloseCode.NOT_FOUND, "bad_calendar", str(exc))
                return
            if not grant.allows(calendar):
                await self._refuse(websocket, CloseCode.FORBIDDEN, "forbidden", f"token may not open {calendar}")
                return
            kind = "read-only" if grant.role is Role.READ_ONLY else "yjs"
            sync = PeerSync(calendar, max_message_bytes=self.config.max_message_bytes)
            peer_id = ""
        connection = Connection(self, websocket, kind=kind, grant=grant, sync=sync, peer_id=peer_id,
                                outbox_messages=self.config.outbox_messages)
        log.info("connection opened", extra={"conn": connection.label, "remote": _remote(websocket)})
        await connection.run()

    async def _refuse(self, websocket: ServerConnection, code: CloseCode, metric: str, reason: str) -> None:
        self.metrics.refused[metric] += 1
        log.info("connection refused", extra={"code": int(code), "reason": reason, "remote": _remote(websocket)})
        await websocket.close(code, reason)

    async def connection_opened(self, connection: Connection) -> None:
        """First steps after the handshake: open the one calendar, or every calendar for a peer."""
        assert self.calendars is not None
        self.connections.add(connection)  # every connection, inbound or an outbound peer link, starts here
        if connection.sync.single is not None:
            handle = await self._open(connection, connection.sync.single)
            if handle is not None:
                connection.send(connection.sync.step1(handle.name, handle.replica.state_vector()))
        elif connection.is_peer:
            for name in await self.calendars.known():
                if matches(name, self.config.peer_globs):
                    handle = await self._open(connection, name)
                    if handle is not None:
                        connection.send(connection.sync.step1(name, handle.replica.state_vector()))

    def _relay_awareness(self, connection: Connection, calendar: CalendarId, payload: bytes) -> None:
        """Pass presence on to the calendar's other stock Yjs clients, remembering who announced
        which client ids so that they can be cleared when the connection goes away."""
        handle = self.calendars.loaded.get(calendar) if self.calendars else None
        if handle is None or connection not in handle.subscribers:
            return
        for entry in decode_awareness(payload):  # MalformedMessage closes the sender with 1007
            if entry.state == "null":
                connection.awareness.pop(entry.client, None)
            else:
                connection.awareness[entry.client] = entry.clock
        self._broadcast_awareness(handle, payload, exclude=connection)

    @staticmethod
    def _broadcast_awareness(handle: CalendarHandle, payload: bytes, exclude: Connection | None) -> None:
        for other in handle.subscribers:
            if other is not exclude and not other.is_peer and other.sync.single is not None:
                other.send(other.sync.awareness(handle.name, payload))

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if connection.awareness and connection.sync.single is not None and self.calendars is not None:
            # Like y-websocket's server: tell the others this client's presence is gone now,
            # rather than leaving a ghost until their awareness timeout.
            handle = self.calendars.loaded.get(connection.sync.single)
            if handle is not None:
                gone = [AwarenessEntry(client, clock + 1, "null") for client, clock in connection.awareness.items()]
                self._broadcast_awareness(handle, encode_awareness(gone), exclude=connection)
        if self.calendars is not None:
            for name in connection.calendars:
                handle = self.calendars.loaded.get(name)
                if handle is not None:
                    handle.subscribers.discard(connection)
        log.info("connection closed", extra={"conn": connection.label, "code": connection.websocket.close_code,
                                             "messages": connection.sync.messages_in})

    async def _open(self, connection: Connection, name: CalendarId) -> CalendarHandle | None:
        """Subscribe ``connection`` to ``name`` (loading it); None if refused."""
        assert self.calendars is not None
        if not connection.grant.allows(name) or (connection.is_peer and not matches(name, self.config.peer_globs)):
            self.metrics.refused["forbidden_calendar"] += 1
            if connection.sync.single is None:
                connection.send(connection.sync.refuse(name, CloseCode.FORBIDDEN, f"not allowed: {name}"))
                return None
            await connection.websocket.close(CloseCode.FORBIDDEN, f"token may not open {name}")
            return None
        try:
            handle = await self.calendars.get(name)
        except StorageError as exc:
            log.error("calendar unavailable", extra={"calendar": name, "error": str(exc)})
            if connection.sync.single is None:
                connection.send(connection.sync.refuse(name, CloseCode.INTERNAL_ERROR, "calendar store is damaged"))
            else:
                await connection.websocket.close(CloseCode.INTERNAL_ERROR, "calendar store is damaged")
            return None
        handle.subscribers.add(connection)
        connection.calendars.add(name)
        return handle

    async def _calendar_loaded(self, handle: CalendarHandle) -> None:
        """A calendar came into memory: decide its pending bookings if this relay is its home,
        make the peers part of it and open it on their links."""
        if matches(handle.name, self.config.home_globs):
            ttl = timedelta(seconds=self.config.hold_ttl_s) if self.config.hold_ttl_s else None
            handle.decider = Decider(handle.replica.calendar, self.config.relay_id, ttl)
            self._record_decisions(handle, handle.decider.decide_all_pending(datetime.now(UTC)))
        for connection in list(self.connections):
            if connection.is_peer and matches(handle.name, self.config.peer_globs) and connection.grant.allows(handle.name):
                handle.subscribers.add(connection)
                connection.calendars.add(handle.name)
                if not connection.sync.state(handle.name).opened:
                    connection.send(connection.sync.step1(handle.name, handle.replica.state_vector()))

    # ---- events -----------------------------------------------------------------------------------

    async def handle_event(self, connection: Connection, event: Event) -> None:
        """Act on one protocol event from ``connection``."""
        assert self.pipeline is not None
        match event:
            case UpdateReceived(calendar, update, _):
                await self._receive_update(connection, calendar, update)
            case SyncRequested(calendar, state_vector):
                handle = await self._subscribed(connection, calendar)
                if handle is None:
                    return
                connection.send(connection.sync.step2(calendar, handle.replica.diff(state_vector)))
                if not connection.sync.state(calendar).opened:
                    connection.send(connection.sync.step1(calendar, handle.replica.state_vector()))
            case AwarenessReceived(calendar, payload):
                self._relay_awareness(connection, calendar, payload)
            case CalendarsAnnounced(names):
                for name in names:
                    handle = await self._subscribed(connection, name)
                    if handle is not None and not connection.sync.state(name).opened:
                        connection.send(connection.sync.step1(name, handle.replica.state_vector()))
            case CalendarRefused(calendar, code, reason):
                log.warning("calendar refused by other side", extra={"conn": connection.label, "calendar": calendar,
                                                                     "code": code, "reason": reason})
            case SyncCompleted() | Acknowledged() | AwarenessQueried():
                pass

    async def _receive_update(self, connection: Connection, calendar: CalendarId, update: bytes) -> None:
        """Check, apply and queue one update for commit (then forward and acknowledge)."""
        assert self.pipeline is not None
        handle = await self._subscribed(connection, calendar)
        if handle is None:
            return
        self.metrics.updates_in += 1
        if update == EMPTY_UPDATE:  # an empty sync reply: nothing to check or apply; still acknowledged
            if connection.wants_acks:
                await self.pipeline.submit(handle, None, connection)
            return
        if not connection.grant.can_write:
            if not self._is_redundant(handle, update):
                self.metrics.updates_dropped["read_only"] += 1
                log.warning("write from read-only token dropped", extra={"conn": connection.label, "calendar": calendar})
                await connection.websocket.close(CloseCode.FORBIDDEN, "read-only token: writes are not accepted")
            return  # a read-only connection never gets anything applied
        if not connection.is_peer and self._forges_decision(handle, update):
            self.metrics.updates_dropped["forged_decision"] += 1
            log.warning("update writing decision fields dropped; only the home relay decides",
                        extra={"conn": connection.label, "calendar": calendar})
            # Its later updates would depend on the dropped one and could never apply: close it.
            await connection.websocket.close(CloseCode.FORBIDDEN, "only the home relay writes decisions")
            return
        try:
            change = handle.replica.apply(update)
        except MalformedMessage:
            # Yrs may have integrated part of an update it then refused; that part is in the
            # document now, so store it like the relay's own writes before closing the sender.
            self.pipeline.submit_local(handle)
            raise
        await self.pipeline.submit(handle, change, connection)

    async def _subscribed(self, connection: Connection, calendar: CalendarId) -> CalendarHandle | None:
        assert self.calendars is not None
        handle = self.calendars.loaded.get(calendar)
        if handle is not None and connection in handle.subscribers:
            return handle
        return await self._open(connection, calendar)

    @staticmethod
    def _is_redundant(handle: CalendarHandle, update: bytes) -> bool:
        """True if ``update`` adds no operation the calendar lacks (a read-only client's sync reply).

        Read-only connections never get anything applied; this only decides whether to close them.
        """
        try:
            theirs = decode_state_vector(pycrdt.get_state(update))
        except (ValueError, AccordError):
            return False
        return covers(handle.replica.clocks(), theirs)

    @staticmethod
    def _forges_decision(handle: CalendarHandle, update: bytes) -> bool:
        """True if a client update would write keys only the home relay may write."""
        if handle.key_index is None:
            handle.key_index = KeyIndex.from_update(handle.replica.full_state())
        # An update the decoder cannot read exactly as Yrs would raises MalformedMessage: the
        # connection is closed with 1007 rather than applying bytes nobody checked.
        index = handle.key_index
        return index.might_write_protected(update) and index.writes_protected(update)

    def _after_batch(self, handles: list[CalendarHandle]) -> None:
        """After each commit: as home, decide the requests that just became durable here."""
        now = datetime.now(UTC)
        for handle in handles:
            if handle.decider is not None:
                self._record_decisions(handle, handle.decider.decide_queued(now))

    def _record_decisions(self, handle: CalendarHandle, made: list[DecisionMade]) -> None:
        for decision in made:
            self.metrics.decisions[str(decision.outcome)] += 1
            log.info("booking decided", extra={"calendar": handle.name, "reservation": decision.reservation_id,
                                               "outcome": str(decision.outcome), "reason": decision.reason or "-",
                                               "conflict_with": decision.conflict_with or "-"})
        assert self.pipeline is not None
        self.pipeline.submit_local(handle)  # decisions (and the home marker) are stored, then forwarded


def _bearer(headers: Headers) -> str | None:
    value = headers.get("Authorization", "")
    if value.lower().startswith("bearer "):
        return value[7:].strip() or None
    return None


def _remote(websocket: ServerConnection) -> str:
    address = websocket.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


__all__ = ["Grant", "Relay", "RelayConfig"]
