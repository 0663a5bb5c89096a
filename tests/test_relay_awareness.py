"""Presence (awareness) between stock Yjs clients: relayed, and cleared when a client leaves."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relays import Relay, relay_config
from websockets.asyncio.client import ClientConnection, connect

from accord.engine.protocol import Awareness, AwarenessEntry, decode, decode_awareness, encode, encode_awareness

CAL = "clinic-1"


async def next_awareness(ws: ClientConnection, timeout: float = 5.0) -> list[AwarenessEntry]:
    async with asyncio.timeout(timeout):
        while True:
            message = decode(await ws.recv())  # type: ignore[arg-type]
            if isinstance(message, Awareness):
                return decode_awareness(message.payload)


async def test_presence_is_relayed_and_cleared_when_its_client_disconnects(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with connect(f"{relay.url}/{CAL}") as watcher:
            async with connect(f"{relay.url}/{CAL}") as desk:
                here = AwarenessEntry(4242, 3, '{"user":{"name":"desk-1"}}')
                await desk.send(encode(Awareness(encode_awareness([here]))))
                assert await next_awareness(watcher) == [here]
            # desk went away without saying so: the relay clears its presence for the others
            assert await next_awareness(watcher) == [AwarenessEntry(4242, 4, "null")]


async def test_presence_a_client_withdrew_is_not_cleared_again(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with connect(f"{relay.url}/{CAL}") as watcher:
            async with connect(f"{relay.url}/{CAL}") as desk:
                await desk.send(encode(Awareness(encode_awareness([AwarenessEntry(7, 1, "{}")]))))
                await next_awareness(watcher)
                await desk.send(encode(Awareness(encode_awareness([AwarenessEntry(7, 2, "null")]))))
                assert await next_awareness(watcher) == [AwarenessEntry(7, 2, "null")]
            async with connect(f"{relay.url}/{CAL}") as late:  # proves the relay processed desk's close
                await late.send(encode(Awareness(encode_awareness([AwarenessEntry(8, 1, "{}")]))))
                assert await next_awareness(watcher) == [AwarenessEntry(8, 1, "{}")]
