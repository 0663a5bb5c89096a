"""The reservation model through engine.calendar.Calendar: lifecycle round trips, validation
messages, refused transitions, time normalisation, ids and the derived status rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from homes import decide, take_home

from accord.engine.authority import RelayKey
from accord.engine.calendar import Calendar
from accord.engine.errors import (
    InvalidCalendarName,
    InvalidReservation,
    InvalidTransition,
    ReservationNotFound,
    ValidationError,
)
from accord.engine.model import UNDECIDED, Decision, DecisionState, Slot, Status, derive_status, new_reservation_id
from accord.engine.replica import Replica

START = "2026-12-01T09:00:00Z"
END = "2026-12-01T09:30:00Z"


def book(calendar: Calendar, now: datetime, **overrides: object):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {"resource": "room-1", "start": START, "end": END, "patient": "P-0042", "now": now}
    fields.update(overrides)
    return calendar.book(**fields)  # type: ignore[arg-type]


@pytest.fixture
def calendar() -> Calendar:
    return Calendar("clinic-1", actor="desk-1")


# ---- round trips ---------------------------------------------------------------------------


def test_booking_round_trips_every_field(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now, service="checkup", note="bring x-rays")
    got = calendar.get(made.id)
    assert got == made
    assert got.status is Status.BOOKED
    assert got.requested == Slot("room-1", datetime(2026, 12, 1, 9, 0, tzinfo=UTC), datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    assert (got.patient, got.service, got.note) == ("P-0042", "checkup", "bring x-rays")
    assert (got.created_by, got.created_at, got.updated_by, got.updated_at) == ("desk-1", now, "desk-1", now)
    assert got.calendar == "clinic-1"
    assert [r.id for r in calendar.list()] == [made.id]


def test_reschedule_moves_the_slot_and_records_who_and_when(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    later = now + timedelta(minutes=5)
    moved = calendar.reschedule(made.id, start="2026-12-02T10:00Z", end="2026-12-02T11:00Z", resource="room-2", now=later)
    assert moved.slot == Slot("room-2", datetime(2026, 12, 2, 10, tzinfo=UTC), datetime(2026, 12, 2, 11, tzinfo=UTC))
    assert moved.status is Status.BOOKED
    assert (moved.updated_at, moved.created_at) == (later, now)
    assert calendar.get(made.id) == moved


def test_edit_changes_only_the_fields_given(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now, service="checkup", note="old")
    edited = calendar.edit(made.id, note="new", now=now)
    assert (edited.note, edited.service, edited.patient) == ("new", "checkup", "P-0042")


def test_cancel_keeps_the_record_with_its_reason(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    cancelled = calendar.cancel(made.id, reason="patient called", now=now)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.reason == "patient called"
    assert calendar.get(made.id).status is Status.CANCELLED
    assert [r.id for r in calendar.list(statuses=[Status.CANCELLED])] == [made.id]


def test_check_in_then_fulfil(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    assert calendar.check_in(made.id, now=now).status is Status.CHECKED_IN
    assert calendar.fulfil(made.id, now=now + timedelta(minutes=30)).status is Status.FULFILLED
    assert calendar.get(made.id).status is Status.FULFILLED


def test_booked_reservation_can_be_fulfilled_without_check_in(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    assert calendar.fulfil(made.id, now=now).status is Status.FULFILLED


def test_no_show_is_recorded(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    assert calendar.no_show(made.id, now=now).status is Status.NOSHOW
    assert calendar.get(made.id).status is Status.NOSHOW


def test_entered_in_error_closes_any_reservation(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    calendar.fulfil(made.id, now=now)
    closed = calendar.mark_entered_in_error(made.id, reason="wrong patient", now=now)
    assert closed.status is Status.ENTERED_IN_ERROR
    assert closed.reason == "wrong patient"


def test_list_filters_by_resource_and_time_and_sorts_by_start(calendar: Calendar, now: datetime) -> None:
    late = book(calendar, now, start="2026-12-01T11:00Z", end="2026-12-01T12:00Z")
    early = book(calendar, now, start="2026-12-01T08:00Z", end="2026-12-01T09:00Z")
    other = book(calendar, now, resource="room-2")
    assert [r.id for r in calendar.list(resource="room-1")] == [early.id, late.id]
    assert [r.id for r in calendar.list(between=("2026-12-01T09:00Z", "2026-12-01T10:00Z"))] == [other.id]


def test_unknown_reservation_is_reported_with_its_id(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(ReservationNotFound, match="no-such-id"):
        calendar.cancel("no-such-id", now=now)


# ---- validation ----------------------------------------------------------------------------


def test_end_not_after_start_is_refused_with_both_times(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match=r"end 2026-12-01T09:00:00Z is not after start 2026-12-01T09:30:00Z"):
        book(calendar, now, start=END, end=START)
    with pytest.raises(InvalidReservation, match="not after start"):
        book(calendar, now, start=START, end=START)
    assert calendar.list() == []


def test_naive_datetime_is_refused_with_a_hint_to_add_an_offset(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match=r"no UTC offset; add one"):
        book(calendar, now, start=datetime(2026, 12, 1, 9), end=datetime(2026, 12, 1, 10))
    with pytest.raises(InvalidReservation, match="no UTC offset"):
        book(calendar, now, start="2026-12-01T09:00:00", end="2026-12-01T10:00:00")


def test_naive_now_is_refused(calendar: Calendar) -> None:
    with pytest.raises(InvalidReservation, match="no UTC offset"):
        book(calendar, datetime(2026, 11, 30, 8, 0))
    assert calendar.list() == []


@pytest.mark.parametrize("text", ["tomorrow", "2026-13-01T09:00Z", "2026-12-01 nine o'clock", ""])
def test_bad_rfc3339_is_refused_with_an_example(calendar: Calendar, now: datetime, text: str) -> None:
    with pytest.raises(InvalidReservation, match=r"is not RFC 3339; write it like 2026-12-01T09:30:00\+01:00"):
        book(calendar, now, start=text)


def test_too_long_note_is_refused_with_length_and_limit(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match="note is 2001 characters long; the limit is 2000"):
        book(calendar, now, note="x" * 2001)
    book(calendar, now, note="x" * 2000)  # the limit itself is fine


def test_too_long_patient_is_refused(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match="patient is 257 characters long; the limit is 256"):
        book(calendar, now, patient="p" * 257)


def test_missing_patient_is_refused(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match="patient is required"):
        book(calendar, now, patient="  ")


def test_too_long_note_in_an_edit_leaves_the_reservation_unchanged(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now, note="short")
    with pytest.raises(InvalidReservation, match="the limit is 2000"):
        calendar.edit(made.id, note="y" * 5000, now=now)
    assert calendar.get(made.id).note == "short"


@pytest.mark.parametrize("resource", ["", "room 1", "room/1", "r" * 65, "räum"])
def test_bad_resource_id_is_refused_with_allowed_characters(calendar: Calendar, now: datetime, resource: str) -> None:
    with pytest.raises(InvalidReservation, match=r"resource id .* is invalid: use 1-64 characters of A-Z a-z 0-9 \. _ -"):
        book(calendar, now, resource=resource)


@pytest.mark.parametrize("name", ["", ".hidden", "a b", "x" * 129, "clinic/../etc", "-dash", "ümlaut"])
def test_bad_calendar_name_is_refused_with_allowed_characters(name: str) -> None:
    with pytest.raises(InvalidCalendarName, match=r"use 1-128 characters of A-Z a-z 0-9 \. _ - /"):
        Calendar(name)


@pytest.mark.parametrize("name", ["clinic-1", "site/clinic_2.a", "X" * 128])
def test_good_calendar_names_are_accepted(name: str) -> None:
    assert Calendar(name).name == name


def test_validation_errors_share_one_base_class() -> None:
    assert issubclass(InvalidReservation, ValidationError)
    assert issubclass(InvalidCalendarName, ValidationError)


def test_span_over_31_days_is_refused(calendar: Calendar, now: datetime) -> None:
    with pytest.raises(InvalidReservation, match="at most 31 days"):
        book(calendar, now, start="2026-12-01T00:00Z", end="2027-01-02T00:00Z")


# ---- refused transitions -------------------------------------------------------------------


def test_cancelled_reservation_cannot_be_checked_in(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    calendar.cancel(made.id, now=now)
    with pytest.raises(InvalidTransition, match=rf"cannot check in reservation {made.id} \(cancelled\): it is cancelled"):
        calendar.check_in(made.id, now=now)
    assert calendar.get(made.id).status is Status.CANCELLED


def test_fulfilled_reservation_cannot_be_rescheduled(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    calendar.fulfil(made.id, now=now)
    with pytest.raises(InvalidTransition, match=rf"cannot reschedule reservation {made.id} \(fulfilled\)"):
        calendar.reschedule(made.id, start="2026-12-03T09:00Z", end="2026-12-03T10:00Z", now=now)
    assert calendar.get(made.id).start == made.start


@pytest.mark.parametrize(
    ("close", "refused"),
    [
        ("cancel", "cancel"),
        ("cancel", "no_show"),
        ("no_show", "check_in"),
        ("mark_entered_in_error", "fulfil"),
        ("fulfil", "cancel"),
    ],
)
def test_closed_reservations_refuse_further_moves(calendar: Calendar, now: datetime, close: str, refused: str) -> None:
    made = book(calendar, now)
    getattr(calendar, close)(made.id, now=now)
    before = calendar.to_py()
    with pytest.raises(InvalidTransition, match=rf"^cannot .* reservation {made.id} "):
        getattr(calendar, refused)(made.id, now=now)
    assert calendar.to_py() == before


def test_pending_reservation_cannot_be_checked_in(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    made = book(calendar, now)
    with pytest.raises(InvalidTransition, match="wait for the decision"):
        calendar.check_in(made.id, now=now)


# ---- times and ids -------------------------------------------------------------------------


def test_times_with_an_offset_are_stored_in_utc(calendar: Calendar, now: datetime) -> None:
    new_york = timezone(timedelta(hours=-5))
    made = book(calendar, now, start="2026-12-01T10:00:00+01:00", end=datetime(2026, 12, 1, 5, 30, tzinfo=new_york))
    stored = calendar.to_py()["reservations"][made.id]
    assert (stored["start"], stored["end"]) == ("2026-12-01T09:00:00Z", "2026-12-01T10:30:00Z")
    assert made.start == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert made.start.utcoffset() == timedelta(0)


def test_lowercase_z_and_fractional_seconds_are_normalised(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now, start="2026-12-01t09:00:00.750z", end="2026-12-01T09:30:00.1Z")
    stored = calendar.to_py()["reservations"][made.id]
    assert (stored["start"], stored["end"]) == ("2026-12-01T09:00:00Z", "2026-12-01T09:30:00Z")


def test_ids_are_uuidv7_carrying_the_booking_time(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    parsed = uuid.UUID(made.id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert int(parsed.hex[:12], 16) == int(now.timestamp() * 1000)


def test_ids_are_unique_even_within_one_millisecond(now: datetime) -> None:
    ids = {new_reservation_id(now) for _ in range(5000)}
    assert len(ids) == 5000
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_ids_sort_by_creation_time(now: datetime) -> None:
    earlier = new_reservation_id(now)
    later = new_reservation_id(now + timedelta(milliseconds=1))
    assert earlier < later


def test_duplicate_reservation_id_is_refused(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    with pytest.raises(InvalidReservation, match="already exists"):
        book(calendar, now, reservation_id=made.id)


# ---- derived status ------------------------------------------------------------------------


def test_without_home_new_bookings_are_booked(calendar: Calendar, now: datetime) -> None:
    assert calendar.home is None
    assert book(calendar, now).status is Status.BOOKED


def test_with_home_new_bookings_are_pending(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    made = book(calendar, now)
    assert made.status is Status.PENDING
    assert made.booked is None


def test_home_verdicts_make_a_pending_request_booked_or_rejected(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    accepted = book(calendar, now)
    refused = book(calendar, now)
    decide(calendar, accepted.id, Decision.BOOKED)
    decide(calendar, refused.id, Decision.REJECTED, reason="conflict", conflict_with=accepted.id)
    got = calendar.get(accepted.id)
    assert got.status is Status.BOOKED
    assert got.booked == got.requested
    assert got.decided_by == "relay-a"
    rejected = calendar.get(refused.id)
    assert rejected.status is Status.REJECTED
    assert (rejected.reason, rejected.conflict_with) == ("conflict", accepted.id)


def test_a_verdict_not_signed_by_the_home_or_copied_from_another_reservation_is_not_a_decision(
        calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    victim, other = book(calendar, now), book(calendar, now)
    decide(calendar, victim.id, Decision.BOOKED, key=RelayKey.generate())  # an impostor's key
    assert calendar.get(victim.id).status is Status.PENDING
    genuine = decide(calendar, other.id, Decision.BOOKED)
    with calendar.doc.transaction():  # the genuine verdict of `other`, copied under `victim`
        calendar.verdicts[genuine.replace(other.id, victim.id, 1)] = calendar.verdicts[genuine]
    assert calendar.get(victim.id).status is Status.PENDING
    assert calendar.get(other.id).status is Status.BOOKED


def test_a_released_booking_stays_cancelled_even_if_its_mark_is_lost(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    made = book(calendar, now)
    decide(calendar, made.id, Decision.BOOKED)
    calendar.cancel(made.id, now=now)
    decide(calendar, made.id, Decision.RELEASED)
    del calendar.reservations[made.id]["cancelled_at"]  # what a hostile writer would try
    assert calendar.get(made.id).status is Status.CANCELLED
    assert calendar.get(made.id).booked is None


def test_a_mark_counts_when_present_whatever_its_value(calendar: Calendar, now: datetime) -> None:
    made = book(calendar, now)
    calendar.cancel(made.id, now=now)
    calendar.reservations[made.id]["cancelled_at"] = ""  # an overwrite cannot un-cancel
    assert calendar.get(made.id).status is Status.CANCELLED


def test_a_rejection_of_an_older_request_leaves_the_new_one_pending(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    made = book(calendar, now)
    decide(calendar, made.id, Decision.REJECTED, reason="conflict")
    moved = calendar.reschedule(made.id, start="2026-12-01T10:00:00Z", end="2026-12-01T11:00:00Z", now=now)
    assert moved.status is Status.PENDING


@pytest.mark.parametrize(
    ("mark", "expected"),
    [
        ("cancelled_at", Status.CANCELLED),
        ("checked_in_at", Status.CHECKED_IN),
        ("fulfilled_at", Status.FULFILLED),
        ("noshow_at", Status.NOSHOW),
        ("entered_in_error_at", Status.ENTERED_IN_ERROR),
    ],
)
@pytest.mark.parametrize(
    "decided", [UNDECIDED, DecisionState(Decision.BOOKED, ("room-1", START, END), seq=1),
                DecisionState(Decision.REJECTED, seq=1)],
)
@pytest.mark.parametrize("has_home", [True, False])
def test_lifecycle_marks_win_over_decisions(mark: str, expected: Status, decided: DecisionState, has_home: bool) -> None:
    fields = {"start": "2026-12-01T09:00:00Z", "end": "2026-12-01T09:30:00Z", "resource": "room-1",
              mark: "2026-11-30T08:00:00Z"}
    assert derive_status(fields, has_home=has_home, decided=decided) is expected


def test_cancel_beats_a_later_check_in_mark_in_precedence() -> None:
    both = {"cancelled_at": "2026-11-30T08:00:00Z", "checked_in_at": "2026-11-30T08:05:00Z"}
    assert derive_status(both, has_home=False) is Status.CANCELLED
    assert derive_status({**both, "entered_in_error_at": "2026-11-30T09:00:00Z"}, has_home=False) is Status.ENTERED_IN_ERROR


def test_a_cancelled_reservation_stays_cancelled_after_a_concurrent_booking_decision(calendar: Calendar, now: datetime) -> None:
    take_home(calendar)
    made = book(calendar, now)
    calendar.cancel(made.id, now=now)
    decide(calendar, made.id, Decision.BOOKED)  # decided before the cancel reached the home
    assert calendar.get(made.id).status is Status.CANCELLED


def test_a_calendar_assuming_a_home_shows_new_bookings_pending_and_refuses_check_in(now: datetime) -> None:
    calendar = Calendar("clinic-1", actor="desk", assume_home=True)
    reservation = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                                patient="P-1", now=now)
    assert reservation.status is Status.PENDING
    with pytest.raises(InvalidTransition, match="pending"):
        calendar.check_in(reservation.id, now=now)
    calendar.assume_home = False
    assert calendar.get(reservation.id).status is Status.BOOKED


def test_a_half_written_booked_slot_reads_as_no_slot_instead_of_crashing() -> None:
    replica = Replica("clinic-1", actor="desk")
    rid = replica.calendar.book(resource="room-1", start="2026-12-01T08:00:00Z", end="2026-12-01T08:30:00Z",
                                patient="p", now=datetime(2026, 11, 30, 8, tzinfo=UTC)).id
    replica.calendar.reservations[rid]["booked_start"] = "2026-12-01T07:00:00Z"  # a retired decision key: ignored
    assert replica.calendar.get(rid).booked is None
    assert replica.calendar.cancel(rid, now=datetime(2026, 11, 30, 9, tzinfo=UTC)).id == rid


def test_a_reservation_missing_its_request_fields_is_not_found_and_never_crashes_a_read_or_a_write() -> None:
    """A stock client (or a partly synced replica) may hold a reservation map without ``start``."""
    from datetime import UTC, datetime

    from pycrdt import Map

    from accord.engine.calendar import Calendar
    from accord.engine.errors import ReservationNotFound

    calendar = Calendar("clinic-1", actor="desk")
    with calendar.doc.transaction():
        calendar.reservations["r-partial"] = Map({"id": "r-partial", "resource": "room-1"})
    assert calendar.list() == []
    with pytest.raises(ReservationNotFound, match="only partly"):
        calendar.get("r-partial")
    with pytest.raises(ReservationNotFound):
        calendar.check_in("r-partial", now=datetime(2026, 12, 1, tzinfo=UTC))
    assert "checked_in_at" not in calendar.reservations["r-partial"]  # nothing was written
