"""The engine's per-connection Session: the sync rules every side runs, tested in memory."""

from __future__ import annotations

from datetime import UTC, datetime

from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId
from accord.engine.protocol import (
    EMPTY_UPDATE,
    Ack,
    AwarenessEntry,
    Refused,
    SyncStep1,
    SyncStep2,
    decode_awareness,
    decode_framed,
    encode_awareness,
    encode_framed,
)
from accord.engine.replica import Replica
from accord.engine.session import CalendarRequested, NothingNew, RemoteState, Session
from accord.engine.sync import AwarenessReceived, PeerSync, SyncCompleted, UpdateReceived

CAL = CalendarId("clinic-1")


class Docs:
    """Documents over a dict of replicas."""

    def __init__(self, *names: str) -> None:
        self.replicas = {CalendarId(n): Replica(n, actor="t") for n in names}

    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.replicas[calendar].state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.replicas[calendar].diff(state_vector)


def events(session: Session) -> list[object]:
    found = []
    while (event := session.next_event()) is not None:
        found.append(event)
    return found


def kinds(out: list[bytes]) -> list[tuple[str, type]]:
    return [(name, type(message)) for name, message in map(decode_framed, out)]


def test_step1_for_an_unknown_calendar_is_asked_of_the_caller_and_answered_when_it_opens() -> None:
    session = Session(Docs(CAL))
    session.receive(PeerSync().step1(CAL, b"\x00"))
    assert events(session) == [CalendarRequested(CAL), RemoteState(CAL, b"\x00")]
    assert session.data_to_send() == []  # nothing is answered before the caller decides
    session.open(CAL)
    assert kinds(session.data_to_send()) == [(CAL, SyncStep1), (CAL, SyncStep2)]  # open back, then answer
    session.receive(PeerSync().step1(CAL, b"\x00"))  # an open calendar is answered at once
    assert events(session) == [RemoteState(CAL, b"\x00")]
    assert kinds(session.data_to_send()) == [(CAL, SyncStep2)]


def test_a_refused_calendar_drops_its_queued_events_and_later_messages() -> None:
    session = Session(Docs(CAL))
    other = PeerSync()
    session.receive(other.update("clinic-9", b"\x01\x00"))
    assert events(session)[:1] == [CalendarRequested(CalendarId("clinic-9"))]
    session.receive(other.update("clinic-9", b"\x02\x00"))
    session.refuse("clinic-9", CloseCode.FORBIDDEN, "not yours")
    assert events(session) == []
    assert kinds(session.data_to_send()) == [("clinic-9", Refused)]
    session.receive(other.update("clinic-9", b"\x03\x00"))
    assert events(session) == [] and session.data_to_send() == []


def test_an_empty_update_is_acknowledged_only_once_stored_and_only_with_acks_on() -> None:
    with_acks, without = Session(Docs(CAL), send_acks=True), Session(Docs(CAL))
    for session in (with_acks, without):
        session.open(CAL)
        session.data_to_send()
        session.receive(PeerSync().step2(CAL, EMPTY_UPDATE))
    assert events(with_acks) == [NothingNew(CAL), SyncCompleted(CAL)]
    assert with_acks.data_to_send() == []  # no ACK until the caller says it is stored
    with_acks.stored(CAL, b"\x00")
    assert kinds(with_acks.data_to_send()) == [(CAL, Ack)]
    assert events(without) == [SyncCompleted(CAL)]
    without.stored(CAL, b"\x00")
    assert without.data_to_send() == []  # a relay does not acknowledge its peers


def test_updates_reach_the_caller_in_order() -> None:
    docs = Docs(CAL)
    source = Replica(CAL, actor="src")
    source.calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-1",
                         now=datetime(2026, 11, 30, 8, tzinfo=UTC))
    update = source.take_changes()[0].update
    session = Session(docs)
    session.open(CAL)
    session.receive(PeerSync().update(CAL, update))
    assert events(session) == [UpdateReceived(CAL, update, False)]


def test_awareness_gone_clears_every_presence_the_connection_announced() -> None:
    session = Session(Docs(CAL), calendar=CAL)
    session.open(CAL)
    announce = encode_awareness([AwarenessEntry(11, 3, '{"user":"a"}'), AwarenessEntry(12, 1, '{"user":"b"}')])
    leave = encode_awareness([AwarenessEntry(12, 2, "null")])
    for payload in (announce, leave):
        session.receive(PeerSync(CAL).awareness(CAL, payload))
    assert [type(e) for e in events(session)] == [AwarenessReceived, AwarenessReceived]
    ((calendar, payload),) = session.awareness_gone()
    assert calendar == CAL
    assert decode_awareness(payload) == [AwarenessEntry(11, 4, "null")]  # client 12 already left


def test_forgetting_a_calendar_asks_again_and_reopening_sends_a_fresh_step1() -> None:
    session = Session(Docs(CAL))
    session.open(CAL)
    assert kinds(session.data_to_send()) == [(CAL, SyncStep1)]
    session.forget(CAL)
    session.receive(encode_framed(CAL, SyncStep1(b"\x00")))
    assert events(session) == [CalendarRequested(CAL), RemoteState(CAL, b"\x00")]
    session.open(CAL)
    assert kinds(session.data_to_send()) == [(CAL, SyncStep1), (CAL, SyncStep2)]
