"""Calendars of any size sync within bounded messages (issue 13, item 1).

A sync answer larger than an eighth of the message limit goes in pieces (engine/update_pieces.py):
to a new terminal, a new peer relay and a stock Yjs client, and from a terminal that booked
offline. The large cases run against real relays on a calendar stored once per session (built
in-process in one transaction per writer, then stored through the storage API), with the default
8 MiB limit; each counts the messages that carried it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pycrdt import Doc, Map
from relays import relay_config
from test_interop_yjs import NodeEnv, node_env, run_yclient  # noqa: F401  (node_env is a fixture)

from accord.engine.calendar import Calendar
from accord.engine.errors import MalformedMessage
from accord.engine.model import CalendarId
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES, decode_framed, decode_state_vector, piece_bytes
from accord.engine.replica import Replica
from accord.engine.session import Acknowledged, Session, SyncCompleted, UpdateReceived
from accord.engine.storage import CompactionPolicy, SqliteStorage
from accord.engine.update_pieces import split_update
from accord.engine.update_policy import UpdatePolicy
from accord.relay.server import Relay
from accord.terminal import Terminal
from accord.terminal.store import TerminalStore

CALENDAR = CalendarId("clinic-big")
BIG = 50_000
UPLOAD = 20_000
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
STAMP = "2026-11-30T08:00:00Z"
SYNC_TIMEOUT_S = 60.0


# ---- a large calendar, built once ------------------------------------------------------------------


def reservation_id(i: int) -> str:
    return f"0193{i >> 16:04x}-{i & 0xFFFF:04x}-7000-8000-{i:012x}"


def build_calendar(n: int) -> tuple[bytes, dict[int, int]]:
    """A calendar of ``n`` reservations as one update, and its state vector: desk 1 booked them
    (one transaction), desk 2 then cancelled every 50th and rewrote the note of every 50th + 1 (so
    pieces carry another client's items that name desk 1's, and a delete set)."""
    desk1 = Doc(client_id=1001)
    reservations = desk1.get("reservations", type=Map)
    with desk1.transaction():
        for i in range(n):
            start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=15 * (i // 20))
            rid = reservation_id(i)
            reservations[rid] = Map({
                "id": rid, "calendar": CALENDAR, "resource": f"room-{i % 20}",
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": (start + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "patient": f"P-{i:06d}", "service": "checkup", "note": "", "requested_at": STAMP,
                "created_by": "desk-1", "created_at": STAMP, "updated_by": "desk-1", "updated_at": STAMP,
            })
    desk2 = Doc(client_id=2002)
    desk2.apply_update(desk1.get_update())
    theirs = desk2.get("reservations", type=Map)
    with desk2.transaction():
        for i in range(0, n, 50):
            entry = theirs[reservation_id(i)]
            entry["cancelled_at"] = STAMP
            entry["cancel_reason"] = "patient called"
            entry["updated_by"] = "desk-2"
        for i in range(1, n, 50):
            theirs[reservation_id(i)]["note"] = "moved to the afternoon"
    return desk2.get_update(), decode_state_vector(desk2.get_state())


@pytest.fixture(scope="session")
def big_calendar() -> tuple[bytes, dict[int, int]]:
    return build_calendar(BIG)


async def store_calendar(path: Path, state: bytes) -> None:
    storage = await SqliteStorage.open(path)
    try:
        await storage.append(CALENDAR, state)
    finally:
        await storage.close()


@pytest.fixture
async def big_relay_db(tmp_path: Path, big_calendar: tuple[bytes, dict[int, int]]) -> Path:
    """Relay r1's database (relay_config's path) holding the big calendar."""
    path = tmp_path / "r1.sqlite"
    await store_calendar(path, big_calendar[0])
    return path


# ---- the pieces themselves (in memory) ---------------------------------------------------------------


def test_pieces_apply_in_order_and_each_passes_the_relays_policy() -> None:
    state, _ = build_calendar(2000)
    for budget in (600, 20_000, 200_000):
        pieces = split_update(state, budget)
        assert len(pieces) > 1
        assert max(len(p) for p in pieces) <= budget
        replica = Replica(CALENDAR, actor="new")
        policy = UpdatePolicy.from_update(replica.full_state())
        for piece in pieces:
            assert policy.violations(piece) == [], budget  # nothing missing, nothing forbidden
            change = replica.apply(piece)
            if change is not None:
                policy.observe(change.update)
        assert replica.full_state() == state


def test_a_diff_from_a_partial_replica_comes_in_pieces_too() -> None:
    state, _ = build_calendar(2000)
    pieces = split_update(state, 20_000)
    partial = Replica(CALENDAR, actor="partial")
    for piece in pieces[: len(pieces) // 2]:
        partial.apply(piece)
    source = Replica(CALENDAR)
    source.apply(state)
    diff = source.diff(partial.state_vector())
    policy = UpdatePolicy.from_update(partial.full_state())
    rest = split_update(diff, 20_000)
    assert len(rest) > 1
    for piece in rest:
        assert policy.violations(piece) == []
        change = partial.apply(piece)
        if change is not None:
            policy.observe(change.update)
    assert partial.full_state() == state


def test_an_update_that_fits_and_an_unreadable_one_are_passed_whole() -> None:
    assert split_update(b"\x00\x00", 100) == [b"\x00\x00"]
    garbage = b"\x05" + b"\xff" * 300
    assert split_update(garbage, 100) == [garbage]
    with pytest.raises(ValueError):
        split_update(garbage, 10)


class _Docs:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.replica.state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.replica.diff(state_vector)


def test_a_pieced_answer_is_synced_after_the_last_piece_and_acknowledged_once_all_is_stored() -> None:
    state, _ = build_calendar(3000)
    limit = 128 * 1024
    sender_replica, receiver_replica = Replica(CALENDAR, actor="terminal"), Replica(CALENDAR, actor="relay")
    sender_replica.apply(state)
    sender = Session(_Docs(sender_replica), max_message_bytes=limit)
    receiver = Session(_Docs(receiver_replica), send_acks=True, max_message_bytes=limit)
    receiver.open(CALENDAR)
    sender.open(CALENDAR)
    sender.data_to_send()  # the sender's own STEP1: not delivered, so the receiver sends nothing back
    sender.receive(receiver.data_to_send()[0])  # the receiver's STEP1, answered at once
    while sender.next_event() is not None:
        pass
    messages = sender.data_to_send()
    assert len(messages) > 1 and max(len(m) for m in messages) <= limit

    acks: list[bytes] = []
    events: list[object] = []
    for message in messages:
        receiver.receive(message)
        while (event := receiver.next_event()) is not None:
            events.append(event)
            if isinstance(event, UpdateReceived):
                change = receiver_replica.apply(event.update)
                assert change is not None
                receiver.stored(CALENDAR, change.state_vector)  # stored piece by piece
                acks += receiver.data_to_send()
    assert [type(e) for e in events[-2:]] == [UpdateReceived, SyncCompleted]
    assert sum(isinstance(e, SyncCompleted) for e in events) == 1
    assert len(acks) == 1  # one ACK, after the last piece, covering everything
    sender.receive(acks[0])
    acknowledged = sender.next_event()
    assert isinstance(acknowledged, Acknowledged)
    assert acknowledged.clocks == sender_replica.clocks()
    assert receiver_replica.full_state() == state


def test_a_local_update_larger_than_a_piece_is_sent_in_pieces() -> None:
    state, _ = build_calendar(1000)
    limit = 64 * 1024
    session = Session(_Docs(Replica(CALENDAR)), max_message_bytes=limit)
    session.send_update(CALENDAR, state)
    frames = session.data_to_send()
    assert len(frames) > 1 and max(len(f) for f in frames) <= limit
    replica = Replica(CALENDAR)
    for frame in frames:
        replica.apply(decode_framed(frame)[1].update)  # type: ignore[union-attr]
    assert replica.full_state() == state


def test_piece_size_derives_from_the_limit() -> None:
    assert piece_bytes(DEFAULT_MAX_MESSAGE_BYTES) == 1024 * 1024 - 4096
    assert piece_bytes(1024) == 4096
    # A stock y-websocket client takes messages of any size: its pieces use this side's whole limit,
    # so a 4 MB answer goes in one message (splitting it would only cost time), not five.
    from accord.engine.session import Session

    class Empty:
        def state_vector(self, calendar: str) -> bytes:
            return b"\x00"

        def diff(self, calendar: str, state_vector: bytes) -> bytes:
            return b""

    assert Session(Empty(), calendar=CALENDAR).piece_bytes == DEFAULT_MAX_MESSAGE_BYTES - 4096
    assert Session(Empty()).piece_bytes == piece_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    with pytest.raises(MalformedMessage):
        decode_framed(b"\x03abc" + bytes([103]) + b"\x02\x05\x05\x00")  # a bad announced state vector


# ---- real relays, default limits ------------------------------------------------------------------------


def holds_all_of_it(terminal: Terminal, clocks: dict[int, int]) -> bool:
    """The terminal's replica has every operation of the big calendar, and its last reservation
    (desk 1's), cancelled (desk 2's) and edited ones read as such."""
    last = terminal.peek(CALENDAR, reservation_id(BIG - 1))
    cancelled, moved = terminal.peek(CALENDAR, reservation_id(0)), terminal.peek(CALENDAR, reservation_id(1))
    return (decode_state_vector(terminal.link_state_vector(CALENDAR)) == clocks and last is not None
            and last.patient == f"P-{BIG - 1:06d}" and cancelled is not None and str(cancelled.status) == "cancelled"
            and moved is not None and moved.note == "moved to the afternoon")


@pytest.mark.slow
async def test_a_50k_calendar_cold_syncs_to_a_new_terminal_in_messages_under_the_limit(
        tmp_path: Path, big_relay_db: Path, big_calendar: tuple[bytes, dict[int, int]]) -> None:
    clocks = big_calendar[1]
    async with Relay(relay_config(tmp_path, "r1")) as relay, \
            Terminal(relay=relay.url, store=tmp_path / "new-desk.sqlite", name="new-desk") as desk:
        await desk.open(CALENDAR)
        await desk.synced(timeout=SYNC_TIMEOUT_S)  # returns once the last piece is in

        assert holds_all_of_it(desk, clocks)
        assert desk.status().calendars[0].pulled
        assert desk.link is not None
        assert desk.link.messages_in > 1
        assert desk.link.largest_in < DEFAULT_MAX_MESSAGE_BYTES
    async with Terminal(store=tmp_path / "new-desk.sqlite", name="new-desk") as offline:  # every piece was stored
        assert holds_all_of_it(offline, clocks)


@pytest.mark.slow
async def test_a_50k_calendar_cold_syncs_to_a_new_peer_relay_in_messages_under_the_limit(
        tmp_path: Path, big_relay_db: Path, big_calendar: tuple[bytes, dict[int, int]]) -> None:
    clocks = big_calendar[1]
    async with Relay(relay_config(tmp_path, "r1")) as r1, \
            Relay(relay_config(tmp_path, "r2", peers=[r1.url])) as r2:
        await r2.wait_for(lambda: CALENDAR in r2.calendars.loaded
                          and r2.calendars.loaded[CALENDAR].replica.clocks() == clocks, SYNC_TIMEOUT_S)
        await r2.wait_committed(CALENDAR, r2.calendars.loaded[CALENDAR].replica.state_vector(), SYNC_TIMEOUT_S)

        assert len(r2.calendars.loaded[CALENDAR].replica.calendar.reservations) == BIG
        link = next(c for c in r2.connections if c.is_peer)
        assert link.session.messages_in > 1
        assert link.session.largest_in < DEFAULT_MAX_MESSAGE_BYTES
        assert 'reason="missing_dependency"' not in r2.render_metrics()  # no piece came before what it needs


@pytest.mark.slow
@pytest.mark.node
async def test_a_50k_calendar_cold_syncs_to_a_stock_yjs_client_in_messages_under_the_limit(
        node_env: NodeEnv, tmp_path: Path, big_relay_db: Path) -> None:  # noqa: F811
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        run = await run_yclient(node_env, "pull", "--url", relay.url, "--calendar", CALENDAR)

    assert run.code == 0, f"yclient.mjs failed: {run.events} {run.stderr[-2000:]}"
    pulled = run.first("pulled")
    assert pulled["reservations"] == BIG
    assert pulled["messages"] > 1
    assert pulled["largest"] < DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.slow
async def test_a_terminal_uploads_20k_offline_bookings_in_messages_under_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "desk.sqlite"
    await offline_bookings(path, UPLOAD)
    async with Relay(relay_config(tmp_path, "r1")) as relay, \
            Terminal(relay=relay.url, store=path, name="desk-1") as desk:
        assert desk.status().pending == 1
        await desk.synced(timeout=SYNC_TIMEOUT_S)

        assert desk.status().pending == 0
        assert len(relay.calendars.loaded[CALENDAR].replica.calendar.reservations) == UPLOAD
        terminal = next(c for c in relay.connections if not c.is_peer)
        assert terminal.session.bytes_in > DEFAULT_MAX_MESSAGE_BYTES  # one message could not have carried it
        assert terminal.session.messages_in > 1
        assert terminal.session.largest_in < DEFAULT_MAX_MESSAGE_BYTES


async def offline_bookings(path: Path, count: int) -> None:
    """A terminal store at ``path`` holding ``count`` bookings made offline, in one transaction."""
    store = TerminalStore(path, "desk-1", has_relay=True, compaction=CompactionPolicy())
    await store.open()
    try:
        await store.open_calendar(CALENDAR)

        def book_all(calendar: Calendar) -> None:
            with calendar.doc.transaction(origin=calendar.origin):
                for i in range(count):
                    start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=15 * (i // 20))
                    calendar.book(resource=f"room-{i % 20}", start=start, end=start + timedelta(minutes=15),
                                  patient=f"P-{i:06d}", now=NOW)

        await store.write(CALENDAR, book_all)
    finally:
        await store.close()


async def test_a_lowered_message_limit_on_relay_and_terminals_is_kept_both_ways(tmp_path: Path) -> None:
    limit = 128 * 1024
    await offline_bookings(tmp_path / "desk.sqlite", 1500)  # ~0.7 MB: several pieces of 12 KiB
    async with Relay(relay_config(tmp_path, "r1", max_message_bytes=limit)) as relay:
        async with Terminal(relay=relay.url, store=tmp_path / "desk.sqlite", name="desk-1",
                            max_message_bytes=limit) as desk:
            await desk.synced(timeout=SYNC_TIMEOUT_S)
            uploaded = next(c for c in relay.connections if not c.is_peer)
            assert uploaded.session.messages_in > 10 and uploaded.session.largest_in <= limit
        async with Terminal(relay=relay.url, store=tmp_path / "new.sqlite", name="new-desk",
                            max_message_bytes=limit) as new:
            await new.open(CALENDAR)
            await new.synced(timeout=SYNC_TIMEOUT_S)
            assert new.link is not None
            assert new.link.messages_in > 10 and new.link.largest_in <= limit
            assert len(await new.reservations(CALENDAR)) == 1500


def test_the_terminal_cli_takes_a_message_limit_and_refuses_a_tiny_one(capsys: pytest.CaptureFixture[str]) -> None:
    from accord.terminal.cli import build_parser, main

    assert build_parser().parse_args(["sync", "--max-message-bytes", "16777216"]).max_message_bytes == 16 * 1024 * 1024
    assert build_parser().parse_args(["sync"]).max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert main(["sync", "--max-message-bytes", "10"]) == 2
    assert "at least 65536" in capsys.readouterr().err


async def test_a_large_answer_is_cut_off_the_event_loop_and_what_comes_meanwhile_waits_behind_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cutting a big diff is pure Python and takes ~0.7 s per 50k reservations: the relay does it
    in a worker thread, so it serves everyone else meanwhile, and a change forwarded to the same
    connection in between goes out after the answer it builds on."""
    import asyncio
    import threading

    import accord.relay.connection as connection_module

    limit = 128 * 1024
    await offline_bookings(tmp_path / "desk.sqlite", 600)
    cutting, release = threading.Event(), threading.Event()
    threads: list[bool] = []

    def slow_cut(update: bytes, max_bytes: int) -> list[bytes]:
        threads.append(threading.current_thread() is threading.main_thread())
        cutting.set()
        release.wait(10)  # held until the test has written something meanwhile
        return split_update(update, max_bytes)

    monkeypatch.setattr(connection_module, "split_update", slow_cut)
    async with Relay(relay_config(tmp_path, "r1", max_message_bytes=limit)) as relay:
        async with Terminal(relay=relay.url, store=tmp_path / "desk.sqlite", name="desk-1",
                            max_message_bytes=limit) as desk:
            await desk.synced(timeout=SYNC_TIMEOUT_S)
            async with Terminal(relay=relay.url, store=tmp_path / "new.sqlite", name="new-desk",
                                max_message_bytes=limit) as new:
                await new.open(CALENDAR)
                await asyncio.to_thread(cutting.wait, 10)
                # The event loop is free while the cut runs: the desk's edit is stored and acknowledged.
                first = (await desk.reservations(CALENDAR))[0].id
                await desk.edit(CALENDAR, first, note="written while the answer was being cut")
                await desk.synced(timeout=SYNC_TIMEOUT_S)
                release.set()
                await new.synced(timeout=SYNC_TIMEOUT_S)
                await new.wait_for(lambda: new.peek(CALENDAR, first) is not None
                                   and new.peek(CALENDAR, first).note.startswith("written while"), SYNC_TIMEOUT_S)
                assert len(await new.reservations(CALENDAR)) == 600
    assert threads and not any(threads)  # every cut ran in a worker thread
