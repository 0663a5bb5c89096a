"""One websocket connection to the relay: a sync session, an outbox and a reader.

The pump stays short; every protocol rule is in :class:`~accord.engine.session.Session` and
what to do with each event is the :class:`ConnectionHandler`'s (the relay's
:class:`~accord.relay.hub.Hub`). A full outbox means a slow consumer: it is closed with 1013
(TRY_AGAIN_LATER) and resyncs when it comes back; nothing is dropped silently. Bad input closes
this connection with the protocol error's code; it never reaches the document or the store.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from typing import Protocol

from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed

from accord.engine.errors import CloseCode, RemoteProtocolError
from accord.engine.model import CalendarId
from accord.engine.session import AnswerPending, Event, Framing, Session
from accord.engine.update_pieces import split_update
from accord.transport import Outbox

from .auth import Grant
from .metrics import Metrics

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class Kind(enum.StrEnum):
    """Who is on the other end (the metrics label)."""

    TERMINAL = "terminal"  # also an admin token's connection (a terminal with more rights)
    PEER = "peer"
    READ_ONLY = "read-only"
    YJS = "yjs"


class ConnectionHandler(Protocol):
    """What a connection reports to (the relay's hub)."""

    async def connection_opened(self, connection: Connection) -> None:
        """After the handshake, before the first message is read."""
        ...

    async def connection_event(self, connection: Connection, event: Event) -> None:
        """One event of the connection's session, in order."""
        ...

    def connection_closed(self, connection: Connection) -> None:
        """The connection ended (whoever closed it)."""
        ...


class Connection:
    """A connected terminal, peer relay, read-only viewer or stock Yjs client."""

    def __init__(self, websocket: WebSocket, session: Session, *, kind: Kind, grant: Grant, metrics: Metrics,
                 peer_id: str = "", outbox_messages: int = 4096, token: str | None = None,
                 inbound: bool = True) -> None:
        self.id = next(_ids)
        self.websocket = websocket
        self.session = session
        self.kind = kind
        self.grant = grant
        self.token = token  # what it presented: re-checked when the token file reloads
        self.inbound = inbound  # False for this relay's own outbound peer links
        self.metrics = metrics
        self.peer_id = peer_id
        self.outbox = Outbox(websocket, max_messages=outbox_messages, label=self.label)
        self._closing: asyncio.Task[None] | None = None
        self._held: list[bytes] | None = None  # messages waiting behind a sync answer being cut

    @property
    def is_peer(self) -> bool:
        return self.kind is Kind.PEER

    @property
    def is_stock_yjs(self) -> bool:
        """A y-websocket client (one calendar, no ACKs)."""
        return self.session.framing is Framing.SINGLE

    @property
    def label(self) -> str:
        return f"{self.kind}#{self.id}" + (f"({self.peer_id})" if self.peer_id else "")

    def calendars(self) -> list[CalendarId]:
        """The calendars this connection is subscribed to."""
        return self.session.served()

    def send(self, data: bytes) -> None:
        """Queue a message for this connection; a full outbox closes it as a slow consumer.
        While a large sync answer is being cut, messages wait behind it, in order."""
        if self._closing is not None:
            return
        held = self._held
        if held is not None:
            if len(held) < self.outbox.queue.maxsize:
                held.append(data)
                return
            self._held = None  # as slow as a full outbox: the same end
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "outbox full: reconnect to resync")
            return
        if self.outbox.send(data):
            self.metrics.bytes_out += len(data)
            return
        self._slow_consumer()

    def send_all(self, messages: list[bytes]) -> None:
        """:meth:`send` each of ``messages``, in order, with one socket write when the
        connection is keeping up (a batch of forwarded updates)."""
        if len(messages) == 1 or self._held is not None or self._closing is not None:
            for data in messages:
                self.send(data)
            return
        if self.outbox.send_all(messages):
            self.metrics.bytes_out += sum(len(data) for data in messages)
            return
        self._slow_consumer()

    def _slow_consumer(self) -> None:
        self.metrics.updates_dropped["slow_consumer"] += 1
        log.warning("slow consumer disconnected", extra={"conn": self.label, "queued": self.outbox.queue.qsize()})
        self.close_soon(CloseCode.TRY_AGAIN_LATER, "outbox full: reconnect to resync")

    async def _answer(self, pending: AnswerPending) -> None:
        """Cut a large sync answer in a worker thread (pure Python over bytes: the event loop
        keeps serving everyone else meanwhile), then send it before whatever was queued for this
        connection in between. This connection's own reads wait (TCP back-pressure)."""
        self.flush()  # what came before the answer goes before it
        self._held = []
        try:
            pieces = await asyncio.to_thread(split_update, pending.diff, self.session.piece_bytes)
        finally:
            held, self._held = self._held, None
        for frame in self.session.answer_frames(pending.calendar, pieces, pending.state_vector):
            self.send(frame)
        for data in held or ():
            self.send(data)
        self.flush()

    def flush(self) -> None:
        """Send what the session has queued."""
        for data in self.session.data_to_send():
            self.send(data)

    def acknowledge(self, calendar: CalendarId, state_vector: bytes) -> None:
        """Everything from this connection up to ``state_vector`` is durable (the session decides
        whether the other side hears of it)."""
        self.session.stored(calendar, state_vector)
        self.flush()

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close from synchronous code (e.g. the commit pipeline)."""
        if self._closing is None:
            self._closing = asyncio.create_task(self.websocket.close(code, reason))

    async def close(self, code: CloseCode, reason: str) -> None:
        """Close now (waits for the closing handshake)."""
        self.close_soon(code, reason)
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def run(self, handler: ConnectionHandler) -> None:
        """Serve until the connection ends; always returns normally."""
        writer = asyncio.create_task(self.outbox.run(), name=f"writer:{self.label}")
        try:
            await handler.connection_opened(self)
            self.flush()
            async for message in self.websocket:
                if isinstance(message, str):
                    await self.close(CloseCode.INVALID_DATA, "text frames are not accepted; send binary")
                    break
                self.metrics.bytes_in += len(message)
                try:
                    self.session.receive(message)
                    while (event := self.session.next_event()) is not None:
                        if isinstance(event, AnswerPending):
                            await self._answer(event)
                            continue
                        await handler.connection_event(self, event)
                        self.flush()
                except RemoteProtocolError as exc:
                    self.metrics.refused[f"protocol_{int(exc.close_code)}"] += 1
                    log.warning("closing connection on bad input", extra={"conn": self.label, "reason": exc.reason})
                    await self.close(exc.close_code, exc.reason)
                    break
                self.flush()
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass
            if self._closing is not None:
                try:
                    await self._closing
                except Exception:  # the socket may already be gone
                    pass
            handler.connection_closed(self)
