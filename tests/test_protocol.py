"""The wire protocol: two engine Sessions (over PeerSync) pumped against each other in memory,
each backed by Replica documents, plus hostile input on the receive path."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.engine.errors import CloseCode, MalformedMessage, MessageTooLarge, RemoteProtocolError
from accord.engine.model import CalendarId
from accord.engine.protocol import (
    Ack,
    Calendars,
    Refused,
    SyncStep1,
    SyncUpdate,
    covers,
    decode,
    decode_framed,
    decode_state_vector,
    encode,
    encode_framed,
    encode_state_vector,
    write_var_uint,
)
from accord.engine.replica import Replica
from accord.engine.session import CalendarRequested, NothingNew, Session
from accord.engine.sync import (
    Acknowledged,
    CalendarRefused,
    CalendarsAnnounced,
    PeerSync,
    SyncCompleted,
    SyncRequested,
    UpdateReceived,
)

CAL = "clinic-1"
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
MAX_PUMP_ROUNDS = 100


@dataclass
class Side:
    """One end of a connection: the engine's Session over its replicas, and what it has to send.

    Everything protocol-shaped (answering STEP1, opening back, acknowledging) is the shipped
    Session's; this glue only applies updates and records what it observed.
    """

    name: str
    replicas: dict[str, Replica]
    single: str | None = None
    max_message_bytes: int | None = None
    outbox: list[bytes] = field(default_factory=list)
    bytes_sent: int = 0
    completed: set[str] = field(default_factory=set)
    acked: dict[str, dict[int, int]] = field(default_factory=dict)
    session: Session = field(init=False)

    def __post_init__(self) -> None:
        # "Durably stored" is immediate in memory: both sides acknowledge what they apply.
        self.session = Session(self, calendar=self.single, send_acks=True, max_message_bytes=self.max_message_bytes)

    # Documents
    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.replicas[calendar].state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.replicas[calendar].diff(state_vector)

    def open(self, calendar: str = CAL) -> None:
        self.session.open(calendar)
        self.outbox += self.session.data_to_send()

    def push_local_changes(self, calendar: str = CAL) -> None:
        for change in self.replicas[calendar].take_changes():
            self.outbox.append(self.session.update(calendar, change.update))

    def receive(self, data: bytes) -> None:
        self.session.receive(data)
        while (event := self.session.next_event()) is not None:
            match event:
                case CalendarRequested(calendar):
                    if calendar in self.replicas:
                        self.session.open(calendar)
                    else:
                        self.session.refuse(calendar, CloseCode.NOT_FOUND, "no such calendar here")
                case UpdateReceived(calendar, update, _):
                    self.replicas[calendar].apply(update, origin=self.name)
                    self.session.stored(calendar, self.replicas[calendar].state_vector())
                case NothingNew(calendar):
                    self.session.stored(calendar, self.replicas[calendar].state_vector())
                case SyncCompleted(calendar):
                    self.completed.add(calendar)
                case Acknowledged(calendar, _, clocks):
                    self.acked[calendar] = clocks
        self.outbox += self.session.data_to_send()


def pump(a: Side, b: Side) -> int:
    """Deliver messages both ways until both outboxes are empty; return the bytes moved."""
    moved = 0
    for _ in range(MAX_PUMP_ROUNDS):
        if not a.outbox and not b.outbox:
            return moved
        for sender, receiver in ((a, b), (b, a)):
            batch, sender.outbox = sender.outbox, []
            for data in batch:
                sender.bytes_sent += len(data)
                moved += len(data)
                receiver.receive(data)
    raise AssertionError(f"not idle after {MAX_PUMP_ROUNDS} rounds")


def connect(a: Side, b: Side, calendar: str = CAL) -> int:
    """Both sides open ``calendar`` (step 1 each way) and pump until idle."""
    a.open(calendar)
    b.open(calendar)
    return pump(a, b)


def new_side(name: str, client_id: int, calendar: str = CAL) -> Side:
    return Side(name, {calendar: Replica(calendar, actor=name, client_id=client_id)})


def book_many(replica: Replica, count: int, *, prefix: str = "P") -> list[str]:
    ids = []
    for i in range(count):
        start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(minutes=30 * i)
        made = replica.calendar.book(resource=f"room-{i % 7}", start=start, end=start + timedelta(minutes=30),
                                     patient=f"{prefix}-{i}", note="first visit", now=NOW)
        ids.append(made.id)
    return ids


def doc(side: Side, calendar: str = CAL) -> dict[str, object]:
    return side.replicas[calendar].calendar.to_py()


# ---- syncing ---------------------------------------------------------------------------------


def test_empty_side_receives_everything_on_connect() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    book_many(a.replicas[CAL], 50)
    a.replicas[CAL].take_changes()
    connect(a, b)
    assert doc(b) == doc(a)
    assert len(doc(b)["reservations"]) == 50  # type: ignore[arg-type]
    assert a.completed == b.completed == {CAL}
    assert a.session.is_synced(CAL) and b.session.is_synced(CAL)


def test_two_empty_sides_sync_to_empty() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    assert doc(a) == doc(b) == {"reservations": {}, "resources": {}, "meta": {}, "homes": {}, "verdicts": {}, "receipts": {}}
    assert a.completed == b.completed == {CAL}


def test_divergent_sides_converge_on_connect() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    shared = book_many(a.replicas[CAL], 5)
    connect(a, b)
    # Offline, both write: different new bookings, and different fields of one shared booking.
    book_many(a.replicas[CAL], 3, prefix="A")
    book_many(b.replicas[CAL], 4, prefix="B")
    a.replicas[CAL].calendar.edit(shared[0], note="bring x-rays", now=NOW)
    b.replicas[CAL].calendar.reschedule(shared[0], start="2026-12-05T10:00Z", end="2026-12-05T11:00Z", now=NOW)
    b.replicas[CAL].calendar.cancel(shared[1], now=NOW)
    for side in (a, b):
        side.replicas[CAL].take_changes()  # the connection was down: nothing is pushed live

    a2, b2 = Side("a", a.replicas), Side("b", b.replicas)  # a reconnect is a new PeerSync
    connect(a2, b2)
    assert doc(a2) == doc(b2)
    assert len(doc(a2)["reservations"]) == 12  # type: ignore[arg-type]
    merged = a.replicas[CAL].calendar.get(shared[0])
    assert merged.note == "bring x-rays"
    assert merged.start == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert a.replicas[CAL].calendar.get(shared[1]).status == "cancelled"


def test_live_updates_flow_both_ways_after_sync() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    (rid,) = book_many(a.replicas[CAL], 1)
    a.push_local_changes()
    pump(a, b)
    b.replicas[CAL].calendar.edit(rid, note="late", now=NOW)
    b.push_local_changes()
    pump(a, b)
    assert a.replicas[CAL].calendar.get(rid).note == "late"
    assert doc(a) == doc(b)


def test_acknowledgement_covers_the_senders_changes() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    book_many(a.replicas[CAL], 2)
    a.push_local_changes()
    pump(a, b)
    assert covers(a.acked[CAL], a.replicas[CAL].clocks())
    assert a.session.acked(CAL) == a.acked[CAL]


def test_incremental_sync_is_far_smaller_than_the_full_state() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    ids = book_many(a.replicas[CAL], 1000)
    for rid in ids[::3]:  # overwritten keys leave a delete set, which every diff carries
        a.replicas[CAL].calendar.edit(rid, note="follow-up", now=NOW)
    a.replicas[CAL].take_changes()
    full_state = len(a.replicas[CAL].full_state())
    initial = connect(a, b)
    assert initial > full_state * 0.9  # the first sync carries (about) everything

    a.replicas[CAL].calendar.edit(ids[500], note="moved to the afternoon", now=NOW)
    a.push_local_changes()
    live = pump(a, b)
    assert live < full_state * 0.05, (live, full_state)

    a.replicas[CAL].calendar.edit(ids[501], note="offline edit", now=NOW)
    a.replicas[CAL].take_changes()
    resync = connect(Side("a", a.replicas), Side("b", b.replicas))  # reconnect after a small offline change
    assert resync < full_state * 0.05, (resync, full_state)
    assert doc(a) == doc(b)


def test_many_calendars_share_one_multiplexed_connection() -> None:
    names = ["clinic-1", "clinic-2", "site/lab.3"]
    a = Side("a", {n: Replica(n, actor="a", client_id=1) for n in names})
    b = Side("b", {n: Replica(n, actor="b", client_id=2) for n in names})
    for i, n in enumerate(names):
        book_many(a.replicas[n], i + 1, prefix=n)
        a.replicas[n].take_changes()
    for n in names:
        a.open(n)
        b.open(n)
    pump(a, b)
    for n in names:
        assert doc(b, n) == doc(a, n)
        assert len(doc(b, n)["reservations"]) == names.index(n) + 1  # type: ignore[arg-type]
    assert b.completed == set(names)


def test_single_calendar_framing_syncs_like_y_websocket() -> None:
    a = Side("a", {CAL: Replica(CAL, actor="a", client_id=1)}, single=CAL)
    b = Side("b", {CAL: Replica(CAL, actor="b", client_id=2)}, single=CAL)
    book_many(a.replicas[CAL], 3)
    a.replicas[CAL].take_changes()
    a.open()
    assert a.outbox[0][:2] == b"\x00\x00"  # y-websocket SYNC / STEP1, no calendar prefix
    b.open()
    pump(a, b)
    assert doc(a) == doc(b)


def test_single_calendar_step1_is_understood_by_pycrdt() -> None:
    replica = Replica(CAL, actor="a", client_id=1)
    book_many(replica, 2)
    sync = PeerSync(calendar=CAL)
    ours = sync.step1(CAL, pycrdt.Doc().get_state())
    reply = pycrdt.handle_sync_message(ours[1:], replica.doc)  # pycrdt's y-websocket handler
    assert reply is not None
    events = PeerSync(calendar=CAL).receive(reply)
    assert [type(e) for e in events] == [UpdateReceived, SyncCompleted]
    fresh = Replica(CAL, actor="b", client_id=2)
    fresh.apply(events[0].update)  # type: ignore[union-attr]
    assert fresh.calendar.to_py() == replica.calendar.to_py()


def test_calendar_announcements_and_refusals_round_trip() -> None:
    a, b = PeerSync(), PeerSync()
    assert b.receive(a.announce(("clinic-1", "clinic-2"))) == [CalendarsAnnounced(("clinic-1", "clinic-2"))]  # type: ignore[arg-type]
    events = b.receive(a.refuse("clinic-9", CloseCode.FORBIDDEN, "outside the token's calendars"))
    assert events == [CalendarRefused("clinic-9", 4403, "outside the token's calendars")]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [SyncStep1(b"\x01\x05\x07"), SyncUpdate(b"\x00\x00"), Ack(encode_state_vector({7: 3, 2**40: 9})),
     Calendars(("a", "b/c")), Refused(4403, "no")],  # type: ignore[arg-type]
)
def test_messages_survive_encode_and_decode(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]
    assert decode_framed(encode_framed("" if isinstance(message, Calendars) else CAL, message)) == (  # type: ignore[arg-type]
        "" if isinstance(message, Calendars) else CAL, message)


# ---- hostile input -----------------------------------------------------------------------------


def assert_still_syncs(a: Side, b: Side) -> None:
    """After a rejected message, the same PeerSync objects and replicas still sync."""
    book_many(a.replicas[CAL], 1, prefix="after")
    a.push_local_changes()
    pump(a, b)
    assert doc(a) == doc(b)


def valid_update_frame() -> bytes:
    source = Replica(CAL, actor="src", client_id=9)
    book_many(source, 1)
    return PeerSync().update(CAL, source.take_changes()[0].update)


def test_every_truncation_of_a_message_is_malformed_and_harmless() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    frame = valid_update_frame()
    before = doc(b)
    for cut in range(len(frame)):
        with pytest.raises(MalformedMessage) as info:
            b.receive(frame[:cut])
        assert info.value.close_code == CloseCode.INVALID_DATA
    assert doc(b) == before
    assert_still_syncs(a, b)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "truncated"),
        (b"\x08clinic-1\x63", "unknown message type 99"),
        (b"\x08clinic-1\x00\x07\x00", "unknown sync message type 7"),
        (encode_framed(CAL, SyncUpdate(b"\x00\x00")) + b"\x00", "trailing"),
        (b"\x08clinic-1\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 64 bits"),
        (b"\x05.evil\x00\x02\x02\x00\x00", "calendar name"),
        (b"\x02\xff\xfe\x00\x02\x02\x00\x00", "UTF-8"),
        (encode_framed("", SyncUpdate(b"\x00\x00")), "no calendar name"),
        (encode_framed(CAL, SyncStep1(b"\x05\x01")), "state vector"),
        (b"\x08clinic-1" + write_var_uint(100) + b"\x03\x09\x01\x02", "state vector"),
        (b"\x00" + write_var_uint(101) + write_var_uint(10**9), "too long"),
    ],
)
def test_garbage_is_refused_with_a_close_code_and_the_connection_state_is_kept(data: bytes, why: str) -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    counters = (b.session.messages_in, b.session.bytes_in)
    with pytest.raises(MalformedMessage, match=why) as info:
        b.receive(data)
    assert info.value.close_code == CloseCode.INVALID_DATA
    assert len(info.value.reason.encode()) <= 123
    assert b.session.is_synced(CAL)
    assert (b.session.messages_in, b.session.bytes_in) == counters  # a refused message is not counted
    assert_still_syncs(a, b)


def test_oversized_message_is_refused_before_parsing() -> None:
    a = new_side("a", 1)
    b = Side("b", {CAL: Replica(CAL, actor="b", client_id=2)}, max_message_bytes=64 * 1024)
    connect(a, b)
    big = encode_framed(CAL, SyncUpdate(b"\x00" * (64 * 1024)))
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 65536 bytes") as info:
        b.receive(big)
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG == 1009
    assert issubclass(MessageTooLarge, RemoteProtocolError)
    assert_still_syncs(a, b)


def test_garbage_update_in_a_wellformed_frame_is_refused_by_the_replica() -> None:
    a, b = new_side("a", 1), new_side("b", 2)
    connect(a, b)
    before, clocks = doc(b), b.replicas[CAL].clocks()
    with pytest.raises(MalformedMessage, match="not a Yjs update") as info:
        b.receive(encode_framed(CAL, SyncUpdate(b"\x05\xff\x13garbage")))
    assert isinstance(info.value, RemoteProtocolError)
    assert (doc(b), b.replicas[CAL].clocks()) == (before, clocks)
    assert_still_syncs(a, b)


@pytest.mark.parametrize("garbage", [b"\x01", b"\xff\xff\xff", b"garbage!", b"\x01\x01\x01\x01\x01\x01"])
def test_replica_apply_of_garbage_raises_malformed_and_leaves_the_doc_unchanged(garbage: bytes) -> None:
    replica = Replica(CAL, actor="a", client_id=1)
    book_many(replica, 2)
    replica.take_changes()
    before, state = replica.calendar.to_py(), replica.state_vector()
    with pytest.raises(MalformedMessage, match="not a Yjs update"):
        replica.apply(garbage)
    assert replica.calendar.to_py() == before
    assert replica.state_vector() == state
    assert replica.take_changes() == []


def test_replica_apply_of_a_truncated_update_leaves_the_doc_unchanged() -> None:
    source = Replica(CAL, actor="a", client_id=1)
    book_many(source, 1)
    update = source.take_changes()[0].update
    target = Replica(CAL, actor="b", client_id=2)
    for cut in range(1, len(update) - 1, 7):
        with pytest.raises(MalformedMessage):
            target.apply(update[:cut])
        assert target.calendar.to_py() == {"reservations": {}, "resources": {}, "meta": {}, "homes": {}, "verdicts": {},
                                           "receipts": {}}
    assert target.apply(update) is not None


def test_update_refused_half_way_raises_malformed_and_reports_what_was_integrated() -> None:
    source = Replica(CAL, actor="src", client_id=9)
    source.calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-1", now=NOW,
                         reservation_id="r1")
    forged = bytearray(source.take_changes()[0].update)
    forged[38] = 1  # an item's parent info now names a non-container: Yrs fails after integrating earlier items
    target = Replica(CAL, actor="b", client_id=2)
    with pytest.raises(MalformedMessage, match="not a Yjs update"):
        target.apply(bytes(forged))
    partial = target.take_changes()
    assert len(partial) == 1  # what did get integrated is reported, so a store can keep up with the document
    follower = Replica(CAL, actor="c", client_id=3)
    follower.apply(partial[0].update)
    assert follower.calendar.to_py() == target.calendar.to_py()


def test_apply_inside_a_transaction_with_another_origin_is_the_callers_bug_not_the_peers() -> None:
    replica = Replica(CAL, actor="a", client_id=1)
    _, message = decode_framed(valid_update_frame())
    assert isinstance(message, SyncUpdate)
    with replica.doc.transaction(origin="local"), pytest.raises(RuntimeError, match="origin"):
        replica.apply(message.update, origin="peer")


def test_replica_diff_of_a_garbage_state_vector_raises_malformed() -> None:
    with pytest.raises(MalformedMessage, match="state vector"):
        Replica(CAL).diff(b"\x09\x01")


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64), single=st.booleans())
def test_random_bytes_into_receive_raise_only_remote_protocol_errors(data: bytes, single: bool) -> None:
    sync = PeerSync(calendar=CAL) if single else PeerSync()
    try:
        sync.receive(data)
    except RemoteProtocolError as exc:
        assert exc.close_code in (CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG, CloseCode.PROTOCOL_ERROR)


FRAME = valid_update_frame()


@settings(max_examples=300, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, len(FRAME) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, len(FRAME)),
)
def test_mutated_messages_raise_only_remote_protocol_errors_and_never_corrupt_the_replica(
    flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(FRAME)
    for pos, value in flips:
        data[pos] = value
    sync, replica = PeerSync(), Replica(CAL, actor="b", client_id=2)
    try:
        for event in sync.receive(bytes(data[:cut] if cut < len(FRAME) // 2 else data)):
            if isinstance(event, UpdateReceived):
                replica.apply(event.update)
            elif isinstance(event, SyncRequested):
                replica.diff(event.state_vector)
    except RemoteProtocolError:
        pass
    replica.calendar.to_py()  # still readable
    decode_state_vector(replica.state_vector())


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([CAL, "a", "x" * 127, "x" * 128, ".bad", ""]),
    payload=st.binary(max_size=300),
    tail=st.binary(max_size=3),
    cut=st.integers(0, 4),
)
def test_the_fast_update_path_agrees_with_the_full_decoder(name: str, payload: bytes, tail: bytes, cut: int) -> None:
    frame = encode_framed(name, SyncUpdate(payload)) + tail
    frame = frame[: len(frame) - cut] if cut else frame
    sync = PeerSync()
    try:
        expected: object = decode_framed(frame)
    except RemoteProtocolError as exc:
        expected = type(exc)
    try:
        got: object = sync.receive(frame)
    except RemoteProtocolError as exc:
        got = type(exc)
    if isinstance(expected, tuple):
        assert got == [UpdateReceived(expected[0], expected[1].update, False)]  # type: ignore[arg-type]
    else:
        assert got == expected
