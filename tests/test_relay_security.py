"""Tokens, limits and hostile input: refused with the right close code, relay keeps serving."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from relays import Relay, RelayConfig, relay_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wire import NOW, WireClient

from accord.engine.errors import AccordError

CAL = "clinic-1"


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text(
        "# token role globs\n"
        "desk-secret terminal clinic-*\n"
        "wall-secret read-only clinic-*\n"
        "peer-secret peer *\n"
    )
    return path


async def _closed_with(ws_url: str, headers: dict[str, str] | None = None) -> int | None:
    async with connect(ws_url, additional_headers=headers or {}) as ws:
        async with asyncio.timeout(5):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass
        return ws.close_code


async def test_missing_or_wrong_token_is_refused_with_4401(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        assert await _closed_with(relay.url + "/.accord/v1") == 4401
        assert await _closed_with(relay.url + "/.accord/v1", {"Authorization": "Bearer nope"}) == 4401
        assert await _closed_with(relay.url + f"/{CAL}?token=nope") == 4401
        assert "accord_refused_connections_total{reason=\"unauthorized\"} 3" in relay.render_metrics()


async def test_calendar_outside_token_globs_is_refused_with_4403(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        assert await _closed_with(relay.url + "/other-1?token=desk-secret") == 4403
        async with WireClient(relay.url, token="desk-secret") as client:  # multiplexed: refused per calendar
            await client.open("other-1")
            await client.open(CAL)
            await client.wait_synced(CAL)
            assert not client.session.is_synced("other-1")
            assert "other-1" not in relay.calendars.loaded


async def test_terminal_token_may_not_peer(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        headers = {"Authorization": "Bearer desk-secret", "X-Accord-Role": "peer"}
        assert await _closed_with(relay.url + "/.accord/v1", headers) == 4403


async def test_read_only_token_reads_but_its_writes_are_dropped_and_closed_4403(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        async with WireClient(relay.url, token="desk-secret") as desk:
            await desk.open(CAL)
            rid = await desk.book(CAL)
            await desk.wait_acked(CAL)
            async with WireClient(relay.url, token="wall-secret", calendar=CAL) as wall:
                await wall.wait_for(lambda: rid in wall.replica(CAL).calendar.reservations)
                wall.replica(CAL).calendar.edit(rid, note="forged", now=wall.replica(CAL).calendar.get(rid).created_at)
                await wall.push(CAL)
                await wall.wait_for(lambda: wall.closed.is_set())
                assert wall.close_code == 4403
            await relay.pipeline.drain()
            assert relay.calendars.loaded[CAL].replica.calendar.get(rid).note == ""


async def test_peer_with_token_syncs(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as a:
        async with Relay(relay_config(tmp_path, "b", peers=[a.url], peer_token="peer-secret")) as b:
            async with WireClient(a.url, token="desk-secret") as t1, WireClient(b.url) as t2:
                await t1.open(CAL)
                await t2.open(CAL)
                rid = await t1.book(CAL)
                await t2.wait_for(lambda: rid in t2.replica(CAL).calendar.reservations)


def test_open_relay_refuses_non_loopback_address(tmp_path: Path) -> None:
    with pytest.raises(AccordError, match="--tokens"):
        Relay(RelayConfig(relay_id="a", host="0.0.0.0", port=0, db_path=tmp_path / "a.sqlite"))


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 1007),  # varint overflow
        (b"\x09clinic-1\x00\x02\x05ab", 1007),  # truncated update
        (b"\x09clinic-1\x00\x02\x04abcd", 1007),  # not a Yjs update
        (b"\x09clinic-1\x63", 1007),  # unknown message type
    ],
)
async def test_malformed_frames_close_only_that_connection(tmp_path: Path, payload: bytes, code: int) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay, WireClient(relay.url) as good:
        await good.open(CAL)
        rid = await good.book(CAL)
        await good.wait_acked(CAL)
        async with connect(relay.url + "/.accord/v1") as bad:
            await bad.send(payload)
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await bad.recv()
            assert bad.close_code == code
        rid2 = await good.book(CAL, hour=11)
        await good.wait_acked(CAL)
        assert {rid, rid2} <= set(relay.calendars.loaded[CAL].replica.calendar.reservations.keys())


async def test_oversized_frame_is_refused_with_1009(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", max_message_bytes=64 * 1024)) as relay:
        async with connect(relay.url + "/.accord/v1", max_size=None) as bad:
            await bad.send(b"\x00" * (65 * 1024))
            async with asyncio.timeout(5):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await bad.recv()
            assert bad.close_code == 1009
            assert "exceeds limit of 65536 bytes" in (bad.close_reason or "")
        await relay.wait_for(lambda: relay.metrics.updates_dropped["message_too_big"] == 1)
        assert 'accord_updates_dropped_total{reason="message_too_big"} 1' in relay.render_metrics()
        async with WireClient(relay.url) as good:
            await good.open(CAL)
            await good.wait_synced(CAL)


async def test_flooding_client_does_not_stop_others(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with WireClient(relay.url, actor="flood") as flood, WireClient(relay.url, actor="calm") as calm:
            await flood.open(CAL)
            await calm.open(CAL)
            replica = flood.replica(CAL)
            rid = await flood.book(CAL)
            for i in range(3000):
                replica.calendar.edit(rid, note=f"n{i}", now=replica.calendar.get(rid).created_at)
            await flood.push(CAL)
            other = await calm.book(CAL, resource="room-2")
            await calm.wait_acked(CAL, timeout=20)
            await flood.wait_acked(CAL, timeout=30)
            assert other in relay.calendars.loaded[CAL].replica.calendar.reservations


async def test_healthz_and_metrics_endpoints(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        base = relay.url.replace("ws://", "http://")

        def fetch(path: str) -> tuple[int, str, str]:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()

        status, _, body = await asyncio.to_thread(fetch, "/healthz")
        assert (status, body) == (200, "ok\n")
        async with WireClient(relay.url) as client:
            await client.open(CAL)
            await client.book(CAL)
            await client.wait_acked(CAL)
            status, ctype, body = await asyncio.to_thread(fetch, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'accord_connections{role="terminal"} 1' in body
        assert "accord_calendars_loaded 1" in body
        updates_in = int(next(line for line in body.splitlines() if line.startswith("accord_updates_in_total")).split()[1])
        assert updates_in >= 1
        assert "accord_store_commit_seconds_count" in body
        waited = int(next(line for line in body.splitlines() if line.startswith("accord_forward_wait_seconds_count")).split()[1])
        assert waited >= 1  # the booking was queued, stored, then forwarded


async def test_connections_beyond_the_limit_are_refused_with_503(tmp_path: Path) -> None:
    from websockets.exceptions import InvalidStatus

    async with Relay(relay_config(tmp_path, "a", max_connections=1)) as relay:
        async with WireClient(relay.url) as first:
            await first.open(CAL)
            await first.wait_synced(CAL)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(relay.url + "/.accord/v1"):
                    pass
            assert refused.value.response.status_code == 503
            assert 'accord_refused_connections_total{reason="too_many_connections"} 1' in relay.render_metrics()
        await relay.wait_for(lambda: not relay.connections, 5)  # the relay notices the close
        async with WireClient(relay.url) as again:  # the slot is free again
            await again.open(CAL)
            await again.wait_synced(CAL)


async def test_a_client_that_stops_reading_is_closed_as_a_slow_consumer(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", outbox_messages=8)) as relay:
        async with WireClient(relay.url, actor="writer") as writer, \
                connect(relay.url + f"/{CAL}", max_size=None, max_queue=1, compression=None) as sleeper:
            await writer.open(CAL)
            replica = writer.replica(CAL)
            rid = await writer.book(CAL)
            big = "x" * 1900
            def closed_as_slow() -> bool:
                return relay.metrics.updates_dropped["slow_consumer"] > 0

            async with asyncio.timeout(30):
                for i in range(8000):  # up to ~16 MB: more than the socket buffers hold
                    replica.calendar.edit(rid, note=f"{i}{big}", now=replica.calendar.get(rid).created_at)
                    await writer.push(CAL)
                    if closed_as_slow():
                        break
                    await asyncio.sleep(0)
            # The writer may finish sending before the relay has worked through its backlog: wait for
            # the relay to get there (a commit batch or the close wakes this), never just read it.
            await relay.wait_for(closed_as_slow, 30)
            assert 'accord_updates_dropped_total{reason="slow_consumer"}' in relay.render_metrics()
            async with asyncio.timeout(10):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await sleeper.recv()
            assert sleeper.close_code == 1013
            await writer.wait_acked(CAL, timeout=20)  # the writer was never held up


async def test_an_update_that_overtook_what_it_builds_on_is_asked_for_again_not_refused(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with WireClient(relay.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            replica = desk.replica(CAL)
            rid = replica.calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                                        patient="P-1", now=NOW).id
            replica.calendar.edit(rid, note="second", now=NOW)
            _first, second = replica.take_changes()
            assert desk.ws is not None
            await desk.ws.send(desk.session.update(CAL, second.update))  # the edit, without the booking
            await desk.wait_acked(CAL)  # the relay asked again (STEP1) and stored both from the answer
            assert not desk.closed.is_set()
            assert (await relay.calendar(CAL)).get(rid).note == "second"
            assert 'accord_updates_dropped_total{reason="missing_dependency"} 1' in relay.render_metrics()
