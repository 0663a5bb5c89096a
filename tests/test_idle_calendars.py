"""Reading creates nothing, and idle calendars cost nothing (issue 13, items 3 and 4).

- A name that is only read (a SYNC_STEP1, a stock client that connects and leaves) is never
  stored, gets no home record, is not offered to peers, and leaves memory when nobody listens.
- Subscriptions are capped per connection and per token, with close code 4429.
- Each calendar's state vector is stored beside its log, in the same commit; a peer link-up
  compares stored vectors and loads only the calendars that differ.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from relays import Relay, free_port, relay_config
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wire import NOW, WireClient

from accord.engine.errors import CloseCode, MalformedMessage
from accord.engine.model import CalendarId
from accord.engine.protocol import States, SyncStep1, decode_framed, decode_state_vector, encode_framed
from accord.engine.replica import Replica
from accord.engine.session import ROLE_HEADER, SYNC_PATH
from accord.engine.storage import SqliteStorage
from accord.engine.storage.state_vectors import differ
from accord.relay.hub import scan_prefixes

CAL = CalendarId("clinic-1")


def booked(replica: Replica, count: int, start_hour: int = 8) -> list[bytes]:
    """``count`` bookings (each with a note edit) on ``replica``; the updates that made them."""
    for i in range(count):
        start = datetime(2026, 12, 1, start_hour, tzinfo=UTC) + timedelta(minutes=30 * i)
        made = replica.calendar.book(resource="room-1", start=start, end=start + timedelta(minutes=30),
                                     patient=f"P-{i}", now=NOW)
        replica.calendar.edit(made.id, note=f"note {i}", now=NOW)
    return [change.update for change in replica.take_changes()]


async def stored_clocks(store: Any, name: str) -> dict[int, int]:
    found = await store.state_vectors([CalendarId(name)])
    return decode_state_vector(found[name]) if name in found else {}


# ---- stored state vectors ------------------------------------------------------------------------


async def test_the_stored_state_vector_follows_the_log_through_appends_and_compaction(store: Any) -> None:
    desk, other = Replica(CAL, actor="desk", client_id=11), Replica(CAL, actor="app", client_id=22)
    for update in booked(desk, 4):
        await store.append(CAL, update)
        other.apply(update)
    await store.append_many([(CAL, u) for u in booked(other, 3, start_hour=14)])
    merged = Replica(CAL, actor="reader")
    merged.load(await store.load(CAL))
    assert await stored_clocks(store, CAL) == merged.clocks() == {11: desk.clocks()[11], 22: other.clocks()[22]}
    _rows, top = await store.log_length(CAL)
    await store.compact(CAL, top, merged.full_state())
    assert await stored_clocks(store, CAL) == merged.clocks()
    assert [(n, decode_state_vector(sv)) for n, sv in await store.state_vector_page("", 10)] == [(CAL, merged.clocks())]


async def test_a_row_that_only_deletes_or_is_not_yjs_moves_no_state_vector(store: Any) -> None:
    desk = Replica(CAL, actor="desk", client_id=5)
    desk.calendar.put_resource("room-9")
    await store.append_many([(CAL, c.update) for c in desk.take_changes()])
    before = await stored_clocks(store, CAL)
    with desk.doc.transaction():
        del desk.calendar.resources_map["room-9"]
    (delete_only,) = desk.take_changes()
    await store.append(CAL, delete_only.update)
    await store.append(CAL, b"not a yjs update")
    assert await stored_clocks(store, CAL) == before == desk.clocks()


async def test_a_row_stored_ahead_of_the_one_it_builds_on_never_makes_the_vector_claim_it(store: Any) -> None:
    desk = Replica(CAL, actor="desk", client_id=7)
    first, second = booked(desk, 1)  # the booking, then its note edit (client 7's next clocks)
    await store.append(CAL, second)
    assert await stored_clocks(store, CAL) == {}  # the log lacks what it builds on: claim nothing
    await store.append(CAL, first)
    claimed = await stored_clocks(store, CAL)
    assert 0 < claimed[7] < desk.clocks()[7]  # behind, never ahead: costs a sync, not data
    merged = Replica(CAL, actor="reader")
    merged.load(await store.load(CAL))
    await store.compact(CAL, (await store.log_length(CAL))[1], merged.full_state())
    assert await stored_clocks(store, CAL) == desk.clocks()


async def test_a_store_from_before_state_vectors_is_migrated_once_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = await SqliteStorage.open(path)
    replicas = {f"clinic-{i}": Replica(f"clinic-{i}", actor="desk") for i in range(3)}
    for name, replica in replicas.items():
        await store.append_many([(CalendarId(name), u) for u in booked(replica, 2)])
    await store.close()
    with sqlite3.connect(path) as conn:  # what a schema-1 store looks like
        conn.execute("DROP TABLE calendar_states")
        conn.execute("PRAGMA user_version=1")
    store = await SqliteStorage.open(path)
    try:
        assert {name: decode_state_vector(sv) for name, sv in await store.state_vector_page("", 10)} == {
            name: replica.clocks() for name, replica in replicas.items()}
        assert await store.calendars() == sorted(replicas)
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)  # then the audit table (3)


def test_states_messages_round_trip_and_refuse_garbage() -> None:
    entries = ((CalendarId("clinic-1"), b"\x01\x05\x07"), (CalendarId("clinic-2"), b"\x00"))
    assert decode_framed(encode_framed("", States(entries))) == ("", States(entries))
    bad = encode_framed("", States(((CalendarId("clinic-1"), b"\x05\x01"),)))  # 5 entries announced, 1 byte
    with pytest.raises(MalformedMessage):
        decode_framed(bad)
    assert not differ(b"\x01\x05\x07", b"\x02\x05\x07\x09\x00")  # a zero clock is no clock
    assert differ(b"\x01\x05\x07", b"\x01\x05\x08") and differ(b"\x01\x05\x07", b"\x02\x05\x07\x09\x01")
    assert differ(None, b"\x01\x05\x07") and not differ(None, b"\x00")


# ---- reading creates nothing ----------------------------------------------------------------------


async def _flood_step1(url: str, names: list[str]) -> int | None:
    """Send a SYNC_STEP1 for each name on one multiplexed connection; the close code, if closed."""
    async with connect(url + SYNC_PATH, additional_headers={ROLE_HEADER: "terminal"}, compression=None) as ws:
        try:
            for name in names:
                await ws.send(encode_framed(name, SyncStep1(b"\x00")))
            async with asyncio.timeout(30):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        return ws.close_code


@pytest.mark.slow
async def test_ten_thousand_step1s_for_random_names_store_nothing_and_hit_the_subscription_cap(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["*"])) as home, \
            Relay(relay_config(tmp_path, "peer", peers=[home.url])) as peer:
        await home.wait_for(lambda: any(c.is_peer for c in home.connections))
        names = [f"probe-{secrets.token_hex(6)}" for _ in range(10_000)]
        code = await _flood_step1(home.url, names)
        assert code == CloseCode.TOO_MANY_SUBSCRIPTIONS == 4429
        await home.wait_for(lambda: not home.calendars.loaded and not any(not c.is_peer for c in home.connections))
        await home.pipeline.drain()
        assert await home.calendars.storage.calendars() == []  # no rows, no home records
        assert await home.calendars.storage.state_vector_page("", 1) == []
        assert home.calendars.loads == 1000  # the cap: the 1001st name was refused before loading
        metrics = home.render_metrics()
        assert 'accord_refused_connections_total{reason="subscriptions_per_connection"} 1' in metrics
        assert "accord_subscriptions 0" in metrics
        assert peer.calendars.loads == 0 and await peer.calendars.storage.calendars() == []


async def test_subscriptions_are_capped_per_token_across_connections(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "r", max_subscriptions_per_connection=10, max_subscriptions_per_token=5)
    async with Relay(config) as relay, WireClient(relay.url, actor="one") as one, \
            WireClient(relay.url, actor="two") as two:
        for i in range(3):
            await one.open(f"clinic-{i}")
            await one.wait_synced(f"clinic-{i}")
        for i in range(3, 5):
            await two.open(f"clinic-{i}")
            await two.wait_synced(f"clinic-{i}")
        assert "accord_subscriptions 5" in relay.render_metrics()
        await two.open("clinic-5")  # the sixth calendar of this (open relay's) token
        async with asyncio.timeout(10):
            await two.closed.wait()
        assert two.close_code == CloseCode.TOO_MANY_SUBSCRIPTIONS
        assert one.close_code is None
        assert 'accord_refused_connections_total{reason="subscriptions_per_token"} 1' in relay.render_metrics()
        await relay.wait_for(lambda: "clinic-3" not in relay.calendars.loaded)  # empty and unheard: gone
        await one.open("clinic-3")  # the closed connection's calendars no longer count
        await one.wait_synced("clinic-3")
        assert await relay.calendars.storage.calendars() == []


async def test_a_name_read_at_its_home_gets_a_home_record_only_with_its_first_write(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home:
        async with WireClient(home.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_synced(CAL)
        await home.wait_for(lambda: CAL not in home.calendars.loaded)
        assert await home.calendars.storage.calendars() == []
        async with WireClient(home.url, actor="desk") as desk:
            await desk.open(CAL)
            rid = await desk.book(CAL)
            await desk.wait_for(lambda: desk.replica(CAL).calendar.get(rid).decided_by == "home")
            assert desk.replica(CAL).calendar.home == "home"
            assert str(desk.replica(CAL).calendar.get(rid).status) == "booked"
        assert await home.calendars.storage.calendars() == [CAL]


# ---- peer link-up compares stored state vectors -------------------------------------------------


async def _seed(path: Path, rows: list[tuple[CalendarId, bytes]]) -> None:
    store = await SqliteStorage.open(path)
    try:
        await store.append_many(rows)  # one transaction
    finally:
        await store.close()


@pytest.mark.slow
async def test_peer_link_up_with_ten_thousand_stored_calendars_loads_only_those_that_differ(tmp_path: Path) -> None:
    template = Replica("template", actor="desk", client_id=1234)
    booked(template, 2)
    same = template.full_state()
    names = [CalendarId(f"clinic-{i:05d}") for i in range(10_000)]
    changed = names[:3]  # written on a while the relays were apart
    extra = []
    for name in changed:
        replica = Replica(name, actor="late", client_id=999)
        replica.load([same])
        extra += [(name, u) for u in booked(replica, 1, start_hour=15)]
        later = replica.clocks()
    only_b = [CalendarId(f"clinic-only-b-{i}") for i in range(2)]
    a_config, b_config = relay_config(tmp_path, "a"), relay_config(tmp_path, "b")
    await _seed(Path(a_config.db_path), [(n, same) for n in names] + extra)
    await _seed(Path(b_config.db_path), [(n, same) for n in names + only_b])
    differing = set(changed) | set(only_b)

    async with Relay(a_config) as a:
        b_config.peers = [a.url]
        async with Relay(b_config) as b:
            expected = {name: later for name in changed} | {name: template.clocks() for name in only_b}

            def settled(relay: Relay, compared: int) -> bool:  # one relay's view: its own notices wake it
                return relay.metrics.peer_states_compared >= compared and all(
                    name in relay.calendars.loaded
                    and decode_state_vector(relay.calendars.loaded[name].committed) == clocks
                    for name, clocks in expected.items())
            await a.wait_for(lambda: settled(a, len(names) + len(only_b)), 20)
            await b.wait_for(lambda: settled(b, len(names)), 20)
            for relay in (a, b):
                await relay.pipeline.drain()
            for relay in (a, b):
                assert relay.calendars.loads == len(differing), relay.config.relay_id
                assert set(relay.calendars.loaded) == differing
                assert f"accord_calendar_loads_total {len(differing)}" in relay.render_metrics()
            a_sv = await a.calendars.storage.state_vectors(sorted(differing) + names[3:50])
            b_sv = await b.calendars.storage.state_vectors(sorted(differing) + names[3:50])
            assert a_sv == b_sv and len(a_sv) == len(differing) + 47


async def test_a_delete_made_while_apart_reaches_the_peer_once_the_calendar_is_used(tmp_path: Path) -> None:
    """Deleting moves no state vector, so link-up alone does not see it; a calendar anyone opens
    is opened on every peer link, whose full sync carries the delete."""
    a_config, b_config = relay_config(tmp_path, "a"), relay_config(tmp_path, "b")
    a_config.port = free_port()  # a restarts on the same port: b's link finds it again
    b_config.peers = [f"ws://127.0.0.1:{a_config.port}"]
    async with Relay(a_config) as a, Relay(b_config) as b:
        await a.edit(CAL, lambda c: c.put_resource("room-9", name="Room 9"))
        await b.wait_for(lambda: CAL in b.calendars.loaded and b.calendars.loaded[CAL].replica.calendar.resource("room-9"))
        await b.pipeline.drain()
    async with Relay(a_config) as a:
        await a.edit(CAL, lambda c: c.resources_map.pop("room-9"))  # while b is down: a pure delete
    async with Relay(a_config) as a, Relay(b_config) as b:
        await a.wait_for(lambda: a.metrics.peer_states_compared >= 1)
        await b.wait_for(lambda: b.metrics.peer_states_compared >= 1)
        assert a.calendars.loads == b.calendars.loads == 0  # the stored vectors agree: link-up loads nothing
        async with WireClient(b.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_for(lambda: desk.session.is_synced(CAL)
                                and desk.replica(CAL).calendar.resource("room-9") is None)


def test_link_up_reads_only_the_name_ranges_a_peer_token_allows() -> None:
    assert scan_prefixes(["c007-*"]) == ["c007-"]
    assert scan_prefixes(["a*", "ab*", "clinic-1"]) == ["a", "clinic-1"]
    assert scan_prefixes(["*"]) is None and scan_prefixes(["c?-*"]) is None and scan_prefixes(["c*-1"]) is None


async def test_a_clinic_peering_with_a_restricted_token_compares_only_its_own_calendars(tmp_path: Path) -> None:
    template = Replica("template", actor="desk", client_id=77)
    booked(template, 1)
    same = template.full_state()
    later = Replica("later", actor="late", client_id=78)
    later.load([same])
    newer = booked(later, 1, start_hour=15)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("peer-a peer a-*\n")
    platform_config = relay_config(tmp_path, "platform", tokens_path=tokens)
    clinic_config = relay_config(tmp_path, "clinic", peer_token="peer-a", peer_globs=["a-*"])
    mine = [CalendarId(f"a-{i}") for i in range(3)]
    theirs = [CalendarId(f"{p}-{i}") for p in ("_", "a,", "a.", "b") for i in range(3)]  # around the range
    await _seed(Path(platform_config.db_path), [(n, same) for n in mine + theirs] + [(mine[2], u) for u in newer])
    await _seed(Path(clinic_config.db_path), [(n, same) for n in mine])
    async with Relay(platform_config) as platform:
        clinic_config.peers = [platform.url]
        async with Relay(clinic_config) as clinic:
            await clinic.wait_for(lambda: mine[2] in clinic.calendars.loaded
                                  and clinic.calendars.loaded[mine[2]].replica.clocks() == later.clocks(), 20)
            await platform.wait_for(lambda: platform.metrics.peer_states_compared >= len(mine))
            assert clinic.metrics.peer_states_compared == len(mine)  # nothing outside a-* was sent
            assert set(clinic.calendars.loaded) == set(platform.calendars.loaded) == {mine[2]}
