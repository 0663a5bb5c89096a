"""The board's JavaScript model (relay/static/board-model.js) answers like the Python engine.

Node runs the browser module as it is (it is pure: no DOM, no Yjs) over cases built here, and
every answer is compared with engine/model.py and engine/calendar.py. Skipped without node,
unless CI_REQUIRE_NODE=1.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from accord.engine.calendar import Calendar
from accord.engine.errors import InvalidReservation, InvalidTransition
from accord.engine.model import (
    ALLOWED_FROM,
    DECISION_KEYS,
    LIFECYCLE_MARKS,
    WHY_REFUSED,
    Action,
    Status,
    derive_status,
    parse_time,
    reservation_from_fields,
)

MODEL = Path(__file__).resolve().parent.parent / "relay" / "static" / "board-model.js"
START, END = "2026-11-25T09:00:00Z", "2026-11-25T09:30:00Z"
RUNNER = """
const model = await import(process.argv[1])
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'))
const run = (fn) => { try { return { ok: fn() } } catch (e) { return { error: e.message, refused: e instanceof model.Refused } } }
const out = cases.map(c => {
  switch (c.kind) {
    case 'status': return model.deriveStatus(c.fields, c.hasHome)
    case 'view': { const v = model.viewReservation('x', c.fields, c.hasHome)
      return { status: v.status, proposal: v.proposal, reason: v.reason, conflict: v.conflictWith,
               booked: v.booked && [v.booked.resource, model.formatTime(v.booked.start), model.formatTime(v.booked.end)] } }
    case 'book': return run(() => model.planBook({ ...c.args, randomBytes: new Uint8Array(c.args.randomBytes),
      request: { ...c.args.request, start: model.parseTime(c.args.request.start), end: model.parseTime(c.args.request.end) } }))
    case 'update': return run(() => model.planUpdate(c.args))
    case 'reschedule': return run(() => model.rescheduleChanges({
      ...c.args, start: model.parseTime(c.args.start), end: model.parseTime(c.args.end) }))
    case 'actions': return model.ALLOWED_FROM
    case 'decisionKeys': return model.DECISION_KEYS
  }
})
process.stdout.write(JSON.stringify(out))
"""


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI_REQUIRE_NODE") == "1":
            pytest.fail("CI_REQUIRE_NODE=1 but node is not on PATH")
        pytest.skip("node is not on PATH: install Node 20+")
    return node


def _run(cases: list[dict[str, Any]]) -> list[Any]:
    node = _node()
    done = subprocess.run([node, "--input-type=commonjs", "-e", f"(async () => {{ {RUNNER} }})()", MODEL.as_uri()],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


def _fact_combinations() -> list[dict[str, Any]]:
    """Reservations with every mix of lifecycle marks, bookings and decisions (current or stale)."""
    base = {"id": "x", "resource": "room-1", "start": START, "end": END}
    combos = []
    marks = [None, *[key for key, _ in LIFECYCLE_MARKS], "cancelled_at+checked_in_at", "empty-mark"]
    for mark, booked, decision, current in itertools.product(marks, [False, True], [None, "booked", "rejected"],
                                                              [True, False]):
        fields: dict[str, Any] = dict(base)
        if mark == "cancelled_at+checked_in_at":
            fields.update(cancelled_at=START, checked_in_at=START, cancel_reason="phoned")
        elif mark == "empty-mark":
            fields["cancelled_at"] = ""  # falsy: not a mark, as in Python
        elif mark is not None:
            fields[mark] = START
        if booked:
            fields.update(booked_start=START, booked_end=END, booked_resource="room-1")
        if decision is not None:
            fields.update(decision=decision, decided_resource="room-1", decided_start=START,
                          decided_end=END if current else "2026-11-25T10:00:00Z", reason="taken", conflict_with="y")
        if booked and not current:
            fields.update(start="2026-11-25T11:00:00Z", end="2026-11-25T11:30:00Z")  # a pending or rejected reschedule
        combos.append(fields)
        if decision is not None and current:  # the same slot asked again after the decision
            combos.append({**fields, "requested_at": "2026-11-25T08:00:00Z", "decided_request": "2026-11-25T07:00:00Z"})
    return combos


def test_status_is_derived_exactly_as_the_engine_derives_it() -> None:
    combos = _fact_combinations()
    cases = [{"kind": "status", "fields": f, "hasHome": h} for f in combos for h in (True, False)]
    answers = _run(cases)
    for case, answer in zip(cases, answers, strict=True):
        assert answer == str(derive_status(case["fields"], has_home=case["hasHome"])), case
    assert {str(derive_status(f, has_home=True)) for f in combos} >= {"pending", "booked", "rejected", "cancelled",
                                                                        "checked-in"}


def test_view_shows_the_same_slot_proposal_reason_and_conflict_as_the_engine() -> None:
    cases = [{"kind": "view", "fields": f, "hasHome": h} for f in _fact_combinations() for h in (True, False)]
    for case, answer in zip(cases, _run(cases), strict=True):
        want = reservation_from_fields("clinic-1", case["fields"], has_home=case["hasHome"])  # type: ignore[arg-type]
        booked = None if want.booked is None else [want.booked.resource, *(
            t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (want.booked.start, want.booked.end))]
        assert answer == {"status": str(want.status), "proposal": want.proposal, "reason": want.reason,
                          "conflict": want.conflict_with, "booked": booked}, case


def test_allowed_moves_and_decision_keys_are_the_engines() -> None:
    actions, keys = _run([{"kind": "actions"}, {"kind": "decisionKeys"}])
    for action in (Action.RESCHEDULE, Action.CANCEL, Action.CHECK_IN):
        assert sorted(actions[str(action)]) == sorted(str(s) for s in ALLOWED_FROM[action])
    assert set(keys) == set(DECISION_KEYS)


def _request(**changes: Any) -> dict[str, Any]:
    request = {"resource": "room-1", "start": START, "end": END, "patient": "P-1", "service": "", "note": ""}
    return {**request, **changes}


BOOKINGS = [
    _request(),
    _request(end=START),
    _request(end="2026-11-25T08:00:00Z"),
    _request(end="2026-12-27T09:00:00Z"),
    _request(resource="room 1"),
    _request(resource="room-9"),
    _request(patient="   "),
    _request(note="x" * 2001),
    _request(service="s" * 129),
]


def test_booking_writes_what_the_engine_writes_and_refuses_what_it_refuses() -> None:
    now = "2026-11-25T07:00:00Z"
    now_ms = int(parse_time(now).timestamp() * 1000)
    cases = [{"kind": "book", "args": {"calendar": "clinic-1", "request": r, "actor": "Ana", "nowMs": now_ms,
                                       "randomBytes": list(range(10)), "resourceIds": ["room-1", "room-2"]}}
             for r in BOOKINGS]
    for case, answer in zip(cases, _run(cases), strict=True):
        request = case["args"]["request"]
        calendar = Calendar("clinic-1", actor="Ana")
        calendar.put_resource("room-1")
        calendar.put_resource("room-2")
        try:
            if request["resource"] not in ("room-1", "room-2") and calendar.resources():
                raise InvalidReservation("unknown resource")  # the board's extra check, stated in the issue
            want = calendar.book(now=parse_time(now), **request)
        except InvalidReservation:
            assert answer.get("refused") is True, (request, answer)
            continue
        fields = answer["ok"]
        assert set(fields) == set(calendar.all_fields()[want.id]), request
        assert uuid.UUID(fields["id"]).version == 7
        assert int(uuid.UUID(fields["id"]).hex[:12], 16) == now_ms  # UUIDv7 carries the creation time
        # The same fields, written by the board into a document, read back as the same reservation.
        doc: Doc[Any] = Doc()
        doc.get("reservations", type=Map)[fields["id"]] = Map(fields)
        got = Calendar("clinic-1", doc).get(fields["id"])
        assert (got.resource, got.start, got.end, got.patient, got.status) == (
            want.resource, want.start, want.end, want.patient, want.status)
        assert got.created_by == got.updated_by == "Ana"


def test_actions_are_allowed_and_refused_with_the_engines_messages() -> None:
    now_ms = int(parse_time("2026-11-25T08:00:00Z").timestamp() * 1000)
    statuses = {
        Status.PENDING: {"booked_start": ""},
        Status.BOOKED: {"booked_start": START, "booked_end": END, "booked_resource": "room-1"},
        Status.REJECTED: {"decision": "rejected", "decided_start": START, "decided_end": END, "decided_resource": "room-1"},
        Status.CANCELLED: {"cancelled_at": START},
        Status.CHECKED_IN: {"checked_in_at": START, "booked_start": START},
        Status.FULFILLED: {"fulfilled_at": START},
        Status.NOSHOW: {"noshow_at": START},
        Status.ENTERED_IN_ERROR: {"entered_in_error_at": START},
    }
    changes = {Action.RESCHEDULE: {"start": "2026-11-25T10:00:00Z", "end": "2026-11-25T10:30:00Z"},
               Action.CANCEL: {"cancelled_at": "2026-11-25T08:00:00Z", "cancel_reason": ""},
               Action.CHECK_IN: {"checked_in_at": "2026-11-25T08:00:00Z"}}
    cases = []
    for status, extra in statuses.items():
        fields = {"id": "r1", "resource": "room-1", "start": START, "end": END, **extra}
        assert derive_status(fields, has_home=True) is status
        for action, change in changes.items():
            cases.append({"kind": "update", "status": status, "action": action, "args": {
                "id": "r1", "fields": fields, "hasHome": True, "action": str(action), "changes": change,
                "actor": "Bo", "nowMs": now_ms}})
    for case, answer in zip(cases, _run(cases), strict=True):
        status, action = case["status"], case["action"]
        if status in ALLOWED_FROM[action]:
            written = answer["ok"]
            assert written["updated_by"] == "Bo" and written["updated_at"] == "2026-11-25T08:00:00Z"
            assert not set(written) & DECISION_KEYS
        else:
            message = str(InvalidTransition(f"cannot {action} reservation r1 ({status}): {WHY_REFUSED[status]}"))
            assert answer == {"error": message, "refused": True}


def test_reschedule_checks_the_interval_and_known_resources() -> None:
    cases = [
        {"kind": "reschedule", "args": {"start": START, "end": END, "resource": "room-2", "resourceIds": ["room-1", "room-2"]}},
        {"kind": "reschedule", "args": {"start": END, "end": START, "resource": "room-1", "resourceIds": []}},
        {"kind": "reschedule", "args": {"start": START, "end": END, "resource": "room-3", "resourceIds": ["room-1"]}},
        {"kind": "reschedule", "args": {"start": START, "end": END, "resource": "room-3", "resourceIds": []}},
    ]
    ok, backwards, unknown, undeclared = _run(cases)
    assert ok == {"ok": {"start": START, "end": END, "resource": "room-2"}}
    assert backwards["refused"] and "is not after start" in backwards["error"]
    assert unknown["refused"] and "room-3 is not declared" in unknown["error"]
    assert undeclared == {"ok": {"start": START, "end": END, "resource": "room-3"}}  # no resources declared: any id
