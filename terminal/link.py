"""The websocket link from a terminal to its relay: connect, sync, reconnect.

Theory of operation. :class:`Link` runs one background task. Each round it connects to the
relay's multiplexed endpoint (``/.accord/v1``, ``X-Accord-Role: terminal``, bearer token),
opens every calendar the terminal holds, then pumps bytes through a fresh engine
:class:`~accord.engine.session.Session` (the same sync rules the relay runs) until the
connection ends:

- the session answers the relay's STEP1 with STEP2 (what the relay misses, from the replica);
- STEP2 and UPDATE from the relay go to the terminal, which applies and stores them;
- ACKs go to the terminal, which marks the covered local changes as stored on the relay;
- local changes are queued with :meth:`Link.send_update` and written in order through the
  shared :class:`~accord.transport.Outbox`.

When the connection fails or ends, the shared reconnect loop
(:func:`~accord.transport.keep_connected`) waits (exponential backoff with jitter, capped)
and connects again; the new session's STEP1/STEP2 exchange carries everything either side
missed, so nothing is queued across sessions. A close with 4401/4403 (or an HTTP 401/403
handshake answer) puts the link in state ``refused``; it keeps retrying at the capped delay
because an operator may fix the token on the relay.

A ``wss://`` relay is verified against the system's CA store, or against ``ca_file`` only; a
certificate that fails verification is an unreachable relay whose ``last_error`` names the
problem (:func:`describe_failure`), retried like any other failure.

The link owns no data: it asks its :class:`LinkHandler` (the terminal) for state vectors and
diffs, and hands it what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI

from accord.engine.backoff import Backoff
from accord.engine.errors import CloseCode, RemoteProtocolError
from accord.engine.model import CalendarId
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES, EMPTY_UPDATE
from accord.engine.session import (
    AUTHORIZATION_HEADER,
    ROLE_HEADER,
    SYNC_PATH,
    TERMINAL_HEADER,
    Acknowledged,
    CalendarRefused,
    CalendarRequested,
    Event,
    RemoteState,
    Session,
    SyncCompleted,
    UpdateReceived,
    bearer,
)
from accord.transport import Outbox, client_tls_context, is_hostname_mismatch, keep_connected, tls_problem

log = logging.getLogger(__name__)

REFUSED_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN})
STABLE_SESSION_S = 5.0
__all__ = ["Backoff", "Link", "LinkHandler", "LinkState", "describe_failure", "endpoint_url"]


class LinkState(enum.StrEnum):
    """Where the link is: ``offline`` (waiting to retry or no relay configured), ``connecting``,
    ``online``, or ``refused`` (the relay rejected our credentials)."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    ONLINE = "online"
    REFUSED = "refused"


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

    async def link_relay_state(self, calendar: CalendarId, state_vector: bytes) -> None:
        """The relay's state vector for ``calendar`` (each session): it may hold less than it
        acknowledged before (a relay restored from an older copy)."""
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
    if not path.endswith(SYNC_PATH):
        path = path + SYNC_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class _Documents:
    """The terminal's replicas as the session sees them."""

    def __init__(self, handler: LinkHandler) -> None:
        self.handler = handler

    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.handler.link_state_vector(calendar)

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        diff = self.handler.link_diff(calendar, state_vector)
        return EMPTY_UPDATE if diff is None else diff


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
        max_message_bytes: the largest message accepted from the relay; what the terminal sends
            is cut into pieces of an eighth of it (keep it within 8x of the relay's limit).
        ca_file: for a ``wss://`` relay, trust only the CA certificates in this PEM file
            (default: the system's CA store); ignored for ``ws://``.

    Raises:
        ValueError: ``relay`` is not a ws:// or wss:// URL.
        AccordError: ``ca_file`` cannot be read.

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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ca_file: str | Path | None = None,
    ) -> None:
        self.url = endpoint_url(relay)
        self.tls: ssl.SSLContext | None = client_tls_context(ca_file) if self.url.startswith("wss://") else None
        self.handler = handler
        self.token = token
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff or Backoff()
        self.max_outbox = max_outbox
        self.max_message_bytes = max_message_bytes
        self.state = LinkState.OFFLINE
        self.last_error = ""
        self.refused_code: int | None = None
        self.attempts = 0  # connection attempts that have concluded (succeeded or failed)
        # Traffic over every session: messages and bytes each way, and the largest message received.
        self.messages_in = self.bytes_in = self.largest_in = 0
        self.messages_out = self.bytes_out = 0
        self.pulled: set[CalendarId] = set()  # calendars whose STEP2 arrived in this session
        self.refused_calendars: dict[CalendarId, str] = {}
        self._documents = _Documents(handler)
        self._session: Session | None = None
        self._outbox: Outbox | None = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background connect loop."""
        if self._task is None:
            self._task = asyncio.create_task(
                keep_connected(self._connect_once, self.backoff, wake=self._wake, stopping=lambda: self._closing,
                               on_failure=self._failed, stable_session_s=STABLE_SESSION_S),
                name=f"accord-link:{self.url}",
            )

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
        if self._session is not None and self.state is LinkState.ONLINE:
            self._session.open(calendar)
            self._flush()

    def send_update(self, calendar: CalendarId, update: bytes) -> None:
        """Queue a local change for the relay; a no-op offline (the next sync carries it)."""
        if self._session is not None and self.state is LinkState.ONLINE:
            self._session.send_update(calendar, update)
            self._flush()

    # ---- one session ---------------------------------------------------------------------------

    async def _connect_once(self) -> None:
        """One session, until the connection ends. Raises if it cannot connect or is refused."""
        self._set_state(LinkState.CONNECTING)
        try:
            await self._session_until_closed()
        finally:
            self._ws = None
            self._session = None
            self._outbox = None
            self.pulled = set()
            self.attempts += 1
            self._set_state(LinkState.OFFLINE)

    async def _session_until_closed(self) -> None:
        headers = {ROLE_HEADER: "terminal"}
        if self.name:
            headers[TERMINAL_HEADER] = self.name
        if self.token:
            headers[AUTHORIZATION_HEADER] = bearer(self.token)
        try:
            ws = await connect(self.url, additional_headers=headers, open_timeout=self.connect_timeout_s,
                               close_timeout=2.0, max_size=self.max_message_bytes, compression=None, ssl=self.tls)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                refusal = CloseCode.UNAUTHORIZED if status == 401 else CloseCode.FORBIDDEN
                raise _Refused(refusal, f"relay answered HTTP {status}: check --token") from None
            raise
        self._ws = ws
        self._session = session = Session(self._documents, max_message_bytes=self.max_message_bytes)
        self._outbox = outbox = Outbox(ws, max_messages=self.max_outbox, label="relay")
        self.refused_calendars = {}
        self.last_error = ""
        calendars = self.handler.link_calendars()
        for calendar in calendars:
            session.open(calendar)
        log.info("connected to relay", extra={"relay": self.url, "calendars": len(calendars)})
        self.refused_code = None
        self._set_state(LinkState.ONLINE)
        self._flush()
        writer = asyncio.create_task(outbox.run(), name="accord-link-writer")
        try:
            await self._read(ws, session)
        finally:
            writer.cancel()
            await asyncio.wait([writer])
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

    async def _read(self, ws: ClientConnection, session: Session) -> None:
        try:
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(CloseCode.INVALID_DATA, "text frames are not part of the accord protocol")
                    return
                self.messages_in += 1
                self.bytes_in += len(message)
                self.largest_in = max(self.largest_in, len(message))
                try:
                    session.receive(message)
                    while (event := session.next_event()) is not None:
                        await self._handle(event, session)
                        self._flush()
                except RemoteProtocolError as exc:  # garbage from the relay: drop this session, resync later
                    log.warning("relay sent a malformed message", extra={"error": str(exc)})
                    await ws.close(exc.close_code, exc.reason)
                    return
                self._flush()
        except ConnectionClosed:
            return

    async def _handle(self, event: Event, session: Session) -> None:
        match event:
            case CalendarRequested(calendar):
                if calendar in self.handler.link_calendars():
                    session.open(calendar)
                else:
                    session.refuse(calendar, CloseCode.NOT_FOUND, "this terminal does not hold that calendar")
            case RemoteState(calendar, state_vector):
                await self.handler.link_relay_state(calendar, state_vector)
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

    def _flush(self) -> None:
        session, outbox, ws = self._session, self._outbox, self._ws
        if session is None or outbox is None or ws is None:
            return
        messages = session.data_to_send()
        self.messages_out += len(messages)
        self.bytes_out += sum(len(m) for m in messages)
        if not outbox.send_all(messages):
            # A relay this slow gets a fresh session: the STEP1/STEP2 exchange resends what it lacks.
            log.warning("outbox full; reconnecting to resync", extra={"relay": self.url})
            if self._closer is None or self._closer.done():
                self._closer = asyncio.create_task(ws.close(CloseCode.TRY_AGAIN_LATER, "terminal outbox full"))

    def _failed(self, exc: BaseException) -> None:
        """A session could not start or was refused: record why (the loop retries after a backoff)."""
        if isinstance(exc, _Refused):
            self.refused_code = exc.code
            self.last_error = exc.reason
            log.info("relay refused the terminal", extra={"relay": self.url, "code": exc.code})
            self._set_state(LinkState.REFUSED)
            return
        self.last_error = describe_failure(exc)
        if isinstance(exc, OSError | TimeoutError | InvalidHandshake | InvalidURI | ConnectionClosed):
            log.info("relay unreachable", extra={"relay": self.url, "error": self.last_error})
        else:  # a bug or a local store failure; retried later, loudly
            log.error("link session failed", extra={"relay": self.url}, exc_info=exc)

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
    problem = tls_problem(exc)
    if problem is not None:
        if is_hostname_mismatch(exc):
            return f"{problem}; connect with a host name the relay's certificate names"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"{problem}; if the relay's certificate comes from a private CA, give that CA's "
                    "certificate with --ca-file (env ACCORD_CA_FILE)")
        return f"{problem}; is the relay serving TLS? a plaintext relay's URL starts with ws://"
    if isinstance(exc, InvalidMessage):
        return "no websocket answer from the relay; if it serves TLS, its URL starts with wss://"
    if isinstance(exc, InvalidURI):
        return "invalid relay URL"
    if isinstance(exc, TimeoutError):
        return "timed out connecting"
    if isinstance(exc, InvalidHandshake):
        return f"websocket handshake failed ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
