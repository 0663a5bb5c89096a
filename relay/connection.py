"""One websocket connection to the relay: a reader, a bounded outbox and a writer.

The pump stays short; protocol decisions are in :mod:`accord.engine.sync` and what to do with
each event is in :meth:`Relay.handle_event`. The writer takes everything queued at once and
merges consecutive updates of one calendar into a single message (``pycrdt.merge_updates``),
so a busy connection costs one websocket frame per batch, not one per update; an idle one
still gets each update immediately. A full outbox means a slow consumer: it is
closed with 1013 (TRY_AGAIN_LATER) and resyncs when it comes back; nothing is dropped
silently. Bad input closes this connection with the protocol error's code; it never reaches
the document or the store.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pycrdt
from websockets.asyncio.connection import Connection as WebSocket
from websockets.exceptions import ConnectionClosed

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
        self.outbox: asyncio.Queue[bytes | _Update] = asyncio.Queue(maxsize=outbox_messages)
        self.calendars: set[CalendarId] = set()
        self._closing: asyncio.Task[None] | None = None

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
        self._queue(data, len(data))

    def send_update(self, calendar: CalendarId, update: bytes, framed: bytes) -> None:
        """Queue an update (``framed`` is it already encoded for this connection's framing); the
        writer may merge it with the calendar's next queued updates."""
        self._queue(_Update(calendar, update, framed), len(framed))

    def _queue(self, item: bytes | _Update, size: int) -> None:
        if self._closing is not None:
            return
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.relay.metrics.updates_dropped["slow_consumer"] += 1
            log.warning("slow consumer disconnected", extra={"conn": self.label, "queued": self.outbox.qsize()})
            self.close_soon(CloseCode.TRY_AGAIN_LATER, "outbox full: reconnect to resync")
            return
        self.relay.metrics.bytes_out += size

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
                while len(batch) < MAX_BATCH and not self.outbox.empty():
                    batch.append(self.outbox.get_nowait())
                for data in self._coalesce(batch):
                    await self.websocket.send(data)
        except ConnectionClosed:
            return

    def _coalesce(self, batch: list[bytes | _Update]) -> list[bytes]:
        """Messages to send for ``batch``, in order, with runs of one calendar's updates merged."""
        out: list[bytes] = []
        run: list[_Update] = []

        def flush() -> None:
            if len(run) == 1:
                out.append(run[0].framed)
            elif run:
                merged = pycrdt.merge_updates(*(item.update for item in run))
                out.append(self.sync.update(run[0].calendar, merged))
            run.clear()

        for item in batch:
            if isinstance(item, _Update):
                if run and run[0].calendar != item.calendar:
                    flush()
                run.append(item)
            else:
                flush()
                out.append(item)
        flush()
        return out


@dataclass(frozen=True, slots=True)
class _Update:
    """A queued update, kept apart from other messages so that the writer can merge runs of them."""

    calendar: CalendarId
    update: bytes
    framed: bytes
