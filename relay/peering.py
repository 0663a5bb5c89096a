"""Outbound links to other relays, kept up with exponential backoff and jitter.

A link is a multiplexed connection with role ``peer``. Once it is up, both sides open the
calendars they have loaded and exchange the stored state vectors of the rest in batches
(``STATES``, see :mod:`accord.relay.hub`); only calendars whose vectors differ are loaded and
synced, so after a partition only what the other side is missing crosses the link, and
calendars that did not change stay on disk. Updates then flow both ways as they
happen; the relay never sends an update back to the link it came from, and a relay that
already has an update does not forward it again, so chains and cycles converge without storms.
Relays do not acknowledge each other's updates (see :mod:`accord.engine.session`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from accord.engine.backoff import Backoff
from accord.engine.errors import CloseCode
from accord.engine.session import AUTHORIZATION_HEADER, RELAY_HEADER, ROLE_HEADER, SYNC_PATH, bearer
from accord.transport import client_tls_context, keep_connected, tls_problem

from .connection import Connection, ConnectionHandler

log = logging.getLogger(__name__)
REFUSED = (CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN)
CONNECTING_GRACE_S = 0.5  # on close, how long a link still connecting may take to finish (then it is cancelled)


class PeerLink:
    """Keeps one outbound link to ``url`` alive until :meth:`close`.

    Args:
        url: the other relay (``ws://host:port``).
        relay_id: this relay's id (sent for the other side's logs).
        token: presented as a bearer token, or None.
        backoff: reconnect delays.
        make_connection: wraps a fresh websocket into a peer :class:`Connection`.
        handler: where the connection reports (the hub).
        max_message_bytes, open_timeout_s: websocket limits.
        tls: how a ``wss://`` peer's certificate is verified (default: the system's CA store);
            unused for ``ws://``.
    """

    def __init__(self, url: str, *, relay_id: str, token: str | None, backoff: Backoff,
                 make_connection: Callable[[ClientConnection, str], Connection], handler: ConnectionHandler,
                 max_message_bytes: int, open_timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.tls = (tls or client_tls_context()) if self.url.startswith("wss://") else None
        self.headers = {ROLE_HEADER: "peer", RELAY_HEADER: relay_id}
        if token:
            self.headers[AUTHORIZATION_HEADER] = bearer(token)
        self.backoff = backoff
        self.make_connection = make_connection
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.open_timeout_s = open_timeout_s
        self.state = "down"
        self.remote_id = ""  # the relay id the other side names in its handshake answer ("" if it names none)
        self.down_since: datetime | None = None  # when the link last went down (None: it was never up)
        self.connects = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._connection: Connection | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(
            keep_connected(self._connect_once, self.backoff, wake=self._wake, stopping=lambda: self._stopping,
                           on_failure=self._failed),
            name=f"peer-link:{self.url}",
        )

    async def close(self) -> None:
        """Stop reconnecting and close the link with 1001 (GOING_AWAY). A connection still being
        opened is abandoned: a peer that accepts TCP and never answers (a hung host, a relay
        shutting down) would otherwise hold this relay's shutdown for the handshake timeout."""
        self._stopping = True
        self._wake.set()
        if self._connection is not None:
            await self._connection.close(CloseCode.GOING_AWAY, "relay shutting down")
        elif self._task is not None:
            # A handshake about to finish still closes its link with 1001 (_connect_once sees
            # _stopping); one that does not finish soon is given up.
            done, _ = await asyncio.wait({self._task}, timeout=CONNECTING_GRACE_S)
            if not done:
                self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _connect_once(self) -> None:
        async with connect(self.url + SYNC_PATH, additional_headers=self.headers, max_size=self.max_message_bytes,
                           open_timeout=self.open_timeout_s, compression=None, ssl=self.tls) as websocket:
            if self._stopping:  # closed while the handshake was under way
                await websocket.close(CloseCode.GOING_AWAY, "relay shutting down")
                return
            self.state = "up"
            self.remote_id = (websocket.response.headers.get(RELAY_HEADER) or "")[:64] if websocket.response else ""
            self.connects += 1
            self.failures = 0
            log.info("peer link up", extra={"peer": self.url, "connects": self.connects})
            self._connection = self.make_connection(websocket, self.url)
            try:
                await self._connection.run(self.handler)
            finally:
                self._connection = None
                self.state = "down"
                self.down_since = datetime.now(UTC)
            code = websocket.close_code
            log.info("peer link down", extra={"peer": self.url, "code": code})
            if code in REFUSED:
                reason = websocket.close_reason or ""
                # 4403 also closes a link whose update broke a rule: the reason says which
                hint = "; check --peer-token" if code == CloseCode.UNAUTHORIZED or "token" in reason else ""
                log.error(f"peer refused this relay{hint}", extra={"peer": self.url, "code": code, "reason": reason})

    def _failed(self, exc: BaseException) -> None:
        self.state = "down"
        if not isinstance(exc, OSError | WebSocketException | TimeoutError):
            log.error("peer link failed", extra={"peer": self.url}, exc_info=exc)
            return
        detail = f"HTTP {exc.response.status_code}" if isinstance(exc, InvalidStatus) else type(exc).__name__
        problem = tls_problem(exc)
        if problem is not None and self.failures % 10 == 0:  # an operator must act: an error, not a retry note
            log.error("peer link TLS handshake failed; check the peer's certificate and host name, or --peer-ca-file",
                      extra={"peer": self.url, "error": problem, "attempt": self.failures})
        elif problem is None and self.failures % 10 == 0:
            log.info("peer unreachable; retrying", extra={"peer": self.url, "error": detail, "attempt": self.failures})
        self.failures += 1
