"""A large calendar keeps its parsed reservations between whole-calendar reads: every change,
local or applied from another replica, to a reservation's fields, its verdicts or the home, must
read exactly as a fresh reading of the same document does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from homes import decide, take_home
from pycrdt import Map

from accord.engine.calendar import READ_CACHE_MIN, Calendar
from accord.engine.model import Decision, Reservation, Status
from accord.engine.replica import Replica

CAL = "clinic-1"
NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def fresh(calendar: Calendar) -> Calendar:
    """The same document read by a replica that keeps nothing (its first read is a whole one)."""
    other = Calendar(CAL, actor="reader")
    other.doc.apply_update(calendar.doc.get_update())
    other.assume_home = calendar.assume_home
    return other


def book_many(calendar: Calendar, count: int) -> list[Reservation]:
    """``count`` back-to-back half-hour bookings of room-1 (declared here)."""
    calendar.put_resource("room-1")
    return [calendar.book(resource="room-1", start=NOW + timedelta(minutes=30 * i),
                          end=NOW + timedelta(minutes=30 * i + 30), patient=f"P{i}", now=NOW)
            for i in range(count)]


def homed_calendar(count: int) -> tuple[Calendar, list[Reservation]]:
    """A calendar with a home (tests/homes.py) and ``count`` requests, none decided yet."""
    calendar = Calendar(CAL, actor="desk")
    take_home(calendar)
    return calendar, book_many(calendar, count)


def same(calendar: Calendar) -> list[Reservation]:
    got = calendar.list()
    assert got == fresh(calendar).list()
    everything = fresh(calendar).all_fields()
    assert calendar.all_fields() == everything
    page = [*list(everything)[:3], *list(everything)[-3:], "no-such-id"]
    assert calendar.fields_of(page) == fresh(calendar).fields_of(page) == {k: everything[k] for k in page[:-1]}
    return got


def test_reads_of_a_large_calendar_follow_every_kind_of_change() -> None:
    desk = Replica(CAL, actor="desk", client_id=7)
    calendar = desk.calendar
    made = book_many(calendar, READ_CACHE_MIN + 20)
    assert len(same(calendar)) == len(made) and calendar._reads is not None  # the kept reads are in use

    calendar.cancel(made[0].id, reason="called", now=NOW)  # a local edit
    assert same(calendar)[0].status is Status.CANCELLED

    elsewhere = Replica(CAL, actor="kiosk", client_id=8)  # a change applied from another replica
    elsewhere.load([calendar.doc.get_update()])
    elsewhere.calendar.reschedule(made[1].id, start=NOW - timedelta(hours=2), end=NOW - timedelta(hours=1), now=NOW)
    late = elsewhere.calendar.book(resource="room-1", start=NOW - timedelta(hours=5), end=NOW - timedelta(hours=4),
                                   patient="P-late", now=NOW)
    calendar.doc.apply_update(elsewhere.calendar.doc.get_update(calendar.doc.get_state()))
    listed = same(calendar)
    assert [r.id for r in listed[:2]] == [late.id, made[1].id]  # sorted by the new times

    take_home(calendar)  # the home appears: every pending request reads pending under it
    assert {r.status for r in same(calendar)} == {Status.PENDING, Status.CANCELLED}
    decide(calendar, made[2].id, Decision.BOOKED)  # a verdict changes one status
    assert calendar.get(made[2].id).status is Status.BOOKED
    assert next(r for r in same(calendar) if r.id == made[2].id).status is Status.BOOKED

    with calendar.doc.transaction():  # a hostile writer breaks an entry, and replaces another with a non-map
        entry = calendar.reservations[made[3].id]
        assert isinstance(entry, Map)
        del entry["start"]
        calendar.reservations[made[4].id] = "not a reservation"
    ids = {r.id for r in same(calendar)}
    assert made[3].id not in ids and made[4].id not in ids

    calendar.assume_home = False
    same(calendar)
    returned = calendar.all_fields()
    returned[made[5].id]["patient"] = "changed by the caller"  # a caller's copy: the kept reads do not change
    assert calendar.get(made[5].id).patient == "P5" and same(calendar)


async def test_verdicts_checked_in_a_worker_thread_read_as_checked_inline() -> None:
    """The relay checks a large calendar's verdict signatures off the event loop as it loads it
    (relay/calendars.check_verdicts_off_loop); what the calendar then shows is exactly what
    checking them one by one on the loop shows, forgeries included."""
    from homes import HOME_KEY

    from accord.engine.authority import RelayKey
    from accord.relay.calendars import OFF_LOOP_VERDICTS, check_verdicts_off_loop

    calendar, made = homed_calendar(OFF_LOOP_VERDICTS + 50)
    for item in made[:-1]:
        decide(calendar, item.id, Decision.BOOKED)
    decide(calendar, made[-1].id, Decision.BOOKED, key=RelayKey.generate())  # not the home's key: a forgery
    loaded = fresh(calendar)
    assert len(loaded.unchecked_verdicts()) == len(made)
    await check_verdicts_off_loop(loaded)
    assert loaded.unchecked_verdicts() == []
    statuses = {r.id: r.status for r in loaded.list()}
    assert statuses == {r.id: r.status for r in fresh(calendar).list()}  # checked inline there
    assert statuses[made[-1].id] is Status.PENDING and statuses[made[0].id] is Status.BOOKED
    assert HOME_KEY.public == loaded.home_record.public_key  # type: ignore[union-attr]


async def test_reads_parsed_in_a_worker_thread_are_kept_only_if_nothing_changed_meanwhile() -> None:
    """relay/calendars.read_off_loop parses a large calendar in a thread from a snapshot; a
    change that lands between the snapshot and the parse's end must not be lost."""
    from accord.relay.calendars import read_off_loop

    calendar, made = homed_calendar(READ_CACHE_MIN + 10)
    decide(calendar, made[0].id, Decision.BOOKED)
    loaded = fresh(calendar)
    await read_off_loop(loaded)
    assert loaded._reads is not None and loaded.list() == fresh(calendar).list()
    assert loaded.get(made[0].id).status is Status.BOOKED

    late = fresh(calendar)
    snapshot = late.read_snapshot()
    assert snapshot is not None
    parsed = late.parse_snapshot(snapshot)
    late.cancel(made[1].id, reason="called", now=NOW)  # lands while the thread parses
    assert not late.install_reads(snapshot, parsed)
    assert late.get(made[1].id).status is Status.CANCELLED
    assert next(r for r in late.list() if r.id == made[1].id).status is Status.CANCELLED


def test_reads_kept_through_a_takeover_that_adopts_read_as_fresh_ones() -> None:
    """A record adopting every verdict of the previous epoch keeps a large calendar's reads (a
    cluster's takeover); one adopting fewer must not: the verdicts past it no longer count."""
    from homes import HOME_KEY

    from accord.engine.authority import handover
    from accord.engine.decisions import Decider

    calendar, made = homed_calendar(READ_CACHE_MIN + 10)
    Decider(calendar, "relay-a", HOME_KEY).decide_all_pending(NOW)  # serials 1..n
    whole = fresh(calendar)
    assert {r.status for r in same(calendar)} == {r.status for r in same(whole)} == {Status.BOOKED}
    home = whole.home_record
    assert home is not None
    whole.add_home_record(*handover(home, HOME_KEY, "relay-b", HOME_KEY.public, adopts=len(made)))
    assert whole._reads is not None and len(whole._reads.decided) == len(made)  # kept
    assert {r.status for r in same(whole)} == {Status.BOOKED} and whole.home == "relay-b"
    calendar.add_home_record(*handover(home, HOME_KEY, "relay-b", HOME_KEY.public, adopts=len(made) - 1))
    statuses = [r.status for r in same(calendar)]
    assert statuses.count(Status.PENDING) == 1 and statuses.count(Status.BOOKED) == len(made) - 1


async def test_verdicts_read_in_a_worker_thread_adopt_as_read_inline() -> None:
    """A cluster's new holder reads a large calendar's verdicts off the event loop before it
    works out what its record adopts (relay/calendars.open_verdicts_off_loop): the same answer."""
    from homes import HOME_KEY

    from accord.engine.decisions import Decider, adoption_point
    from accord.relay.calendars import OFF_LOOP_VERDICTS, open_verdicts_off_loop

    calendar, made = homed_calendar(OFF_LOOP_VERDICTS + 20)
    Decider(calendar, "relay-a", HOME_KEY).decide_all_pending(NOW)
    loaded = fresh(calendar)
    await open_verdicts_off_loop(loaded)
    assert loaded.verifier.unopened(loaded.verdict_entries()) == []
    assert adoption_point(loaded) == adoption_point(fresh(calendar)) == len(made)
    assert loaded.unchecked_verdicts() == []
