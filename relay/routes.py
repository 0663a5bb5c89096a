"""Plain HTTP on the relay's port: health, metrics, the board, and the connection limit.

websockets calls :meth:`Routes.process_request` for every request before the handshake; a
response ends the request there, None lets the websocket handshake go on. Routes get what
they show through explicit inputs (callables), never through the relay object.
"""

from __future__ import annotations

import http
import logging
import urllib.parse
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from accord.engine.model import CalendarId

from . import board
from .auth import TokenBook
from .metrics import Metrics
from .pipeline import Health

log = logging.getLogger(__name__)


class Routes:
    """The HTTP side of the relay.

    Args:
        tokens: who may see the board's calendar list.
        metrics: counters (refused connections are counted here).
        known_calendars: every calendar the relay holds (for the board's index).
        store_health: answers /healthz (503 with its detail while the store fails).
        warnings: lines /healthz adds (e.g. a --home calendar another relay decides).
        render_metrics: the Prometheus text for /metrics.
        open_connections: how many websocket connections are open now.
        max_connections: more are refused with 503.
    """

    def __init__(self, *, tokens: TokenBook, metrics: Metrics, known_calendars: Callable[[], Awaitable[list[CalendarId]]],
                 store_health: Callable[[], Awaitable[Health]], warnings: Callable[[], list[str]],
                 render_metrics: Callable[[], str],
                 open_connections: Callable[[], int], max_connections: int) -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.known_calendars = known_calendars
        self.store_health = store_health
        self.warnings = warnings
        self.render_metrics = render_metrics
        self.open_connections = open_connections
        self.max_connections = max_connections

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path == "/healthz":
            health = await self.store_health()
            notes = "".join(f"warning: {line}\n" for line in self.warnings())
            return respond(connection, http.HTTPStatus.OK if health.ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                           ("ok\n" if health.ok else f"store unavailable: {health.detail}\n") + notes)
        if path == "/metrics":
            response = respond(connection, http.HTTPStatus.OK, self.render_metrics())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if request.headers.get("Upgrade", "").lower() != "websocket":
            page = await board.respond(self.tokens, self.known_calendars, request, path)
            if page is not None:
                return page
            return respond(connection, http.HTTPStatus.NOT_FOUND, "not found: open a calendar over websocket\n")
        if self.open_connections() >= self.max_connections:
            self.metrics.refused["too_many_connections"] += 1
            return respond(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None


def respond(connection: ServerConnection, status: http.HTTPStatus, text: str) -> Response:
    """A plain-text answer with ``nosniff``."""
    response = connection.respond(status, text)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
