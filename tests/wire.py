"""A minimal protocol client for relay tests: a Replica pumped over a real websocket.

It speaks the same protocol as a terminal (or, with ``calendar=``, as a stock y-websocket
client) but has no store and no reconnect, so relay tests stay independent of terminal/.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId
from accord.engine.protocol import covers
from accord.engine.replica import Replica
from accord.engine.session import (
    AUTHORIZATION_HEADER,
    ROLE_HEADER,
    SYNC_PATH,
    Acknowledged,
    CalendarRequested,
    Session,
    UpdateReceived,
    bearer,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class WireClient:
    """One connection, one or more calendars, one Replica per calendar."""

    def __init__(self, url: str, *, token: str | None = None, calendar: str | None = None, actor: str = "test",
                 role: str = "terminal", tls: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.tls = tls  # for wss:// relays (default for wss://: the system's CA store)
        self.token = token
        self.single = calendar
        self.actor = actor
        self.role = role
        self.session = Session(self, calendar=calendar)
        self.replicas: dict[str, Replica] = {}
        self.acked: dict[str, dict[int, int]] = {}
        self.ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.received_messages = 0

    async def __aenter__(self) -> WireClient:
        headers = {ROLE_HEADER: self.role}
        target = self.url + (f"/{self.single}" if self.single else SYNC_PATH)
        if self.token:
            if self.single:
                target += f"?token={self.token}"
            else:
                headers[AUTHORIZATION_HEADER] = bearer(self.token)
        tls: dict[str, Any] = {"ssl": self.tls} if self.tls is not None else {}
        self.ws = await connect(target, additional_headers=headers, max_size=None, compression=None, **tls)
        self._reader = asyncio.create_task(self._read())
        if self.single:
            await self.open(self.single)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    # Documents, for the session
    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.replica(calendar).state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.replica(calendar).diff(state_vector)

    def replica(self, calendar: str) -> Replica:
        if calendar not in self.replicas:
            self.replicas[calendar] = Replica(calendar, actor=self.actor)
        return self.replicas[calendar]

    async def open(self, calendar: str) -> Replica:
        replica = self.replica(calendar)
        self.session.open(calendar)
        await self._flush()
        return replica

    async def _flush(self) -> None:
        assert self.ws is not None
        for data in self.session.data_to_send():
            await self.ws.send(data)

    async def push(self, calendar: str) -> int:
        """Send local changes; return the number of bytes sent."""
        assert self.ws is not None
        sent = 0
        for change in self.replica(calendar).take_changes():
            data = self.session.update(calendar, change.update)
            sent += len(data)
            await self.ws.send(data)
        return sent

    async def book(self, calendar: str, resource: str = "room-1", hour: int = 9, minute: int = 0, **kw: Any) -> str:
        replica = self.replica(calendar)
        start = NOW.replace(hour=hour, minute=minute)
        reservation = replica.calendar.book(resource=resource, start=start, end=start + timedelta(minutes=15),
                                            patient=kw.pop("patient", "P-1"), now=NOW, **kw)
        await self.push(calendar)
        return reservation.id

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                if condition():
                    return
                await self.changed.wait()

    async def wait_synced(self, calendar: str, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: self.session.is_synced(calendar), timeout)

    def is_acked(self, calendar: str) -> bool:
        """True if the relay acknowledged every write of this client (other clients' updates that
        the relay forwarded are durable there already)."""
        replica = self.replica(calendar)
        client_id = replica.doc.client_id
        return covers(self.acked.get(calendar, {}), {client_id: replica.clocks().get(client_id, 0)})

    async def wait_acked(self, calendar: str, timeout: float = 10.0) -> None:
        """Wait until :meth:`is_acked`."""
        await self.wait_for(lambda: self.is_acked(calendar), timeout)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                self.received_messages += 1
                self.session.receive(message)
                while (event := self.session.next_event()) is not None:
                    if isinstance(event, CalendarRequested):
                        if event.calendar in self.replicas:
                            self.session.open(event.calendar)
                        else:
                            self.session.refuse(event.calendar, CloseCode.NOT_FOUND, "not open on this client")
                    elif isinstance(event, UpdateReceived):
                        self.replica(event.calendar).apply(event.update, origin="relay")
                    elif isinstance(event, Acknowledged):
                        self.acked[event.calendar] = event.clocks
                await self._flush()
                self.changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self.changed.set()

    @property
    def close_code(self) -> int | None:
        return None if self.ws is None else self.ws.close_code

    @property
    def close_reason(self) -> str | None:
        return None if self.ws is None else self.ws.close_reason


async def wait_for_any(clients: list[WireClient], condition: Callable[[], bool], timeout: float = 10.0,
                       each: Callable[[], None] | None = None) -> None:
    """Wait until ``condition()`` holds, re-checking (and running ``each``) whenever any client
    receives a message: for conditions that span several clients."""
    async with asyncio.timeout(timeout):
        while True:
            for client in clients:
                client.changed.clear()
            if each is not None:
                each()
            if condition():
                return
            waits = [asyncio.ensure_future(client.changed.wait()) for client in clients]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
