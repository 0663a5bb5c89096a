"""One websocket connection to the relay: a reader, a bounded outbox and a writer.

The pump stays short; protocol decisions are in :mod:`accord.engine.sync` and what to do with
each event is in :meth:`Relay.handle_event`. The writer takes everything queued at once and
writes it with one socket write, so a busy connection costs one system call per batch, not
one per update; an idle one still gets each update immediately. (Merging queued updates with
``pycrdt.merge_updates`` was measured too: it cost more relay CPU than it saved, because
frames are encoded once per broadcast and shared, while a merge is per connection.)
A full outbox means a slow consumer: it is
closed with 1013 (TRY_AGAIN_LATER) and resyncs when it comes back; nothing is dropped
silently. Bad input closes this connection with the protocol error's code; it never reaches
the document or the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from accord.engine.errors import CloseCode, RemoteProtocolError
from accord.engine.model import CalendarId
from accord.engine.sync import PeerSync

from .auth import Grant

if TYPE_CHECKING:
    from .server import Relay

log = logging.getLogger(__name__)
_ids = itertools.count(1)
MAX_BATCH = 256  # messages taken from the outbox per write round


class Connection:
    """A connected terminal, peer relay, read-only viewer or stock Yjs client.

    ``kind`` is one of ``terminal``, ``peer``, ``read-only``, ``yjs`` (metrics label).
    """

    def __init__(self, relay: Relay, websocket: WebSocket, *, kind: str, grant: Grant, sync: PeerSync,
                 peer_id: str = "", outbox_messages: int = 4096) -> None:
        self.id = next(_ids)
        self.relay = relay
        self.websocket = websocket
        self.kind = kind
        self.grant = grant
        self.sync = sync
        self.peer_id = peer_id
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue(maxsize=outbox_messages)
        self.calendars: set[CalendarId] = set()
        self._closing: asyncio.Task[None] | None = None
        self._writing = False  # the writer task holds a batch (keeps the order of direct writes)
        self.awareness: dict[int, int] = {}  # presence client ids this connection announced -> clock

    @property
    def is_peer(self) -> bool:
        return self.kind == "peer"

    @property
    def wants_acks(self) -> bool:
        """Stock Yjs clients do not know ACK messages; everyone on the multiplexed endpoint does."""
        return self.sync.single is None

    @property
    def label(self) -> str:
        return f"{self.kind}#{self.id}" + (f"({self.peer_id})" if self.peer_id else "")

    def send(self, data: bytes) -> None:
        """Queue a message for this connection; a full outbox closes it as a slow consumer."""
        if self._closing is not None:
            return
        if not self._writing and self.outbox.empty() and self._write_now([data]):
            self.relay.metrics.bytes_out += len(data)
            return  # nothing queued before it: written at once, no writer task round trip
        try:
            self.outbox.put_nowait(data)
        except asyncio.QueueFull:
            self.relay.metrics.updates_dropped["slow_consumer"] += 1
            log.warning("slow consumer disconnected", extra={"conn": self.label, "queued": self.outbox.qsize()})
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "outbox full: reconnect to resync")
            return
        self.relay.metrics.bytes_out += len(data)

    def close_soon(self, code: int, reason: str) -> None:
        """Close from synchronous code (e.g. the commit pipeline)."""
        if self._closing is None:
            self._closing = asyncio.create_task(self.websocket.close(code, reason))

    def abort_internal(self, reason: str) -> None:
        self.close_soon(CloseCode.INTERNAL_ERROR, reason)

    async def run(self) -> None:
        """Serve until the connection ends; always returns normally."""
        writer = asyncio.create_task(self._write(), name=f"writer:{self.label}")
        try:
            await self.relay.connection_opened(self)
            async for message in self.websocket:
                if isinstance(message, str):
                    await self.websocket.close(CloseCode.INVALID_DATA, "text frames are not accepted; send binary")
                    break
                self.relay.metrics.bytes_in += len(message)
                try:
                    events = self.sync.receive(message)
                    for event in events:
                        await self.relay.handle_event(self, event)
                except RemoteProtocolError as exc:
                    self.relay.metrics.refused[f"protocol_{int(exc.close_code)}"] += 1
                    log.warning("closing connection on bad input", extra={"conn": self.label, "reason": exc.reason})
                    await self.websocket.close(exc.close_code, exc.reason)
                    break
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
            self.relay.connection_closed(self)

    async def _write(self) -> None:
        try:
            while True:
                batch = [await self.outbox.get()]
                self._writing = True
                while len(batch) < MAX_BATCH and not self.outbox.empty():
                    batch.append(self.outbox.get_nowait())
                await self._send_all(batch)
                self._writing = False
        except ConnectionClosed:
            return

    def _write_now(self, messages: list[bytes]) -> bool:
        """Frame and write ``messages`` with one socket write if the connection is plainly open
        and the transport is not pushing back; False means: go the slow, awaiting way.

        This is the pattern websockets documents for ``send_context`` (frame with the protocol
        object, then write what it has to send), without a context manager per message: that
        overhead measured about a quarter of the relay's CPU when each update goes to dozens
        of clients.
        """
        websocket = self.websocket
        if websocket.protocol.state is not State.OPEN or websocket.transport.is_closing() or websocket.paused:
            return False
        try:
            for data in messages:
                websocket.protocol.send_binary(data)
            websocket.transport.write(b"".join(websocket.protocol.data_to_send()))
        except Exception:  # an unexpected protocol state: let websockets' own send() report it
            log.debug("direct write failed; falling back", extra={"conn": self.label}, exc_info=True)
            return False
        return True

    async def _send_all(self, messages: list[bytes]) -> None:
        """Write a batch of messages, with one socket write when possible (see :meth:`_write_now`)."""
        if self._write_now(messages):
            return
        for data in messages:
            await self.websocket.send(data)
