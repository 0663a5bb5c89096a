"""The relay's own websocket framing (accord.transport) against websockets' and on the wire."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode

from accord.transport import LARGE_PAYLOAD_BYTES, Outbox, binary_frame_head


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_binary_frame_head_is_what_websockets_serializes(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False)
    assert binary_frame_head(length) + payload == expected


@pytest.mark.parametrize("together", [True, False], ids=["one batch", "one by one"])
async def test_an_outbox_batch_reaches_a_client_as_separate_messages_in_order(together: bool) -> None:
    """Server side (frames put together by accord) and client side (masked by websockets); one by
    one, a message of LARGE_PAYLOAD_BYTES or more is written after its header, not joined to it."""
    sizes = [0, 5, 125, 126, 65535, 65536, 200_000, LARGE_PAYLOAD_BYTES, 3_000_000, 7]
    messages = [bytes([i]) * size for i, size in enumerate(sizes)]

    def send(outbox: Outbox) -> bool:
        return outbox.send_all(messages) if together else all(outbox.send(message) for message in messages)
    at_server: list[bytes] = []
    done = asyncio.Event()

    async def handler(websocket: ServerConnection) -> None:
        outbox = Outbox(websocket, max_messages=100)
        writer = asyncio.create_task(outbox.run())
        try:
            assert send(outbox)
            async for message in websocket:
                assert isinstance(message, bytes)
                at_server.append(message)
                if len(at_server) == len(messages):
                    done.set()
        finally:
            writer.cancel()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as client:
            received = [await asyncio.wait_for(client.recv(), 10) for _ in messages]
            assert received == messages
            outbox = Outbox(client, max_messages=100)  # the client side: masked frames
            writer = asyncio.create_task(outbox.run())
            try:
                assert send(outbox)
                await asyncio.wait_for(done.wait(), 10)
            finally:
                writer.cancel()
    assert at_server == messages
