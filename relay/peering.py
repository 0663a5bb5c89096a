"""Outbound links to other relays, kept up with exponential backoff and jitter.

A link is a multiplexed connection with role ``peer``. Once it is up, both sides open every
calendar they hold (state-vector exchange), so after a partition only what the other side is
missing crosses the link, never the full state again. Updates then flow both ways as they
happen; the relay never sends an update back to the link it came from, and a relay that
already has an update does not forward it again, so chains and cycles converge without storms.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from accord.engine.sync import PeerSync

from .auth import OPEN_PEER_GRANT
from .connection import Connection

if TYPE_CHECKING:
    from .server import Relay

log = logging.getLogger(__name__)
SYNC_PATH = "/.accord/v1"


class PeerLink:
    """Keeps one outbound link to ``url`` alive until :meth:`close`."""

    def __init__(self, relay: Relay, url: str) -> None:
        self.relay = relay
        self.url = url.rstrip("/")
        self.state = "down"
        self.connects = 0
        self._task: asyncio.Task[None] | None = None
        self._connection: Connection | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"peer-link:{self.url}")

    async def close(self) -> None:
        """Stop reconnecting and close the link with 1001."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        config = self.relay.config
        attempt = 0
        headers = {"X-Accord-Role": "peer", "X-Accord-Relay": config.relay_id}
        if config.peer_token:
            headers["Authorization"] = f"Bearer {config.peer_token}"
        while True:
            started = time.monotonic()
            try:
                async with connect(
                    self.url + SYNC_PATH,
                    additional_headers=headers,
                    max_size=config.max_message_bytes,
                    open_timeout=config.handshake_timeout_s,
                    compression=None,
                ) as websocket:
                    self.state = "up"
                    self.connects += 1
                    log.info("peer link up", extra={"peer": self.url, "connects": self.connects})
                    connection = Connection(
                        self.relay, websocket, kind="peer", grant=OPEN_PEER_GRANT,
                        sync=PeerSync(max_message_bytes=config.max_message_bytes), peer_id=self.url,
                        outbox_messages=config.outbox_messages,
                    )
                    self._connection = connection
                    await connection.run()
                    code = websocket.close_code
                    log.info("peer link down", extra={"peer": self.url, "code": code})
                    if code in (4401, 4403):
                        log.error("peer refused this relay; check --peer-token", extra={"peer": self.url, "code": code})
            except asyncio.CancelledError:
                raise
            except (OSError, WebSocketException, TimeoutError) as exc:
                detail = f"HTTP {exc.response.status_code}" if isinstance(exc, InvalidStatus) else type(exc).__name__
                if attempt == 0 or attempt % 10 == 0:
                    log.info("peer unreachable; retrying", extra={"peer": self.url, "error": detail, "attempt": attempt})
            finally:
                self.state = "down"
                self._connection = None
            if time.monotonic() - started > 5:
                attempt = 0  # the link was up for a while: start backing off from scratch
            delay = min(config.backoff_max_s, config.backoff_initial_s * 2**attempt) * (0.5 + random.random() / 2)
            attempt += 1
            await asyncio.sleep(delay)
