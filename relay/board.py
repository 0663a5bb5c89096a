"""The live front-desk board: web pages the relay serves over plain HTTP on its own port.

Routes (GET only; websocket upgrades never reach this module, they go to the sync endpoint):

- ``/``: the calendars the visitor's token may open (token from ``?token=``), or a login form.
- ``/board/<calendar>``: the board page. The HTML holds no data: its script opens the calendar
  as a stock y-websocket client on ``ws://HOST:PORT/<calendar>?token=...``, keeps edits in the
  browser (IndexedDB) and writes the same document shape as :mod:`accord.engine.calendar`.
- ``/access/<calendar>?token=``: JSON ``{"calendar", "role", "can_write"}``, so the page can hide
  edit controls from read-only tokens; 401 (unknown token) or 403 (calendar outside its globs).
- ``/status/<calendar>?token=&client=``: JSON for the board's banner and link badge (see
  :class:`HomeReach`): whether this relay reaches the calendar's home, and how far the store
  holds the writes of Yjs client ``client`` (the page's own). Same token checks as ``/access``,
  then 404 ``no_calendar`` for a name this relay holds nothing for. No patient data.
- ``/static/<name>``: the page's HTML, CSS and JS, the vendored Yjs bundle (built by
  ``board/build.sh``), its licence texts and checksum file.

Every answer carries ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``
(tokens travel in query strings); HTML pages add a Content-Security-Policy that allows nothing
but this relay, so the page loads no script, style or connection from any other host.
"""

from __future__ import annotations

import email.utils
import html
import http
import importlib.resources
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from accord.engine.errors import InvalidCalendarName
from accord.engine.model import CalendarId, check_calendar_name, format_time
from accord.engine.protocol import decode_state_vector

if TYPE_CHECKING:
    from .auth import Grant, TokenBook
    from .calendars import CalendarSet

KnownCalendars = Callable[[], Awaitable[list[CalendarId]]]

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".sha256": "text/plain; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
BOARD_PAGE = "board.html"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file from ``relay/static``, read once at import."""

    name: str
    content_type: str
    body: bytes


def _load_static() -> dict[str, StaticFile]:
    """Every servable file in the package's ``static`` folder, by name (a whitelist: no path walking)."""
    files: dict[str, StaticFile] = {}
    folder = importlib.resources.files("accord.relay") / "static"
    if not folder.is_dir():
        return files
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = StaticFile(entry.name, CONTENT_TYPES[suffix], entry.read_bytes())
    return files


STATIC = _load_static()


class HomeReach:
    """Whether this relay reaches a calendar's home, and what its store holds, for the board.

    The board is a stock y-websocket client: the relay sends it no acknowledgement, and never
    echoes its own updates back, so nothing in the sync traffic says "stored". The page asks
    here instead: ``stored`` is the clock of the page's Yjs client in the calendar's state
    vector as last *committed* to this relay's store (:attr:`CalendarHandle.committed`, set only
    after the row is written), so ``stored >= clock after my write`` means the write is durable here.

    ``link`` says how decisions can reach this relay:

    - ``no-home``: no home records; no relay decides, every live request counts as booked;
    - ``home``: this relay is the calendar's home and decides it;
    - ``not-deciding``: the records name this relay, but it was not started with ``--home`` for it;
    - ``linked``: a peer link with the home relay is up right now (outbound links learn the
      other side's id from its handshake answer, inbound ones from the id they declare);
    - ``via-peers``: the home is not linked here but other relays are; decisions may come through them;
    - ``unreachable``: no link at all toward the home.

    ``since`` (when not ``home``/``linked``/``no-home``): the last time this relay had the home
    linked (its link's fall, or an earlier answer of this endpoint), else this relay's start.

    Args:
        relay_id: this relay's id.
        calendars: the relay's calendars (a known calendar is loaded to answer).
        is_deciding: whether this relay decides a calendar now.
        peers: relay id -> None if a peer link with it is up now, else when the last one went down.
        live_peers: how many peer connections are up.
        clock: the relay's UTC clock.
    """

    def __init__(self, relay_id: str, calendars: CalendarSet, *, is_deciding: Callable[[str], bool],
                 peers: Callable[[], dict[str, datetime | None]], live_peers: Callable[[], int],
                 clock: Callable[[], datetime]) -> None:
        self.relay_id = relay_id
        self.calendars = calendars
        self.is_deciding = is_deciding
        self.peers = peers
        self.live_peers = live_peers
        self.clock = clock
        self.started = clock()
        self._reached: dict[str, datetime] = {}  # home id -> when an answer last found it linked

    async def status(self, name: CalendarId, client: int | None) -> dict[str, object] | None:
        """The board's status of calendar ``name``, or None if this relay holds nothing for it."""
        if name not in self.calendars.loaded and name not in await self.calendars.known():
            return None
        handle = await self.calendars.get(name)
        home = handle.replica.calendar.home
        peers = self.peers()
        live = self.live_peers()
        now = self.clock()
        since: datetime | None = None
        if home is None:
            link = "no-home"
        elif self.is_deciding(name):
            link = "home"
        elif home == self.relay_id:
            link = "not-deciding"
            since = self.started
        elif home in peers and peers[home] is None:
            link = "linked"
            self._reached[home] = now
        else:
            link = "via-peers" if live else "unreachable"
            known = [t for t in (peers.get(home), self._reached.get(home)) if t is not None]
            since = max(known) if known else self.started
        stored = decode_state_vector(handle.committed).get(client, 0) if client is not None else None
        return {"calendar": name, "relay": self.relay_id, "home": home, "link": link,
                "since": format_time(since) if since is not None else None, "peers_up": live, "stored": stored}


async def respond(tokens: TokenBook, known: KnownCalendars, request: Request, path: str,
                  reach: HomeReach | None = None) -> Response | None:
    """Answer a plain HTTP GET for a board route, or None if ``path`` is not one.

    Args:
        tokens: who may see what.
        known: every calendar the relay holds (for the index page).
        request: the parsed request; the token is read from its ``?token=`` query parameter.
        path: the request path without the query string, still percent-encoded.
        reach: answers ``/status/<calendar>`` (404 without it).
    """
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    given = query.get("token")
    token = given[0] if given else None
    if path in ("/", "/index.html"):
        return await _index(tokens, known, token)
    if path.startswith("/static/"):
        found = STATIC.get(path.removeprefix("/static/"))
        if found is None:
            return _text(http.HTTPStatus.NOT_FOUND, "no such file\n")
        return _answer(http.HTTPStatus.OK, found.content_type, found.body, page=found.name.endswith(".html"))
    if path.startswith("/board/"):
        calendar = _calendar(path.removeprefix("/board/"))
        page = STATIC.get(BOARD_PAGE)
        if calendar is None or page is None:
            return _text(http.HTTPStatus.NOT_FOUND, "no such calendar name; names use A-Z a-z 0-9 . _ - /\n")
        return _answer(http.HTTPStatus.OK, page.content_type, page.body, page=True)
    if path.startswith("/access/"):
        calendar = _calendar(path.removeprefix("/access/"))
        if calendar is None:
            return _json(http.HTTPStatus.NOT_FOUND, {"error": "bad_calendar", "message": "no such calendar name"})
        return _access(tokens, calendar, token)
    if path.startswith("/status/") and reach is not None:
        calendar = _calendar(path.removeprefix("/status/"))
        if calendar is None:
            return _json(http.HTTPStatus.NOT_FOUND, {"error": "bad_calendar", "message": "no such calendar name"})
        return await _status(tokens, reach, calendar, token, query.get("client", [""])[0])
    return None


# ---- routes -----------------------------------------------------------------------------------


async def _index(tokens: TokenBook, known: KnownCalendars, token: str | None) -> Response:
    grant = tokens.check(token)
    if grant is None:
        problem = "That token is not known to this relay; check it and try again." if token else ""
        return _page(http.HTTPStatus.UNAUTHORIZED, "Sign in", _login_form(problem))
    names = [name for name in await known() if grant.allows(name)]
    return _page(http.HTTPStatus.OK, "Calendars", _calendar_list(tokens.is_open, grant, names))


def _access(tokens: TokenBook, calendar: CalendarId, token: str | None) -> Response:
    grant = tokens.check(token)
    if grant is None:
        return _json(http.HTTPStatus.UNAUTHORIZED,
                     {"error": "unauthorized", "message": "missing or wrong token; sign in with a valid token"})
    if not grant.allows(calendar):
        return _json(http.HTTPStatus.FORBIDDEN,
                     {"error": "forbidden", "message": f"this token may not open calendar {calendar}"})
    return _json(http.HTTPStatus.OK, {"calendar": calendar, "role": str(grant.role), "can_write": grant.can_write})


async def _status(tokens: TokenBook, reach: HomeReach, calendar: CalendarId, token: str | None,
                  client: str) -> Response:
    refused = _access(tokens, calendar, token)
    if refused.status_code != http.HTTPStatus.OK:
        return refused
    found = await reach.status(calendar, int(client) if client.isdigit() and len(client) <= 20 else None)
    if found is None:
        return _json(http.HTTPStatus.NOT_FOUND, {"error": "no_calendar", "calendar": calendar,
                                                 "message": f"no calendar named {calendar} on this relay"})
    return _json(http.HTTPStatus.OK, found)


def _calendar(raw: str) -> CalendarId | None:
    try:
        return check_calendar_name(urllib.parse.unquote(raw))
    except InvalidCalendarName:
        return None


# ---- HTML ---------------------------------------------------------------------------------------


def _login_form(problem: str) -> str:
    alert = f'<p class="problem" role="alert">{html.escape(problem)}</p>' if problem else ""
    return f"""{alert}
<p>This relay needs an access token. Your clinic's administrator gives you one.</p>
<form method="get" action="/" class="login">
  <label for="token">Access token</label>
  <input id="token" name="token" type="password" autocomplete="off" required>
  <button type="submit">Show my calendars</button>
</form>"""


def _calendar_list(is_open: bool, grant: Grant, names: list[CalendarId]) -> str:
    if names:
        items = "\n".join(
            f'  <li><a href="/board/{urllib.parse.quote(name, safe="/")}">{html.escape(name)}</a></li>' for name in names
        )
        listing = f'<ul class="calendars">\n{items}\n</ul>'
    else:
        listing = "<p>No calendar this token may open holds any reservation yet. Open one by name below.</p>"
    access = "read and write" if grant.can_write else "read-only: you can watch boards but not change them"
    mode = " This relay is open: it asks for no token." if is_open else ""
    return f"""<p>Access: {html.escape(access)}.{mode}</p>
<h2>Calendars</h2>
{listing}
<form class="open-calendar" id="open-calendar">
  <label for="calendar-name">Open a calendar by name</label>
  <input id="calendar-name" name="calendar" required pattern="[A-Za-z0-9][A-Za-z0-9._/\\-]{{0,127}}"
         aria-describedby="calendar-name-help">
  <span id="calendar-name-help" class="help">Letters, digits, . _ - and /, e.g. clinic-1</span>
  <button type="submit">Open board</button>
</form>"""


def _page(status: http.HTTPStatus, title: str, body: str) -> Response:
    text = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · accord front desk</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/board.css">
<script type="module" src="/static/index.js"></script>
</head>
<body class="index">
<header><h1>accord front desk</h1></header>
<main>
{body}
</main>
</body>
</html>
"""
    return _answer(status, CONTENT_TYPES[".html"], text.encode(), page=True)


# ---- responses ----------------------------------------------------------------------------------


def _answer(status: http.HTTPStatus, content_type: str, body: bytes, *, page: bool = False,
            cache: str = "no-cache") -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", cache),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    if page:
        headers["Content-Security-Policy"] = PAGE_POLICY
        headers["X-Frame-Options"] = "DENY"
    return Response(status.value, status.phrase, headers, body)


def _text(status: http.HTTPStatus, text: str) -> Response:
    return _answer(status, CONTENT_TYPES[".txt"], text.encode())


def _json(status: http.HTTPStatus, payload: dict[str, object]) -> Response:
    return _answer(status, "application/json", json.dumps(payload).encode(), cache="no-store")
