"""Static pages served by the relay on its own port: ``GET /`` and ``GET /board/<calendar>``.

(The live front-desk board; see the board issue. Until its page lands, these routes answer 404.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

if TYPE_CHECKING:
    from .server import Relay


def respond(relay: Relay, connection: ServerConnection, request: Request, path: str) -> Response | None:
    """Answer a plain HTTP GET for a board route, or None if ``path`` is not one."""
    return None
