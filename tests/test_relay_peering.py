"""Relays peered in pairs, chains and cycles converge, without echo storms."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relays import Relay, relay_config
from wire import NOW, WireClient

CAL = "clinic-1"


async def test_booking_on_one_relay_reaches_its_peer_and_back(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
        async with WireClient(a.url, actor="t1") as t1, WireClient(b.url, actor="t2") as t2:
            await t1.open(CAL)
            await t2.open(CAL)
            rid = await t1.book(CAL)
            await t1.wait_acked(CAL)
            await t2.wait_for(lambda: rid in t2.replica(CAL).calendar.reservations)
            t2.replica(CAL).calendar.edit(rid, note="moved by channel 2", now=t2.replica(CAL).calendar.get(rid).created_at)
            await t2.push(CAL)
            await t1.wait_for(lambda: t1.replica(CAL).calendar.get(rid).note == "moved by channel 2")


async def _chain(tmp_path: Path, cycle: bool) -> None:
    a = await Relay(relay_config(tmp_path, "a")).__aenter__()
    b = await Relay(relay_config(tmp_path, "b", peers=[a.url])).__aenter__()
    c = await Relay(relay_config(tmp_path, "c", peers=[b.url])).__aenter__()
    relays = [c, b, a]
    if cycle:
        a.add_peer(c.url)  # close the ring: a -> c
    try:
        async with WireClient(a.url, actor="ta") as ta, WireClient(c.url, actor="tc") as tc:
            await ta.open(CAL)
            await tc.open(CAL)
            await ta.wait_synced(CAL)
            await tc.wait_synced(CAL)
            ids = [await ta.book(CAL, hour=8 + i % 10, minute=0) for i in range(20)]
            ids += [await tc.book(CAL, resource="room-2", hour=8 + i % 10) for i in range(20)]
            await ta.wait_for(lambda: all(i in ta.replica(CAL).calendar.reservations for i in ids))
            await tc.wait_for(lambda: all(i in tc.replica(CAL).calendar.reservations for i in ids))
            assert ta.replica(CAL).calendar.to_py() == tc.replica(CAL).calendar.to_py()
            for relay in relays:
                await relay.pipeline.drain()
            states = [r.calendars.loaded[CAL].replica.calendar.to_py() for r in relays]
            assert states[0] == states[1] == states[2]
            # No storm: every peer connection carried at most one message per update plus the handshakes.
            for relay in relays:
                for connection in relay.connections:
                    if connection.is_peer:
                        assert connection.session.messages_in <= len(ids) + 10, (relay.config.relay_id, connection.label)
    finally:
        for relay in relays:
            await relay.__aexit__(None, None, None)


async def test_chain_of_three_relays_converges_without_echo_storm(tmp_path: Path) -> None:
    await _chain(tmp_path, cycle=False)


async def test_cycle_of_three_relays_converges_without_echo_storm(tmp_path: Path) -> None:
    await _chain(tmp_path, cycle=True)


async def test_relay_started_later_catches_up_with_only_the_missing_updates(tmp_path: Path) -> None:
    """Partition and heal: b is stopped while 1% of a's reservations change, then restarted."""
    async with Relay(relay_config(tmp_path, "a")) as a:
        b = await Relay(relay_config(tmp_path, "b", peers=[a.url])).__aenter__()
        async with WireClient(a.url, actor="ta") as ta:
            replica = await ta.open(CAL)
            await ta.wait_synced(CAL)
            ids = [replica.calendar.book(resource=f"room-{i % 50}", start=f"2026-12-01T{8 + i % 10:02d}:00Z",
                                         end=f"2026-12-01T{8 + i % 10:02d}:30Z", patient=f"P-{i}",
                                         service="general practice", note="first visit, bring referral letter",
                                         now=NOW).id for i in range(1000)]
            await ta.push(CAL)
            await ta.wait_acked(CAL)
            full_state = len(replica.full_state())

            def b_has_all() -> bool:
                handle = b.calendars.loaded.get(CAL)
                return handle is not None and len(handle.replica.calendar.reservations) == len(ids)

            await b.wait_for(b_has_all, 20)
            await b.__aexit__(None, None, None)  # partition: b goes away
            for rid in ids[:10]:  # 1% of reservations change while b is down
                replica.calendar.edit(rid, note="changed during partition", now=NOW)
            await ta.push(CAL)
            await ta.wait_acked(CAL)
            b = await Relay(relay_config(tmp_path, "b", peers=[a.url])).__aenter__()
            try:
                def b_caught_up() -> bool:
                    handle = b.calendars.loaded.get(CAL)
                    return handle is not None and handle.replica.calendar.get(ids[9]).note == "changed during partition"

                await b.wait_for(b_caught_up, 20)
                link_bytes = sum(c.session.bytes_in for c in b.connections if c.is_peer)
                assert link_bytes < 0.05 * full_state, (link_bytes, full_state)
            finally:
                await b.__aexit__(None, None, None)


async def test_peer_calendar_globs_limit_what_crosses_the_link(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as a, \
            Relay(relay_config(tmp_path, "b", peers=[a.url], peer_globs=["shared-*"])) as b:
        async with WireClient(a.url, actor="ta") as ta, WireClient(b.url, actor="tb") as tb:
            for calendar in ("shared-1", "private-1"):
                await ta.open(calendar)
                await tb.open(calendar)
            private = await ta.book("private-1")
            shared = await ta.book("shared-1")
            await tb.wait_for(lambda: shared in tb.replica("shared-1").calendar.reservations)
            marker = await ta.book("shared-1", hour=11)  # sent after the private booking, on the same link
            await tb.wait_for(lambda: marker in tb.replica("shared-1").calendar.reservations)
            assert private not in tb.replica("private-1").calendar.reservations
            assert private not in b.calendars.loaded["private-1"].replica.calendar.reservations


async def test_a_relay_does_not_acknowledge_what_a_peer_sends(tmp_path: Path) -> None:
    """Relays read no ACKs from each other, so none is sent: only terminals get them."""
    async with Relay(relay_config(tmp_path, "a")) as a:
        async with WireClient(a.url, actor="peer", role="peer") as peer, WireClient(a.url, actor="t") as terminal:
            await peer.open(CAL)
            await peer.wait_synced(CAL)
            await peer.book(CAL)
            await terminal.open(CAL)
            await terminal.book(CAL, hour=11)
            await terminal.wait_acked(CAL)  # the terminal's write was committed after the peer's
            await a.wait_committed(CAL, peer.replica(CAL).state_vector())
            await peer.open("clinic-2")  # a round trip on the peer's connection: anything sent before has arrived
            await peer.wait_synced("clinic-2")
            assert peer.acked == {}


async def test_shutdown_closes_outbound_peer_links_with_going_away(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as a:
        b = await Relay(relay_config(tmp_path, "b", peers=[a.url])).__aenter__()
        link = await a.wait_for(lambda: next((c for c in a.connections if c.is_peer), None))
        await b.__aexit__(None, None, None)
        await a.wait_for(lambda: link not in a.connections)
        assert link.websocket.close_code == 1001


async def test_a_relay_stops_at_once_while_its_link_waits_on_a_peer_that_never_answers(tmp_path: Path) -> None:
    """A peer that accepts TCP but never completes the websocket handshake (a relay shutting
    down, a hung host): stopping must not wait out the handshake timeout (10 s by default)."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()
        await reader.read()  # until the relay gives up on it

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        relay = await Relay(relay_config(tmp_path, "a", peers=[f"ws://127.0.0.1:{port}"])).__aenter__()
        await asyncio.wait_for(accepted.wait(), 10)
        started = time.monotonic()
        await relay.__aexit__(None, None, None)
        assert time.monotonic() - started < 2
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
