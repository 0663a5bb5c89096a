"""The terminal without a relay: writes are local, durable, counted as pending, and survive restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from relays import free_port

from accord.engine.errors import InvalidReservation, InvalidTransition, ReservationNotFound
from accord.engine.model import Status
from accord.terminal.client import ChangeKind, SyncState, Terminal
from accord.terminal.conflicts import find_conflicts
from accord.terminal.errors import AmbiguousId, RelayUnreachable
from accord.terminal.ledger import CalendarLedger
from accord.terminal.link import Backoff, LinkState, endpoint_url

CAL = "clinic-1"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FAST = Backoff(initial_s=0.05, max_s=0.2)


async def book(t: Terminal, minutes: int = 0, resource: str = "room-1", length: int = 30, patient: str = "P-0042") -> str:
    start = START + timedelta(minutes=minutes)
    reservation = await t.book(CAL, resource=resource, start=start, end=start + timedelta(minutes=length), patient=patient)
    return reservation.id


async def test_offline_booking_survives_restart_and_stays_pending(tmp_path: Path) -> None:
    store = tmp_path / "desk.sqlite"
    async with Terminal(relay=f"ws://127.0.0.1:{free_port()}", store=store, name="desk-1", backoff=FAST) as t:
        rid = await book(t)
        await t.edit(CAL, rid, note="first visit")
        assert t.status().pending == 2
        assert t.sync_state(CAL, rid) is SyncState.LOCAL
    async with Terminal(store=store, name="desk-1") as t:  # a new process would do exactly this
        reservation = await t.get(CAL, rid)
        assert (reservation.note, reservation.status, reservation.created_by) == ("first visit", Status.BOOKED, "desk-1")
        assert t.calendars() == [CAL]
        assert t.status().pending == 2
        assert t.sync_state(CAL, rid) is SyncState.LOCAL
        await t.cancel(CAL, rid, reason="patient called")
        assert t.status().pending == 3
    async with Terminal(store=store, name="desk-1") as t:
        assert (await t.get(CAL, rid)).status is Status.CANCELLED


async def test_unreachable_relay_shows_offline_and_synced_raises_unreachable(tmp_path: Path) -> None:
    async with Terminal(relay=f"ws://127.0.0.1:{free_port()}", store=tmp_path / "t.sqlite", backoff=FAST) as t:
        await book(t)
        assert await t.wait_connected(5) is LinkState.OFFLINE
        status = t.status()
        assert status.link is LinkState.OFFLINE and status.last_error and status.last_ack_at is None
        with pytest.raises(RelayUnreachable, match="1 local change"):
            await t.synced(timeout=0.3)


async def test_terminal_without_relay_works_and_refuses_to_sync(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite") as t:
        rid = await book(t)
        assert (await t.decision(CAL, rid, timeout=1)).status is Status.BOOKED  # no relay, no home: final
        assert await t.wait_connected(1) is LinkState.OFFLINE
        with pytest.raises(RelayUnreachable, match="no relay configured"):
            await t.synced(timeout=1)


async def test_invalid_writes_raise_and_store_nothing(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite") as t:
        with pytest.raises(InvalidReservation, match="not after start"):
            await t.book(CAL, resource="room-1", start=START, end=START, patient="P-1")
        with pytest.raises(InvalidReservation, match="patient is required"):
            await t.book(CAL, resource="room-1", start=START, end=START + timedelta(hours=1), patient=" ")
        with pytest.raises(ReservationNotFound):
            await t.cancel(CAL, "01234567-0000-7000-8000-000000000000")
        rid = await book(t)
        await t.cancel(CAL, rid)
        with pytest.raises(InvalidTransition, match="cancelled"):
            await t.check_in(CAL, rid)
        assert t.status().pending == 2  # the booking and the cancel; the refused writes left no trace


async def test_lifecycle_writes_apply_locally(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite", name="desk-1") as t:
        rid = await book(t)
        moved = await t.reschedule(CAL, rid, start=START + timedelta(hours=1), end=START + timedelta(hours=2), resource="room-2")
        assert (moved.resource, moved.start) == ("room-2", START + timedelta(hours=1))
        assert (await t.check_in(CAL, rid)).status is Status.CHECKED_IN
        listed = await t.reservations(CAL, resource="room-2", between=(START, START + timedelta(days=1)))
        assert [r.id for r in listed] == [rid]
        assert await t.reservations(CAL, resource="room-1") == []


async def test_change_stream_and_callbacks_report_local_writes_by_id(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite") as t:
        seen = []
        unsubscribe = t.on_change(seen.append)
        stream = t.changes()
        rid = await book(t)
        unsubscribe()
        await t.edit(CAL, rid, note="x")
        assert [(n.calendar, n.reservation_ids, n.kind) for n in seen] == [(CAL, (rid,), ChangeKind.LOCAL)]
    got = [notice async for notice in stream]  # ends because the terminal closed
    assert [n.reservation_ids for n in got] == [(rid,), (rid,)]


async def test_slow_change_stream_gets_one_overflow_notice(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite") as t:
        stream = t.changes(max_queued=2)
        for minutes in range(0, 150, 30):
            await book(t, minutes)
        stream.close()
        kinds = [n.kind async for n in stream]
    assert ChangeKind.OVERFLOW in kinds and len(kinds) <= 3


async def test_short_ids_resolve_by_prefix_or_suffix_and_ambiguity_is_reported(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite", clock=lambda: START) as t:
        first, second = await book(t, 0), await book(t, 60)
        assert first[:8] == second[:8]  # UUIDv7 ids begin with their creation time
        assert await t.resolve(CAL, first[-8:]) == first  # what `list` shows
        assert await t.resolve(CAL, first.upper()) == first
        fragment = first[-8:][:5]  # the first characters of what `list` shows
        if second[-8:].startswith(fragment):  # 1 in a million: then it must say so
            with pytest.raises(AmbiguousId, match="2 reservations"):
                await t.resolve(CAL, fragment)
        else:
            assert await t.resolve(CAL, fragment) == first
        with pytest.raises(ReservationNotFound):
            await t.resolve(CAL, first[:8])  # the shared timestamp prefix is not an id
        with pytest.raises(AmbiguousId, match=f"2 reservations: .*{second[-8:]}"):
            await t.resolve(CAL, first[:13])  # a long prefix may match, and then lists the short ids
        with pytest.raises(ReservationNotFound):
            await t.resolve(CAL, "abc")  # fewer than 4 characters never match


async def test_conflicts_respect_capacity_and_half_open_slots(tmp_path: Path) -> None:
    async with Terminal(store=tmp_path / "t.sqlite") as t:
        a = await book(t, 0)
        b = await book(t, 15)
        await book(t, 60)  # back to back with nothing: no conflict
        await book(t, 90, resource="room-2")
        await book(t, 100, resource="room-2")
        [conflict] = await t.conflicts(CAL, resource="room-1")
        assert {r.id for r in conflict.reservations} == {a, b}
        assert (conflict.start, conflict.end) == (START, START + timedelta(minutes=45))
        everything = await t.reservations(CAL)
        assert len(find_conflicts(everything, lambda resource: 2)) == 0
        assert [c.resource for c in find_conflicts(everything, lambda resource: 1)] == ["room-1", "room-2"]
        await t.cancel(CAL, b)
        assert await t.conflicts(CAL, resource="room-1") == []


def test_ledger_merge_keeps_pending_until_acknowledged() -> None:
    one, two = CalendarLedger(), CalendarLedger()
    one.clients, one.pending = {7}, {(7, 13): ("r1",), (7, 20): ("r2",)}
    two.acked = {7: 13, 9: 4}
    two.clients = {9}
    one.merge(two)
    one.prune(keep_client=7)
    assert one.pending == {(7, 20): ("r2",)}
    assert one.pending_count({7: 20}) == 1 and one.pending_ids({7: 20}) == {"r2"}
    assert one.pending_count({7: 13}) == 0 and one.pending_ids({7: 13}) == set()  # not loaded here: not ours to send
    assert one.clients == {7}  # client 9 of an earlier process is fully acknowledged
    one.acked[7] = 20
    one.prune(keep_client=7)
    assert one.covers({7: 20}) and one.pending_count({7: 20}) == 0
    assert not one.covers({7: 21})  # a write whose pending entry was lost in a crash still counts
    assert one.pending_count({7: 21}) == 1
    assert CalendarLedger.from_json(one.to_json()) == one


def test_endpoint_url_appends_the_multiplexed_path() -> None:
    assert endpoint_url("ws://h:1") == "ws://h:1/.accord/v1"
    assert endpoint_url("wss://h/base/") == "wss://h/base/.accord/v1"
    assert endpoint_url("ws://h:1/.accord/v1") == "ws://h:1/.accord/v1"
    with pytest.raises(ValueError, match="ws://"):
        endpoint_url("http://h:1")


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(initial_s=0.5, factor=2, max_s=4, jitter=0.5)
    assert [0.25 <= backoff.delay_s(0) <= 0.5, 2 <= backoff.delay_s(3) <= 4, 2 <= backoff.delay_s(60) <= 4] == [True] * 3


def test_status_text_names_what_a_rejection_conflicts_with() -> None:
    from homes import decide, take_home

    from accord.engine.calendar import Calendar
    from accord.engine.model import Decision
    from accord.terminal.format import status_text
    from accord.terminal.ids import short_id

    calendar = Calendar("clinic-1", actor="desk")
    take_home(calendar, "home")
    now = datetime(2026, 11, 30, tzinfo=UTC)
    loser = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="p", now=now)
    winner_id = "01a2157b-8e78-70f7-a5ec-62335bf90d85"
    decide(calendar, loser.id, Decision.REJECTED, reason="conflict", conflict_with=winner_id, relay_id="home")
    assert status_text(calendar.get(loser.id)) == f"rejected by {short_id(winner_id)}"
