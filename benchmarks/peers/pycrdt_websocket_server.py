#!/usr/bin/env python3
"""pycrdt-websocket server for the benchmark: y-websocket protocol, one document per URL path.

Usage: python pycrdt_websocket_server.py [PORT] [HOST] [--sqlite PATH]

PORT 0 (the default) picks a free port; one JSON line ``{"port": N}`` is printed once listening.
Without ``--sqlite`` rooms live in memory and are dropped when their last client leaves. With it,
every room gets a ``pycrdt.store.SQLiteYStore`` (one database file, one row per update, written
by the room after it broadcast the update). Loading a room back from the store is left to the
application in pycrdt-websocket and is not done here: every benchmark scenario uses a new document.

Two workarounds, both for the stock ``WebsocketServer``: pycrdt-websocket 0.16 has no adapter for
the ``websockets`` library, so a few lines wrap the connection as a pycrdt ``Channel``; and rooms
are created under a lock, because clients connecting at once to a room that has not started each
call ``room.start()`` and all but the first fail with "YRoom already running".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from typing import Any

from pycrdt.store import SQLiteYStore
from pycrdt.websocket import WebsocketServer, YRoom
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

logging.basicConfig(level=logging.WARNING)
log = logging.getLogger("pycrdt-ws")


class WebsocketsChannel:
    """A ``websockets`` server connection as pycrdt's Channel (path, send, recv, async iteration)."""

    def __init__(self, ws: ServerConnection, path: str) -> None:
        self._ws = ws
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration() from None

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            pass

    async def recv(self) -> bytes:
        message = await self._ws.recv()
        return message if isinstance(message, bytes) else message.encode()


class SqliteWebsocketServer(WebsocketServer):
    """Rooms persisted in one SQLite file through ``SQLiteYStore``."""

    def __init__(self, db_path: str, **kw: Any) -> None:
        super().__init__(**kw)
        store_class = type("BenchSQLiteYStore", (SQLiteYStore,), {"db_path": db_path})
        self._store_class = store_class

    async def get_room(self, name: str) -> YRoom:
        if name not in self.rooms:
            ystore = self._store_class(path=name, log=self.log)
            self.rooms[name] = YRoom(ready=self.rooms_ready, ystore=ystore, exception_handler=self.exception_handler,
                                     log=self.log)
        room = self.rooms[name]
        await self.start_room(room)
        return room


async def main(port: int, host: str, sqlite_path: str | None) -> None:
    def on_error(exc: Exception, logger: logging.Logger) -> bool:
        logger.warning("room error: %r", exc)
        return True

    server = (SqliteWebsocketServer(sqlite_path, log=log, exception_handler=on_error) if sqlite_path
              else WebsocketServer(log=log, exception_handler=on_error))
    async with server as ws_server:
        room_lock = asyncio.Lock()

        async def handler(ws: ServerConnection) -> None:
            assert ws.request is not None
            path = ws.request.path.split("?")[0]
            async with room_lock:
                await ws_server.get_room(path)
            await ws_server.serve(WebsocketsChannel(ws, path))

        loop = asyncio.get_running_loop()
        stop = loop.create_future()

        def on_signal() -> None:
            if not stop.done():
                stop.set_result(None)
            # a graceful shutdown can hang on rooms whose tasks never end; do not wait long
            loop.call_later(2.0, os._exit, 0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        async with serve(handler, host, port, max_size=None, compression=None) as server_:
            bound = next(iter(server_.sockets)).getsockname()[1]
            print(json.dumps({"port": bound}), flush=True)
            await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", nargs="?", type=int, default=0)
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("--sqlite", default=None, metavar="PATH", help="persist rooms in this SQLite file")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.host, args.sqlite))
