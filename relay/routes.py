"""Plain HTTP on the relay's port: health, metrics, the board, FHIR reads, and the connection limit.

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
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from accord.engine.model import CalendarId
from accord.engine.session import RELAY_HEADER, ROLE_HEADER, parse_bearer

from . import board
from .auth import TokenBook
from .fhir.http import HttpRequest, HttpResponse
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
        reach: answers the board's ``/status/<calendar>`` (see :class:`~accord.relay.board.HomeReach`).
        relay_id: named in the handshake answer to peers, so their links know whom they reach.
    """

    def __init__(self, *, tokens: TokenBook, metrics: Metrics, known_calendars: Callable[[], Awaitable[list[CalendarId]]],
                 store_health: Callable[[], Awaitable[Health]], warnings: Callable[[], list[str]],
                 render_metrics: Callable[[], str],
                 open_connections: Callable[[], int], max_connections: int,
                 reach: board.HomeReach | None = None, relay_id: str = "") -> None:
        self.tokens = tokens
        self.metrics = metrics
        self.known_calendars = known_calendars
        self.store_health = store_health
        self.warnings = warnings
        self.render_metrics = render_metrics
        self.open_connections = open_connections
        self.max_connections = max_connections
        self.reach = reach
        self.relay_id = relay_id
        self.fhir: Callable[[HttpRequest], Awaitable[HttpResponse]] | None = None  # the FHIR facade (reads)

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path == "/healthz":
            health = await self.store_health()
            # Anyone may ask whether the relay is up; the detail (store path, calendar names) needs a monitor token.
            detail = self._may_monitor(request)
            notes = "".join(f"warning: {line}\n" for line in self.warnings()) if detail else ""
            text = "ok\n" if health.ok else (f"store unavailable: {health.detail}\n" if detail else "store unavailable\n")
            return respond(connection, http.HTTPStatus.OK if health.ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                           text + notes)
        if path == "/metrics":
            if not self._may_monitor(request):
                self.metrics.refused["metrics_unauthorized"] += 1
                return respond(connection, http.HTTPStatus.UNAUTHORIZED,
                               "/metrics needs a monitor (or admin) token: Authorization: Bearer TOKEN\n")
            response = respond(connection, http.HTTPStatus.OK, self.render_metrics())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if (path == "/fhir" or path.startswith("/fhir/")) and self.fhir is not None:
            # websockets hands over body-less GETs only; writes go to --fhir-port (see relay/fhir/http.py).
            answer = await self.fhir(HttpRequest("GET", request.path, {k.lower(): v for k, v in request.headers.raw_items()}))
            headers = Headers({"Content-Length": str(len(answer.body)), "X-Content-Type-Options": "nosniff",
                               **answer.headers})
            return Response(answer.status, http.HTTPStatus(answer.status).phrase, headers, answer.body)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            page = await board.respond(self.tokens, self.known_calendars, request, path, self.reach)
            if page is not None:
                return page
            return respond(connection, http.HTTPStatus.NOT_FOUND, "not found: open a calendar over websocket\n")
        if self.open_connections() >= self.max_connections:
            self.metrics.refused["too_many_connections"] += 1
            return respond(connection, http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        return None


    def _may_monitor(self, request: Request) -> bool:
        """True on an open relay, or with a monitor or admin token (bearer header or ``?token=``)."""
        if self.tokens.is_open:
            return True
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        token = parse_bearer(request.headers.get("Authorization")) or next(iter(query.get("token", [])), None)
        grant = self.tokens.check(token)
        return grant is not None and grant.can_monitor

    def process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        """Name this relay in the handshake answer to a peer (the header peers send us too)."""
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS and self.relay_id \
                and request.headers.get(ROLE_HEADER, "").lower() == "peer":
            response.headers[RELAY_HEADER] = self.relay_id


def respond(connection: ServerConnection, status: http.HTTPStatus, text: str) -> Response:
    """A plain-text answer with ``nosniff``."""
    response = connection.respond(status, text)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
