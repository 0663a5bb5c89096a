"""Opening hours and free-slot search: the pure computation (hours, exceptions, pending and
booked bookings, capacity > 1, the calendar's zone), the update policy guarding the new resource
keys, and the same answers through FHIR Slot/$find, ``accord terminal free`` and
``accord store export --fhir``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from homes import decide, take_home
from pycrdt import Map
from relays import Relay, relay_config
from test_fhir import appointment, http, validated

from accord.cli import main as accord_main
from accord.engine.calendar import Calendar
from accord.engine.errors import InvalidReservation
from accord.engine.model import Decision
from accord.engine.replica import Replica
from accord.engine.slots import (
    compute_slots,
    free_intervals,
    holds_on,
    open_intervals,
    split,
    zone_of,
)
from accord.engine.update_policy import Category, UpdatePolicy
from accord.terminal import cli as terminal_cli

CAL = "clinic-1"
MONDAY = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday
WEEK = {"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "tue": [["08:00", "17:00"]]}
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def at(day: datetime, hhmm: str) -> datetime:
    return day.replace(hour=int(hhmm[:2]), minute=int(hhmm[3:]))


def slots_of(calendar: Calendar, resource: str, lo: datetime, hi: datetime) -> list[tuple[str, str, str]]:
    intervals = open_intervals(calendar.opening_hours(resource), zone_of(calendar.time_zone), lo, hi)
    computed = compute_slots(resource, intervals, holds_on(calendar.list(resource=resource), resource),
                             calendar.capacity(resource))
    return [(s.start.strftime("%d %H:%M"), s.end.strftime("%d %H:%M"), str(s.status)) for s in computed]


def book(calendar: Calendar, start: str, end: str, day: datetime = MONDAY, resource: str = "room-1") -> str:
    return calendar.book(resource=resource, start=at(day, start), end=at(day, end), patient="P-1", now=NOW).id


def test_hours_exceptions_pending_and_booked_make_free_tentative_and_busy_stretches() -> None:
    calendar = Calendar(CAL)
    take_home(calendar)
    calendar.put_resource("room-1", capacity=1)
    calendar.set_opening_hours("room-1", weekly=WEEK, exceptions={"2026-12-01": [["08:00", "10:00"]],
                                                                  "2026-12-02": []})
    booked = book(calendar, "09:00", "09:30")
    decide(calendar, booked, Decision.BOOKED)
    book(calendar, "11:30", "13:30")  # pending, across the lunch break
    rejected = book(calendar, "14:00", "15:00")
    decide(calendar, rejected, Decision.REJECTED)
    assert slots_of(calendar, "room-1", MONDAY, MONDAY + timedelta(days=3)) == [
        ("30 08:00", "30 09:00", "free"),
        ("30 09:00", "30 09:30", "busy"),
        ("30 09:30", "30 11:30", "free"),
        ("30 11:30", "30 12:00", "busy-tentative"),
        ("30 13:00", "30 13:30", "busy-tentative"),
        ("30 13:30", "30 17:00", "free"),  # a rejected request holds nothing
        ("01 08:00", "01 10:00", "free"),  # the exception shortens Tuesday; Wednesday is closed
    ]


def test_capacity_two_is_busy_only_when_both_places_are_taken() -> None:
    calendar = Calendar(CAL)
    take_home(calendar)
    calendar.put_resource("room-1", capacity=2)
    calendar.set_opening_hours("room-1", weekly={"mon": [["08:00", "12:00"]]})
    for start, end in (("08:00", "10:00"), ("09:00", "11:00")):
        decide(calendar, book(calendar, start, end), Decision.BOOKED)
    book(calendar, "10:30", "11:30")  # pending beside the booked 09-11
    assert slots_of(calendar, "room-1", MONDAY, MONDAY + timedelta(days=1)) == [
        ("30 08:00", "30 09:00", "free"),
        ("30 09:00", "30 10:00", "busy"),
        ("30 10:00", "30 10:30", "free"),
        ("30 10:30", "30 11:00", "busy-tentative"),
        ("30 11:00", "30 12:00", "free"),
    ]
    free = free_intervals(compute_slots("room-1", [(at(MONDAY, "08:00"), at(MONDAY, "12:00"))], [], 2),
                          timedelta(minutes=90))
    assert [(s.start.hour, s.end.hour) for s in split(free, timedelta(hours=1))] == [(8, 9), (9, 10), (10, 11), (11, 12)]


def test_hours_are_wall_clock_times_in_the_calendars_zone() -> None:
    calendar = Calendar(CAL)
    calendar.set_time_zone("Europe/Berlin")
    calendar.put_resource("room-1")
    calendar.set_opening_hours("room-1", weekly={"mon": [["08:00", "24:00"]]})
    assert slots_of(calendar, "room-1", MONDAY, MONDAY + timedelta(days=1)) == [("30 07:00", "30 23:00", "free")]
    summer = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday in summer time: 08:00 there is 06:00 UTC
    assert slots_of(calendar, "room-1", summer, summer + timedelta(days=1))[0][:2] == ("01 06:00", "01 22:00")


def test_a_resource_without_hours_is_open_around_the_clock_and_bad_schedules_are_refused() -> None:
    calendar = Calendar(CAL)
    calendar.put_resource("room-1")
    assert slots_of(calendar, "room-1", MONDAY, MONDAY + timedelta(hours=2)) == [("30 00:00", "30 02:00", "free")]
    for weekly in ({"mon": [["09:00", "08:00"]]}, {"monday": []}, {"mon": [["8:00", "9:00"]]},
                   {"mon": [["08:00", "12:00"], ["11:00", "13:00"]]}, {"mon": [["0\u00b2:00", "12:00"]]},
                 {"mon": [["\u0660\u0668:00", "12:00"]]}):  # superscript and Arabic-Indic digits: str.isdigit() says yes
        with pytest.raises(InvalidReservation):
            calendar.set_opening_hours("room-1", weekly=weekly)
    for exceptions in ({"20261225": []}, {"2026-W52-5": []}, {"2026-12-25T00:00": []}):  # fromisoformat takes these
        with pytest.raises(InvalidReservation):
            calendar.set_opening_hours("room-1", exceptions=exceptions)
    with pytest.raises(InvalidReservation):
        calendar.set_opening_hours("room-9", weekly=WEEK)
    with pytest.raises(InvalidReservation):
        open_intervals(calendar.opening_hours("room-1"), UTC, MONDAY, MONDAY + timedelta(days=90))


def test_the_update_policy_lets_only_admins_set_hours_and_only_valid_ones() -> None:
    relay = Replica(CAL, actor="relay", client_id=1)
    relay.calendar.put_resource("room-1")
    relay.take_changes()
    policy = UpdatePolicy.from_update(relay.full_state())

    def categories_of(write: Any) -> set[Category]:
        desk = Replica(CAL, actor="desk", client_id=2)
        desk.load([relay.full_state()])
        desk.take_changes()
        write(desk.calendar)
        updates = [c.update for c in desk.take_changes()]
        return {v.category for update in updates for v in policy.judge(update)}

    assert categories_of(lambda c: c.set_opening_hours("room-1", weekly=WEEK)) == {Category.ADMIN_WRITE}

    def raw(key: str, value: object) -> Any:
        def write(c: Calendar) -> None:
            entry = c.resources_map["room-1"]
            assert isinstance(entry, Map)
            with c.doc.transaction():
                entry[key] = value
        return write

    assert categories_of(raw("hours", '{"mon": [["09:00", "08:00"]]}')) == {Category.ADMIN_WRITE, Category.INVALID_VALUE}
    assert categories_of(raw("hours_exceptions", "not json")) == {Category.ADMIN_WRITE, Category.INVALID_VALUE}
    # A digit int() refuses was a ValueError out of the policy, not a refusal.
    assert categories_of(raw("hours", '{"mon": [["0\u00b2:00", "12:00"]]}')) == {Category.ADMIN_WRITE, Category.INVALID_VALUE}
    assert categories_of(raw("hours_exceptions", '{"2026-12-25": []}')) == {Category.ADMIN_WRITE}


async def test_fhir_slots_find_terminal_free_and_export_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0)
    async with Relay(config) as relay:
        await relay.edit(CAL, lambda c: c.put_resource("room-1", capacity=1))
        desk = ["--calendar", CAL, "--relay", relay.url, "--store", str(tmp_path / "desk.sqlite"), "--utc", "--json"]
        hours = ["hours", "room-1", "--weekly", json.dumps(WEEK), "--exceptions", '{"2026-12-01": []}', *desk]
        assert await asyncio.to_thread(terminal_cli.main, hours) == 0  # an open relay: every client is an admin
        assert json.loads(capsys.readouterr().out)["exceptions"] == {"2026-12-01": []}
        calendar = await relay.calendar(CAL)
        await relay.wait_for(lambda: "hours_exceptions" in calendar.resources_map["room-1"])  # type: ignore[operator]
        base = f"{relay.fhir_url}/{CAL}"
        status, made, _ = await http(f"{base}/Appointment", "POST", appointment("2026-11-30T09:00:00Z", minutes=60))
        assert status == 201
        await relay.wait_for(lambda: calendar.get(made["id"]).booked is not None)
        window = "start=ge2026-11-30T00:00:00Z&start=lt2026-12-02T00:00:00Z"
        status, bundle, _ = await http(f"{base}/Slot?schedule=Schedule/room-1&{window}")
        assert status == 200
        shown = [(e["resource"]["start"][8:16], e["resource"]["end"][11:16], e["resource"]["status"])
                 for e in validated(bundle)["entry"]]
        assert shown == [("30T08:00", "09:00", "free"), ("30T09:00", "10:00", "busy"), ("30T10:00", "12:00", "free"),
                         ("30T13:00", "17:00", "free")]  # Tuesday the 1st is closed
        status, free, _ = await http(f"{base}/Slot?schedule=room-1&status=free&{window}")
        assert [e["resource"]["status"] for e in validated(free)["entry"]] == ["free"] * 3
        slot_id = bundle["entry"][1]["resource"]["id"]
        status, one, _ = await http(f"{base}/Slot/{slot_id}")
        assert status == 200 and validated(one)["status"] == "busy"
        status, found, _ = await http(f"{base}/Appointment/$find?resource=Location/room-1&start=2026-11-30T08:00:00Z"
                                      "&end=2026-11-30T12:00:00Z&duration=60")
        assert status == 200
        assert [e["resource"]["start"][11:16] for e in validated(found)["entry"]] == ["08:00", "10:00", "11:00"]
        status, bad, _ = await http(f"{base}/Slot?schedule=room-9&{window}")
        assert status == 400 and validated(bad)["issue"][0]["expression"] == ["schedule"]

        argv = ["free", "--resource", "room-1", "--date", "2026-11-30", "--duration", "2h", *desk]
        assert await asyncio.to_thread(terminal_cli.main, argv) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["free"] == [{"start": "2026-11-30T10:00:00Z", "end": "2026-11-30T12:00:00Z"},
                                  {"start": "2026-11-30T13:00:00Z", "end": "2026-11-30T17:00:00Z"}]
    out = tmp_path / "export.ndjson"
    assert await asyncio.to_thread(accord_main, ["store", "export", str(config.db_path), "--fhir", str(out),
                                                 "--slot-days", "8"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for resource in lines:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    kinds = [r["resourceType"] for r in lines]
    assert kinds.count("Schedule") == 1 and kinds.count("Appointment") == 1 and "Slot" in kinds
    assert {r["meta"]["source"] for r in lines} == {f"urn:accord:calendar:{CAL}"}
    assert next(r for r in lines if r["resourceType"] == "Appointment")["status"] == "booked"
