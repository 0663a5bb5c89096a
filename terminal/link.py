"""The websocket link from a terminal to its relay: connect, sync, reconnect.

Theory of operation. :class:`Link` runs one background task. Each round it connects to the
relay's multiplexed endpoint (``/.accord/v1``, ``X-Accord-Role: terminal``, bearer token),
opens every calendar the terminal holds with STEP1, then pumps bytes through a fresh
:class:`~accord.engine.sync.PeerSync` until the connection ends:

- the relay's STEP1 is answered with STEP2 (what the relay misses, from the replica);
- STEP2 and UPDATE from the relay go to the terminal, which applies and stores them;
- ACKs go to the terminal, which marks the covered local changes as stored on the relay;
- local changes are queued with :meth:`Link.send_update` and written in order by a writer task.

When the connection fails or ends, the link waits (exponential backoff with jitter, capped)
and connects again; the new session's STEP1/STEP2 exchange carries everything either side
missed, so nothing is queued across sessions. A close with 4401/4403 (or an HTTP 401/403
handshake answer) puts the link in state ``refused``; it keeps retrying at the capped delay
because an operator may fix the token on the relay.

The link owns no data: it asks its :class:`LinkHandler` (the terminal) for state vectors and
diffs, and hands it what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from accord.engine.errors import CloseCode, RemoteProtocolError
from accord.engine.model import CalendarId
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES
from accord.engine.sync import (
    Acknowledged,
    CalendarRefused,
    PeerSync,
    SyncCompleted,
    SyncRequested,
    UpdateReceived,
)

log = logging.getLogger(__name__)

ENDPOINT = "/.accord/v1"
REFUSED_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN})
STABLE_SESSION_S = 5.0


class LinkState(enum.StrEnum):
    """Where the link is: ``offline`` (waiting to retry or no relay configured), ``connecting``,
    ``online``, or ``refused`` (the relay rejected our credentials)."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``initial_s * factor**n`` capped at ``max_s``, minus up to ``jitter`` of it."""

    initial_s: float = 0.25
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5

    def delay_s(self, attempt: int) -> float:
        """The wait before reconnect number ``attempt`` (0-based), randomised so terminals spread out."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())


class LinkHandler(Protocol):
    """What the link needs from the terminal it serves."""

    def link_calendars(self) -> list[CalendarId]:
        """Calendars to open on (re)connect."""
        ...

    def link_state_vector(self, calendar: CalendarId) -> bytes:
        """The calendar's current state vector (for STEP1)."""
        ...

    def link_diff(self, calendar: CalendarId, state_vector: bytes) -> bytes | None:
        """What a replica at ``state_vector`` misses, or None if the calendar is not open here."""
        ...

    async def link_update(self, calendar: CalendarId, update: bytes) -> None:
        """Apply and store an update from the relay."""
        ...

    async def link_acknowledged(self, calendar: CalendarId, clocks: dict[int, int]) -> None:
        """The relay durably stored everything covered by ``clocks``."""
        ...

    async def link_pulled(self, calendar: CalendarId) -> None:
        """The first STEP2 for ``calendar`` on this connection arrived: we hold what the relay had."""
        ...

    def link_event(self) -> None:
        """Something observable changed (state, pulled calendars, refusals): wake waiters."""
        ...


def endpoint_url(relay: str) -> str:
    """The multiplexed endpoint of ``relay`` (``ws://host:port`` or a URL already ending in it).

    Raises:
        ValueError: not a ws:// or wss:// URL.
    """
    parts = urlsplit(relay.strip())
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"relay URL {relay!r} is invalid: write it like ws://127.0.0.1:8765")
    path = parts.path.rstrip("/")
    if not path.endswith(ENDPOINT):
        path = path + ENDPOINT
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class Link:
    """A self-healing connection to one relay.

    Args:
        relay: relay URL (``ws://host:port``); the multiplexed endpoint path is appended.
        handler: the terminal.
        token: bearer token, or None.
        name: this terminal's name (sent as ``X-Accord-Terminal`` for the relay's logs).
        connect_timeout_s: deadline for TCP + websocket handshake.
        backoff: reconnect delays.
        max_outbox: queued outgoing messages before the session is dropped and resynced.

    Call :meth:`start` once, :meth:`close` at the end.
    """

    def __init__(
        self,
        relay: str,
        handler: LinkHandler,
        *,
        token: str | None = None,
        name: str = "",
        connect_timeout_s: float = 2.0,
        backoff: Backoff | None = None,
        max_outbox: int = 10_000,
    ) -> None:
        self.url = endpoint_url(relay)
        self.handler = handler
        self.token = token
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff or Backoff()
        self.max_outbox = max_outbox
        self.state = LinkState.OFFLINE
        self.last_error = ""
        self.refused_code: int | None = None
        self.attempts = 0  # connection attempts that have concluded (succeeded or failed)
        self.pulled: set[CalendarId] = set()  # calendars whose STEP2 arrived in this session
        self.refused_calendars: dict[CalendarId, str] = {}
        self._sync: PeerSync | None = None
        self._outbox: asyncio.Queue[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background connect loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"accord-link:{self.url}")

    async def close(self, timeout_s: float = 2.0) -> None:
        """Close the connection (normal closure) and stop the loop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        if self._ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await self._ws.close(CloseCode.NORMAL, "terminal closing")
        self._task.cancel()
        await asyncio.wait([self._task], timeout=timeout_s)
        if self._closer is not None:
            self._closer.cancel()
            await asyncio.wait([self._closer], timeout=timeout_s)
        self._set_state(LinkState.OFFLINE)

    def reconnect_now(self) -> None:
        """Skip the current backoff wait (e.g. the app knows the network is back)."""
        self._wake.set()

    # ---- used by the terminal -----------------------------------------------------------------

    def open_calendar(self, calendar: CalendarId, state_vector: bytes) -> None:
        """Ask the relay for ``calendar`` now (if online); otherwise it is opened on connect."""
        if self._sync is not None and self.state is LinkState.ONLINE:
            self._enqueue(self._sync.step1(calendar, state_vector))

    def send_update(self, calendar: CalendarId, update: bytes) -> None:
        """Queue a local change for the relay; a no-op offline (the next sync carries it)."""
        if self._sync is not None and self.state is LinkState.ONLINE:
            self._enqueue(self._sync.update(calendar, update))

    # ---- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closing:
            self._set_state(LinkState.CONNECTING)
            refused = False
            started = loop.time()
            try:
                await self._connect_once()
                # A session that lasted resets the backoff; one that was dropped at once does not.
                failures = 0 if loop.time() - started >= STABLE_SESSION_S else failures + 1
            except _Refused as exc:
                refused = True
                failures += 1
                self.refused_code = exc.code
                self.last_error = exc.reason
                log.info("relay refused the terminal", extra={"relay": self.url, "code": exc.code})
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                failures += 1
                self.last_error = describe_failure(exc)
                log.info("relay unreachable", extra={"relay": self.url, "error": self.last_error})
            except Exception as exc:  # top of the task: a bug or a local store failure; retry later, loudly
                failures += 1
                self.last_error = describe_failure(exc)
                log.exception("link session failed", extra={"relay": self.url})
            finally:
                self._ws = None
                self._sync = None
                self._outbox = None
                self.pulled = set()
                self.attempts += 1
            self._set_state(LinkState.REFUSED if refused else LinkState.OFFLINE)
            if self._closing:
                break
            delay_s = self.backoff.delay_s(max(0, failures - 1))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await self._wake.wait()

    async def _connect_once(self) -> None:
        """One session, until the connection ends. Raises if it cannot connect or is refused."""
        headers = {"X-Accord-Role": "terminal"}
        if self.name:
            headers["X-Accord-Terminal"] = self.name
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.connect_timeout_s,
                close_timeout=2.0,
                max_size=DEFAULT_MAX_MESSAGE_BYTES,
                compression=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                refusal = CloseCode.UNAUTHORIZED if status == 401 else CloseCode.FORBIDDEN
                raise _Refused(refusal, f"relay answered HTTP {status}: check --token") from None
            raise
        self._ws = ws
        self._sync = sync = PeerSync()
        self._outbox = outbox = asyncio.Queue[bytes](maxsize=self.max_outbox)
        self.refused_calendars = {}
        self.last_error = ""
        calendars = self.handler.link_calendars()
        for calendar in calendars:
            outbox.put_nowait(sync.step1(calendar, self.handler.link_state_vector(calendar)))
        log.info("connected to relay", extra={"relay": self.url, "calendars": len(calendars)})
        self.refused_code = None
        self._set_state(LinkState.ONLINE)
        writer = asyncio.create_task(self._write(ws, outbox), name="accord-link-writer")
        try:
            await self._read(ws, sync, outbox)
        finally:
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled() and writer.exception() is not None:
                log.debug("link writer ended", extra={"error": repr(writer.exception())})
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close()
        received = ws.protocol.close_rcvd
        code = int(received.code) if received is not None else None
        reason = received.reason if received is not None else ""
        log.info("disconnected from relay", extra={"relay": self.url, "code": code})
        if code is not None and code in REFUSED_CODES:
            raise _Refused(code, reason or "refused by the relay: check --token and the calendar name")
        self.last_error = f"connection closed ({code or 'no close frame'}{': ' + reason if reason else ''})"

    async def _read(self, ws: ClientConnection, sync: PeerSync, outbox: asyncio.Queue[bytes]) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(CloseCode.INVALID_DATA, "text frames are not part of the accord protocol")
                    return
                try:
                    for event in sync.receive(message):
                        await self._handle(event, sync)
                except RemoteProtocolError as exc:  # garbage from the relay: drop this session, resync later
                    log.warning("relay sent a malformed message", extra={"error": str(exc)})
                    await ws.close(exc.close_code, exc.reason)
                    return
        except ConnectionClosed:
            return

    async def _handle(self, event: object, sync: PeerSync) -> None:
        match event:
            case SyncRequested(calendar, state_vector):
                diff = self.handler.link_diff(calendar, state_vector)
                if diff is not None:
                    self._enqueue(sync.step2(calendar, diff))
            case UpdateReceived(calendar, update, _):
                await self.handler.link_update(calendar, update)
            case SyncCompleted(calendar):
                self.pulled.add(calendar)
                await self.handler.link_pulled(calendar)
                self.handler.link_event()
            case Acknowledged(calendar, _, clocks):
                await self.handler.link_acknowledged(calendar, clocks)
            case CalendarRefused(calendar, code, reason):
                log.warning("relay refused a calendar", extra={"calendar": calendar, "code": code})
                self.refused_calendars[calendar] = reason or f"refused with code {code}"
                self.handler.link_event()
            case _:
                log.debug("ignored message from relay", extra={"kind": type(event).__name__})

    async def _write(self, ws: ClientConnection, outbox: asyncio.Queue[bytes]) -> None:
        while True:
            data = await outbox.get()
            await ws.send(data)

    def _enqueue(self, data: bytes) -> None:
        outbox, ws = self._outbox, self._ws
        if outbox is None or ws is None:
            return
        try:
            outbox.put_nowait(data)
        except asyncio.QueueFull:
            # A relay this slow gets a fresh session: the STEP1/STEP2 exchange resends what it lacks.
            log.warning("outbox full; reconnecting to resync", extra={"relay": self.url})
            if self._closer is None or self._closer.done():
                self._closer = asyncio.create_task(ws.close(CloseCode.TRY_AGAIN_LATER, "terminal outbox full"))

    def _set_state(self, state: LinkState) -> None:
        if state is not self.state:
            self.state = state
            self.handler.link_event()


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def describe_failure(exc: BaseException) -> str:
    """One line for a failed connection attempt, without secrets."""
    if isinstance(exc, InvalidStatus):
        return f"relay answered HTTP {exc.response.status_code} instead of a websocket"
    if isinstance(exc, InvalidURI):
        return "invalid relay URL"
    if isinstance(exc, TimeoutError):
        return "timed out connecting"
    if isinstance(exc, InvalidHandshake):
        return f"websocket handshake failed ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
