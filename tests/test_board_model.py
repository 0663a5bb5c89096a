"""The board's JavaScript (relay/static/board-*.js) answers exactly like the Python engine.

Node runs the browser modules as they are (pure: no DOM) over cases built here with the engine:
calendars with genuine signed home records and verdicts (a real Decider with a RelayKey, and
tests/homes.py), forgeries of every kind we know of, hand-written values, and the primitives under
them (canonical JSON, base64url, request digests). A calendar reaches node as its Yjs update and is
read with the vendored Yjs bundle, as the page reads it; every answer is compared with
engine/calendar.py reading the same bytes. Skipped without node, unless CI_REQUIRE_NODE=1.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from homes import decide
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from accord.engine.authority import (
    HOME_TAG,
    VERDICT_TAG,
    HomeRecord,
    RelayKey,
    Verdict,
    _canonical,
    _unb64,
    first_home,
    handover,
    read_home_record,
    request_digest,
)
from accord.engine.calendar import Calendar, read_capacity
from accord.engine.decisions import Decider
from accord.engine.errors import InvalidReservation, InvalidTransition
from accord.engine.model import (
    ALLOWED_FROM,
    DECISION_KEYS,
    LIFECYCLE_MARKS,
    UNDECIDED,
    WHY_REFUSED,
    Action,
    Decision,
    DecisionState,
    Status,
    derive_status,
    format_time,
    parse_time,
    reservation_from_fields,
)
from accord.engine.slots import DAYS, Hold, compute_slots, holds_on, open_intervals, opening_hours, zone_of

STATIC = Path(__file__).resolve().parent.parent / "relay" / "static"
MODEL, BUNDLE = STATIC / "board-model.js", STATIC / "yjs-bundle.min.js"
START, END = "2026-11-25T09:00:00Z", "2026-11-25T09:30:00Z"
DAY = ("2026-11-25T00:00:00Z", "2026-11-26T00:00:00Z")
NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)

RUNNER = r"""
import { readFileSync } from 'node:fs'
const model = await import(process.argv[1])
const canonical = await import(new URL('board-canonical.js', process.argv[1]))
const authority = await import(new URL('board-authority.js', process.argv[1]))
const grid = await import(new URL('board-grid.js', process.argv[1]))
const hours = await import(new URL('board-hours.js', process.argv[1]))
const cases = JSON.parse(readFileSync(0, 'utf8'))
const run = (fn) => { try { return { ok: fn() } } catch (e) { return { error: e.message, refused: e instanceof model.Refused } } }
const hex = bytes => bytes === null ? null : Buffer.from(bytes).toString('hex')
const decided = d => d ? { ...model.UNDECIDED, ...d, seq: BigInt(d.seq ?? 0) } : model.UNDECIDED
const stateJson = s => ({ current: s.current, booked: s.booked, released: s.released, reason: s.reason,
                          conflictWith: s.conflictWith, decidedBy: s.decidedBy, seq: String(s.seq) })
const viewJson = v => v && { status: v.status, resource: v.resource, patient: v.patient, proposal: v.proposal,
  reason: v.reason, conflict: v.conflictWith, decidedBy: v.decidedBy,
  booked: v.booked && [v.booked.resource, model.formatTime(v.booked.start), model.formatTime(v.booked.end)] }

async function calendar (c) {
  const { Y } = await import(process.argv[2])
  const doc = new Y.Doc()
  Y.applyUpdate(doc, Buffer.from(c.update, 'base64'))
  const snapshot = { reservations: doc.getMap('reservations').toJSON(), homes: doc.getMap('homes').toJSON(),
                     verdicts: doc.getMap('verdicts').toJSON() }
  const read = await new model.Decisions(c.name).readSettled(snapshot)
  const states = {}
  const views = {}
  for (const [rid, fields] of Object.entries(snapshot.reservations)) {
    if (fields === null || typeof fields !== 'object' || Array.isArray(fields)) continue
    const state = read.states.get(rid) ?? model.UNDECIDED
    states[rid] = stateJson(state)
    views[rid] = viewJson(model.reservationView(rid, fields, read.hasHome, state))
  }
  const list = model.listReservations(snapshot.reservations, read, model.parseTime(c.from), model.parseTime(c.to))
  const held = {}
  for (const resource of [...new Set(list.flatMap(v => [v.resource, v.slot.resource]))].sort()) {
    held[resource] = hours.holdsOn(list, resource).map(h => [model.formatTime(h.start), model.formatTime(h.end), h.tentative])
      .sort((a, b) => JSON.stringify(a) < JSON.stringify(b) ? -1 : 1)
  }
  return { hasHome: read.hasHome, home: read.home && [read.home.relayId, String(read.home.epoch)], states, views,
           list: list.map(v => v.id), holds: held }
}

async function answer (c) {
  switch (c.kind) {
    case 'calendar': return calendar(c)
    case 'status': return model.deriveStatus(c.fields, c.hasHome, decided(c.decided))
    case 'view': return viewJson(model.reservationView('x', c.fields, c.hasHome, decided(c.decided)))
    case 'canonical': return canonical.canonicalJson(canonical.parseJson(c.json))
    case 'floatRepr': return canonical.pyFloatRepr(c.value)
    case 'unb64': return hex(canonical.unb64(c.text))
    case 'digest': return authority.requestDigest(c.rid, c.fields)
    case 'homeRecord': { const r = await authority.readHomeRecord(c.text, c.calendar, new authority.Signatures())
      return r && [r.relayId, String(r.epoch), r.publicKey, r.signer] }
    case 'book': return run(() => model.planBook({ ...c.args, randomBytes: new Uint8Array(c.args.randomBytes),
      request: { ...c.args.request, start: model.parseTime(c.args.request.start), end: model.parseTime(c.args.request.end) } }))
    case 'update': return run(() => model.planUpdate({ ...c.args, decided: decided(c.args.decided),
      changes: typeof c.args.changes === 'string' ? model[c.args.changes]({ nowMs: c.args.nowMs, reason: c.args.reason })
        : c.args.changes }))
    case 'reschedule': return run(() => model.rescheduleChanges({
      ...c.args, start: model.parseTime(c.args.start), end: model.parseTime(c.args.end) }))
    case 'grid': {
      const items = c.items.map(([resource, start, end, status]) => ({
        status, slot: { resource, start: model.parseTime(start), end: model.parseTime(end) } }))
      const out = grid.dayLayout(items, c.resources, model.parseTime(c.from), model.parseTime(c.to))
      const t = model.formatTime
      return { start: t(out.start), end: t(out.end), columns: out.columns,
               blocks: out.blocks.map(b => [b.resource, b.lane, t(b.start), t(b.end)]),
               free: out.free.map(f => [f.resource, t(f.start), t(f.end)]) }
    }
    case 'slots': {
      const open = hours.openIntervals(hours.openingHours(c.entry), c.zone, model.parseTime(c.from), model.parseTime(c.to))
      const holds = c.holds.map(([start, end, tentative]) =>
        ({ start: model.parseTime(start), end: model.parseTime(end), tentative }))
      return hours.computeSlots('r', open, holds, hours.capacityOf(c.entry))
        .map(slot => [model.formatTime(slot.start), model.formatTime(slot.end), slot.status])
    }
    case 'actions': return model.ALLOWED_FROM
    case 'decisionKeys': return model.DECISION_KEYS
  }
}

const out = []
for (const c of cases) out.push(await answer(c))
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
    done = subprocess.run([_node(), "--input-type=module", "-e", RUNNER, MODEL.as_uri(), BUNDLE.as_uri()],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result


# ---- what Python says about a calendar -----------------------------------------------------------------


def _state_json(state: DecisionState) -> dict[str, Any]:
    return {"current": str(state.current) if state.current else None, "booked": list(state.booked) if state.booked else None,
            "released": state.released, "reason": state.reason, "conflictWith": state.conflict_with,
            "decidedBy": state.decided_by, "seq": str(state.seq)}


def _view_json(calendar: Calendar, rid: str) -> dict[str, Any] | None:
    try:
        got = calendar.get(rid)
    except (KeyError, InvalidReservation):
        return None  # Calendar.list skips it; the board shows no row
    booked = None if got.booked is None else [got.booked.resource, *(
        t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (got.booked.start, got.booked.end))]
    return {"status": str(got.status), "resource": got.resource, "patient": got.patient, "proposal": got.proposal,
            "reason": got.reason, "conflict": got.conflict_with, "decidedBy": got.decided_by, "booked": booked}


def _as_read_elsewhere(calendar: Calendar) -> Calendar:
    """The calendar as another replica reads it from its bytes (fresh caches, as the page has)."""
    doc: Doc[Any] = Doc()
    doc.apply_update(calendar.doc.get_update())
    return Calendar(calendar.name, doc)


def _python_answer(calendar: Calendar) -> dict[str, Any]:
    calendar = _as_read_elsewhere(calendar)
    home = calendar.home_record
    everything = calendar.all_fields()
    listed = calendar.list(between=DAY)
    return {
        "hasHome": calendar.has_home,
        "home": [home.relay_id, str(home.epoch)] if home else None,
        "states": {rid: _state_json(calendar.decision_state(rid, fields)) for rid, fields in everything.items()},
        "views": {rid: _view_json(calendar, rid) for rid in everything},
        "list": [r.id for r in listed],
        "holds": {resource: sorted([format_time(h.start), format_time(h.end), h.tentative] for h in holds_on(listed, resource))
                  for resource in sorted({r for item in listed for r in (item.resource, item.slot.resource)})},
    }


def _calendar_case(calendar: Calendar) -> dict[str, Any]:
    return {"kind": "calendar", "name": calendar.name, "update": base64.b64encode(calendar.doc.get_update()).decode(),
            "from": DAY[0], "to": DAY[1]}


def _assert_same(calendars: dict[str, Calendar]) -> dict[str, dict[str, Any]]:
    """Node's reading of every calendar equals Python's, reservation by reservation; returns Python's."""
    answers = _run([_calendar_case(c) for c in calendars.values()])
    wanted = {}
    for (name, calendar), got in zip(calendars.items(), answers, strict=True):
        want = wanted[name] = _python_answer(calendar)
        assert (got["hasHome"], got["home"]) == (want["hasHome"], want["home"]), name
        for rid in want["states"]:
            assert (got["states"][rid], got["views"][rid]) == (want["states"][rid], want["views"][rid]), (name, rid)
        assert got["states"].keys() == want["states"].keys()
        assert got["list"] == want["list"], name
        assert got["holds"] == want["holds"], name  # what the grid counts as taken: engine/slots.holds_on
    return wanted


# ---- making calendars ------------------------------------------------------------------------------------


def _at(hhmm: str) -> str:
    return f"2026-11-25T{hhmm}:00Z"


class Desk:
    """A calendar with a real home: a Decider signing with its own RelayKey, as relays run it."""

    def __init__(self, name: str = "clinic-1", relay_id: str = "relay-a", key: RelayKey | None = None) -> None:
        self.calendar = Calendar(name, actor="desk-1")
        self.key = key or RelayKey.generate()
        self.relay_id = relay_id
        self.decider = Decider(self.calendar, relay_id, self.key, hold_ttl=timedelta(hours=1))
        self.clock = NOW

    def book(self, patient: str, start: str, end: str, resource: str = "room-1", **kw: Any) -> str:
        return self.calendar.book(resource=resource, start=_at(start), end=_at(end), patient=patient, now=self.clock, **kw).id

    def decide(self) -> list[Any]:
        return self.decider.decide_queued(self.clock)

    def verdict(self, rid: str, outcome: Decision, **kw: Any) -> str:
        return decide(self.calendar, rid, outcome, relay_id=self.relay_id, key=self.key, **kw)


# Hand-written resource values (str() of each is part of the request digest).
ODD_VALUES: list[Any] = [5, 5.5, None, True, 1e19, 2**40, -0.0, 2.0**63, -(2.0**63), [1, "x", None], {"k": "v"}, "salle 1",
                         ["\u2028", "é", "\x01", "it's", 'say "hi"', "\\", "\x85", "\U000e0001", "😀"]]


def _everyday_desk() -> tuple[Desk, dict[str, str]]:
    """Every status a desk meets, decided by a real Decider (and non-ASCII text throughout)."""
    desk = Desk()
    cal = desk.calendar
    ids: dict[str, str] = {}
    ids["booked"] = desk.book("Zoë Ångström 😀", "09:00", "09:30", note="première visite")
    ids["conflict"] = desk.book("P-2", "09:15", "09:45")
    ids["checked-in"] = desk.book("P-3", "10:00", "10:30")
    ids["released"] = desk.book("P-4", "10:30", "11:00")
    ids["lost-mark"] = desk.book("P-5", "11:00", "11:30")
    ids["moved"] = desk.book("P-6", "12:00", "12:30")
    ids["move-rejected"] = desk.book("P-7", "13:00", "13:30")
    ids["move-pending"] = desk.book("P-8", "14:00", "14:30")
    ids["asked-again"] = desk.book("P-9", "09:20", "09:40")
    ids["résa-é"] = desk.book("Renée", "15:00", "15:30", reservation_id="résa-é-1")
    ids["astral"] = desk.book("P-😀", "15:30", "16:00", reservation_id="rdv-😀-\U0001f3e5")
    desk.decide()
    cal.check_in(ids["checked-in"], now=NOW)
    cal.cancel(ids["released"], now=NOW, reason="patiente appelée: très malade")
    cal.cancel(ids["lost-mark"], now=NOW)
    cal.reschedule(ids["moved"], start=_at("17:00"), end=_at("17:30"), now=NOW)
    cal.reschedule(ids["move-rejected"], start=_at("09:00"), end=_at("09:30"), now=NOW)
    desk.decide()
    del cal.reservations[ids["lost-mark"]]["cancelled_at"]  # a hostile writer; the released verdict holds
    with cal.doc.transaction():  # hand-written values: the Decider rejects them as invalid
        for n, value in enumerate(ODD_VALUES):
            rid = ids[f"odd-resource-{n}"] = f"odd-{n}"
            cal.reservations[rid] = Map({"id": rid, "resource": value, "start": _at("19:00"), "end": _at("19:30"),
                                         "patient": "odd", "requested_at": "2026-11-25T07:00:00Z",
                                         "created_at": "2026-11-25T07:00:00Z"})
    desk.decide()
    # Not decided (yet) by the Decider:
    cal.reschedule(ids["asked-again"], start=_at("09:20"), end=_at("09:40"), now=NOW + timedelta(minutes=1))
    cal.reschedule(ids["move-pending"], start=_at("18:00"), end=_at("18:30"), now=NOW)
    ids["pending"] = desk.book("P-11", "08:00", "08:30")
    ids["custom-reason"] = desk.book("P-10", "16:00", "16:30")
    desk.verdict(ids["custom-reason"], Decision.REJECTED, reason="salle réservée à 9 h — désolé", conflict_with=ids["booked"])
    # Two verdicts with the same seq: the entry key breaks the tie, in Python's string order.
    tied = ids["tied"] = desk.book("P-12", "20:00", "20:30")
    for minute in (1, 2):
        fields = cal.all_fields()[tied]
        verdict = Verdict(cal.name, tied, request_digest(tied, fields), "booked",
                          ("room-1", _at(f"20:{minute:02}"), _at(f"20:{minute + 30:02}")), "", "", desk.relay_id, 1,
                          f"2026-11-25T07:0{minute}:00Z", 1)
        encoded = verdict.sign(desk.key)
        cal.verdicts[verdict.entry_key(encoded)] = encoded
    return desk, ids


def test_every_status_a_desk_meets_is_derived_from_verdicts_as_the_engine_does() -> None:
    desk, ids = _everyday_desk()
    want = _assert_same({"desk": desk.calendar})["desk"]
    views = {name: want["views"][rid] for name, rid in ids.items()}
    assert {name: v["status"] for name, v in views.items() if not name.startswith("odd")} == {
        "booked": "booked", "conflict": "rejected", "checked-in": "checked-in", "released": "cancelled",
        "lost-mark": "cancelled", "moved": "booked", "move-rejected": "booked", "move-pending": "booked",
        "asked-again": "pending", "résa-é": "booked", "astral": "booked", "custom-reason": "rejected",
        "pending": "pending", "tied": "booked"}
    assert (views["move-rejected"]["proposal"], views["move-pending"]["proposal"]) == ("rejected", "pending")
    assert views["moved"]["booked"] == ["room-1", _at("17:00"), _at("17:30")]
    assert views["custom-reason"]["reason"] == "salle réservée à 9 h — désolé"
    assert views["released"]["reason"] == "patiente appelée: très malade"
    odd = [views[f"odd-resource-{n}"] for n in range(len(ODD_VALUES))]
    assert {v["status"] for v in odd} == {"rejected"}  # the Decider's digests, computed again in JS
    assert [v["resource"] for v in odd] == [
        "5", "5.5", "None", "True", "1e+19", "1099511627776", "0", "9223372036854775807", "-9223372036854775808",
        "[1, 'x', None]", "{'k': 'v'}", "salle 1",
        "['\\u2028', 'é', '\\x01', \"it's\", 'say \"hi\"', '\\\\', '\\x85', '\\U000e0001', '😀']"]


def test_a_calendar_without_a_home_shows_every_live_request_booked() -> None:
    calendar = Calendar("clinic-1", actor="desk")
    made = [calendar.book(resource="room-1", start=_at(f"{9 + n:02}:00"), end=_at(f"{9 + n:02}:30"), patient=f"P-{n}",
                          now=NOW).id for n in range(4)]
    calendar.cancel(made[1], now=NOW)
    calendar.check_in(made[2], now=NOW)
    calendar.reservations[made[3]]["noshow_at"] = ""  # a mark counts when its key is present, whatever its value
    with calendar.doc.transaction():
        calendar.homes["1/x"] = "h1.not.signed"  # not a record: still no home
        calendar.homes["2/y"] = 7
    want = _assert_same({"plain": calendar})["plain"]
    assert [want["views"][rid]["status"] for rid in made] == ["booked", "cancelled", "checked-in", "noshow"]


# ---- forgeries -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(key: RelayKey, tag: str, payload: bytes) -> str:
    return key.sign(tag, payload)


def _raw_entry(rid: str, request: str, encoded: str) -> str:
    return f"{rid}/{request}/{encoded.rsplit('.', 1)[1][:22]}"


def _verdict_payload(calendar: Calendar, rid: str, **changes: Any) -> dict[str, Any]:
    fields = calendar.all_fields()[rid]
    payload = {"c": calendar.name, "r": rid, "q": request_digest(rid, fields), "o": "booked",
               "b": [fields["resource"], fields["start"], fields["end"]], "why": "", "w": "", "h": "relay-a", "e": 1,
               "t": "2026-11-25T07:00:00Z", "n": 1}
    return {**payload, **changes}


def _forged_desk() -> tuple[Desk, dict[str, str]]:
    desk = Desk()
    cal = desk.calendar
    impostor = RelayKey.generate()
    names = ["impostor", "copied", "original", "tampered", "lenient", "spaced", "float-epoch", "other-calendar",
             "other-relay", "huge-seq", "too-long", "not-text", "no-slash", "wrong-type"]
    ids = {name: desk.book(f"P-{name}", f"{8 + n // 2:02}:{30 * (n % 2):02}", f"{8 + n // 2:02}:{30 * (n % 2) + 15:02}",
                           resource=f"room-{n}") for n, name in enumerate(names)}
    desk.decider.close()  # nothing below is decided by the home except what we sign ourselves

    def put(rid: str, payload: dict[str, Any] | bytes, key: RelayKey = desk.key, entry: str | None = None) -> str:
        raw = payload if isinstance(payload, bytes) else _canonical(payload)
        encoded = _signed(key, VERDICT_TAG, raw)
        request = payload["q"] if isinstance(payload, dict) else request_digest(rid, cal.all_fields()[rid])
        key_name = entry or _raw_entry(rid, str(request), encoded)
        cal.verdicts[key_name] = encoded
        return key_name

    put(ids["impostor"], _verdict_payload(cal, ids["impostor"]), key=impostor)
    genuine = put(ids["original"], _verdict_payload(cal, ids["original"]))
    cal.verdicts[genuine.replace(ids["original"], ids["copied"], 1)] = cal.verdicts[genuine]
    rejected = put(ids["tampered"], _verdict_payload(cal, ids["tampered"], o="rejected", b=None))
    tag, body, sig = str(cal.verdicts[rejected]).split(".")
    flipped = json.loads(_unb64(body))
    flipped.update(o="booked", b=["room-3", START, END])
    cal.verdicts[rejected] = f"{tag}.{_b64(_canonical(flipped))}.{sig}"  # the same signature over other bytes
    lenient = put(ids["lenient"], _verdict_payload(cal, ids["lenient"]))
    tag, body, sig = str(cal.verdicts[lenient]).split(".")
    body = body.replace("-", "+").replace("_", "/")
    cal.verdicts[lenient] = f"{tag}.{body[:10]}!*={body[10:20]}=={body[20:]}.{sig}=="  # Python's decoder still reads it
    put(ids["spaced"], json.dumps(_verdict_payload(cal, ids["spaced"]), sort_keys=True).encode())
    put(ids["float-epoch"], _canonical(_verdict_payload(cal, ids["float-epoch"])).replace(b'"e":1', b'"e":1.0'))
    put(ids["other-calendar"], _verdict_payload(cal, ids["other-calendar"], c="clinic-2"))
    put(ids["other-relay"], _verdict_payload(cal, ids["other-relay"], h="relay-b"))
    put(ids["huge-seq"], _verdict_payload(cal, ids["huge-seq"], o="rejected", b=None, n=2**60))
    put(ids["huge-seq"], _verdict_payload(cal, ids["huge-seq"], n=2**60 - 1))
    put(ids["too-long"], _verdict_payload(cal, ids["too-long"], why="x" * 3100))
    cal.verdicts[f"{ids['not-text']}/x/y"] = 12345
    put(ids["no-slash"], _verdict_payload(cal, ids["no-slash"]), entry=ids["no-slash"])
    put(ids["wrong-type"], _verdict_payload(cal, ids["wrong-type"], why=5))
    return desk, ids


def test_forged_copied_and_tampered_verdicts_are_no_decisions_in_python_or_js() -> None:
    desk, ids = _forged_desk()
    want = _assert_same({"forged": desk.calendar})["forged"]
    status = {name: want["views"][rid]["status"] for name, rid in ids.items()}
    assert status == {name: "pending" for name in ids} | {"original": "booked", "lenient": "booked", "huge-seq": "rejected"}
    assert want["states"][ids["huge-seq"]]["seq"] == str(2**60)  # past 2**53: compared as integers, not floats


def test_a_reservation_id_with_a_slash_reads_the_same_on_the_board() -> None:
    """Entry keys are filed under everything before their last two "/"-parts, so the verdict of
    reservation "X/1" is X/1's alone, in Python and on the board."""
    desk = Desk()
    parent = desk.book("P-parent", "09:00", "09:30")
    desk.book("P-child", "10:00", "10:30", reservation_id=f"{parent}/1")
    desk.decider.close()
    desk.verdict(f"{parent}/1", Decision.BOOKED)
    assert desk.calendar.get(parent).status is Status.PENDING
    assert desk.calendar.get(f"{parent}/1").status is Status.BOOKED
    _assert_same({"slash": desk.calendar})


def test_after_a_handover_only_the_new_homes_verdicts_count() -> None:
    old = Desk(relay_id="relay-a")
    cal = old.calendar
    first, second = old.book("P-1", "09:00", "09:30"), old.book("P-2", "10:00", "10:30")
    old.decide()
    new_key = RelayKey.generate()
    home = cal.home_record
    assert home is not None
    cal.add_home_record(*handover(home, old.key, "relay-b", new_key.public))
    before = _assert_same({"handed-over": cal})["handed-over"]
    assert before["home"] == ["relay-b", "2"] and before["views"][first]["status"] == "pending"

    decide(cal, first, Decision.BOOKED, relay_id="relay-b", key=new_key, epoch=2)
    decide(cal, second, Decision.BOOKED, relay_id="relay-b", key=new_key, epoch=1)  # the wrong epoch
    decide(cal, second, Decision.BOOKED, relay_id="relay-a", key=old.key, epoch=2)  # the old home, still signing
    stranger = RelayKey.generate()
    forged = HomeRecord(cal.name, 3, "relay-c", stranger.public, stranger.public)  # epoch 3 not signed by relay-b
    forged_text = stranger.sign(HOME_TAG, forged.payload())
    cal.homes[forged.entry_key(forged_text)] = forged_text
    after = _assert_same({"handed-over": cal})["handed-over"]
    assert after["home"] == ["relay-b", "2"]
    assert [after["views"][rid]["status"] for rid in (first, second)] == ["booked", "pending"]


def test_a_handover_to_something_that_is_not_a_key_leaves_the_old_home_deciding() -> None:
    desk = Desk(relay_id="relay-a")
    rid = desk.book("P-1", "09:00", "09:30")
    desk.decide()
    home = desk.calendar.home_record
    assert home is not None
    for n, to_key in enumerate(["not-a-key", _b64(bytes(31)), "é"]):  # signed by the home, but no key
        record = HomeRecord(home.calendar, 2, f"relay-{n}", to_key, home.public_key)
        record_text = desk.key.sign(HOME_TAG, record.payload())
        desk.calendar.homes[record.entry_key(record_text)] = record_text
    want = _assert_same({"bad-handover": desk.calendar})["bad-handover"]
    assert want["home"] == ["relay-a", "1"] and want["views"][rid]["status"] == "booked"


def test_two_homes_at_epoch_one_agree_on_the_lowest_relay_id() -> None:
    desk = Desk(relay_id="relay-b")
    rid = desk.book("P-1", "09:00", "09:30")
    desk.decide()
    other = RelayKey.generate()
    desk.calendar.add_home_record(*first_home(desk.calendar.name, "relay-0", other))
    want = _assert_same({"two-homes": desk.calendar})["two-homes"]
    assert want["home"] == ["relay-0", "1"] and want["views"][rid]["status"] == "pending"


INFINITE_HOME = b'{"c":"clinic-1","e":Infinity,"h":"x","k":"k","s":"k"}'


def test_payloads_that_make_the_engine_raise_are_no_decisions_on_the_board() -> None:
    """An epoch of Infinity (int() would raise OverflowError) or JSON nested 2,000 deep
    (RecursionError): no record, no decision, in Python and on the board alike."""
    desk = Desk()
    rid = desk.book("P-1", "09:00", "09:30")
    cal = desk.calendar
    payload = _canonical(_verdict_payload(cal, rid)).replace(b'"e":1', b'"e":Infinity')
    with cal.doc.transaction():
        cal.verdicts[f"{rid}/x/infinite"] = f"{VERDICT_TAG}.{_b64(payload)}.{_b64(bytes(64))}"
        cal.verdicts[f"{rid}/x/deep"] = f"{VERDICT_TAG}.{_b64(b'[' * 2000)}.{_b64(bytes(64))}"
        cal.homes["2/x"] = f"{HOME_TAG}.{_b64(INFINITE_HOME)}.{_b64(bytes(64))}"
    assert cal.get(rid).status is Status.PENDING
    _assert_same({"hostile": cal})
    got = _run([_calendar_case(cal)])[0]
    assert got["home"] == ["relay-a", "1"] and got["views"][rid]["status"] == "pending"


# ---- libsodium's Ed25519 rules, which WebCrypto alone does not apply -------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, P - 2, P) % P
Point = tuple[int, int, int, int]


def _add(p: Point, q: Point) -> Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = 2 * t1 * t2 * _D % P, 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(s: int, p: Point) -> Point:
    q: Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p, s = _add(p, p), s >> 1
    return q


def _encode(p: Point) -> bytes:
    zi = pow(p[2], P - 2, P)
    x, y = p[0] * zi % P, p[1] * zi % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _decode(y: int, sign: int = 0) -> Point | None:
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = P - x
    return x, y, 1, x * y % P


def _point(y: int) -> Point:
    point = _decode(y)
    assert point is not None
    return point


BASE = _point(4 * pow(5, P - 2, P) % P)
IDENTITY: Point = (0, 1, 1, 0)


def _torsion() -> Point:
    """A point of order 8 (the small-order part of a curve point)."""
    for y in itertools.count(2):
        point = _decode(y)
        if point is not None:
            torsion = _mul(L, point)
            if _encode(_mul(4, torsion)) != _encode(IDENTITY):
                return torsion
    raise AssertionError("unreachable")


def _hash(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little") % L


def _cofactor_signature(public: bytes, message: bytes, secret: int = 0, *, passes: bool = True) -> bytes:
    """(R, S) with S = r + k*secret, R = [r]B: it passes the cofactorless check [S]B = R + [k]A exactly
    when [k] kills A's small-order part, so k is chosen divisible by 8 (``passes``) or not."""
    for r in itertools.count(7):
        big_r = _encode(_mul(r, BASE))
        k = _hash(big_r, public, message)
        if (k % 8 == 0) == passes:
            return big_r + ((r + k * secret) % L).to_bytes(32, "little")
    raise AssertionError("unreachable")


def _sign_detached(key: RelayKey, message: bytes) -> bytes:
    tag, payload = message.split(b"\0", 1)
    return _unb64(key.sign(tag.decode(), payload).rsplit(".", 1)[1])


def _edge_records(calendar: str) -> dict[str, str]:
    """Epoch-1 home records, by name, on Ed25519's edges (each claims a low relay id, so it would win)."""
    out: dict[str, str] = {}

    def record(name: str, public: bytes, sign: Callable[[bytes], bytes]) -> None:
        payload = _canonical({"c": calendar, "e": 1, "h": f"a-{name}", "k": _b64(public), "s": _b64(public)})
        out[name] = f"{HOME_TAG}.{_b64(payload)}.{_b64(sign(HOME_TAG.encode() + bytes(1) + payload))}"

    torsion = _torsion()
    small = {1: IDENTITY, 2: _mul(4, torsion), 4: _mul(2, torsion), 8: torsion}
    for order, sign_bit in itertools.product(small, (0, 1)):  # any "signature" of k = 0 mod 8 passes
        encoded = _encode(small[order])
        public = encoded[:31] + bytes([encoded[31] | sign_bit << 7])
        record(f"order-{order}-sign-{sign_bit}", public, functools.partial(_cofactor_signature, public))
    for name, y in (("p", P), ("p-plus-1", P + 1), ("p-plus-2", P + 2)):  # y >= p: not canonical
        public = y.to_bytes(32, "little")
        record(f"non-canonical-{name}", public, functools.partial(_cofactor_signature, public))
    seed = hashlib.sha256(b"edge").digest()
    secret = (int.from_bytes(hashlib.sha512(seed).digest()[:32], "little") & ((1 << 254) - 8)) | (1 << 254)
    genuine, public = RelayKey.from_bytes(seed), _encode(_mul(secret, BASE))
    assert _b64(public) == genuine.public
    record("genuine", public, lambda m: _sign_detached(genuine, m))
    identity = _encode(IDENTITY)  # R of order 1: [S]B - [k]A = identity for S = k * secret
    record("small-order-r", public, lambda m: identity + (_hash(identity, public, m) * secret % L).to_bytes(32, "little"))
    record("s-plus-order", public, lambda m: (lambda sig: sig[:32] + (int.from_bytes(sig[32:], "little") + L).to_bytes(
        32, "little"))(_sign_detached(genuine, m)))
    mixed = _encode(_add(_mul(secret, BASE), torsion))  # a known key plus a small-order part: allowed
    record("mixed-order-passes", mixed, lambda m: _cofactor_signature(mixed, m, secret))
    record("mixed-order-fails", mixed, lambda m: _cofactor_signature(mixed, m, secret, passes=False))
    return out


def test_home_records_pass_the_ed25519_checks_libsodium_makes_and_webcrypto_alone_does_not() -> None:
    records = _edge_records("clinic-1")
    answers = _run([{"kind": "homeRecord", "text": text, "calendar": "clinic-1"} for text in records.values()])
    accepted = {}
    for (name, text), got in zip(records.items(), answers, strict=True):
        want = read_home_record(text, "clinic-1")
        assert got == (None if want is None else [want.relay_id, str(want.epoch), want.public_key, want.signer]), name
        accepted[name] = want is not None
    # A small-order key verifies any message under the cofactorless check: only libsodium's list stops it.
    assert accepted == {name: name in ("genuine", "mixed-order-passes") for name in records}


def test_a_forged_home_with_a_small_order_key_takes_no_calendar() -> None:
    desk = Desk(relay_id="relay-z")
    rid = desk.book("P-1", "09:00", "09:30")
    desk.decide()
    for name, text in _edge_records(desk.calendar.name).items():
        if name.startswith("order-1"):
            desk.calendar.homes[f"1/a-{name}"] = text
            forged = Verdict(desk.calendar.name, rid, request_digest(rid, desk.calendar.all_fields()[rid]), "rejected",
                             None, "forged", "", f"a-{name}", 1, "2026-11-25T07:00:00Z", 99)
            sig = _cofactor_signature(_encode(IDENTITY), VERDICT_TAG.encode() + bytes(1) + forged.payload())
            encoded = f"{VERDICT_TAG}.{_b64(forged.payload())}.{_b64(sig)}"
            desk.calendar.verdicts[forged.entry_key(encoded)] = encoded
    want = _assert_same({"small-order": desk.calendar})["small-order"]
    assert want["home"] == ["relay-z", "1"] and want["views"][rid]["status"] == "booked"


# ---- the bytes under it all --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=25, deadline=None)
@given(st.lists(JSON_VALUES, min_size=1, max_size=80))
def test_canonical_json_is_byte_for_byte_pythons(values: list[Any]) -> None:
    cases = [{"kind": "canonical", "json": json.dumps(v, ensure_ascii=False)} for v in values]
    assert _run(cases) == [_canonical({"v": v})[5:-1].decode() for v in values]


def test_canonical_json_of_edge_values_is_pythons() -> None:
    values: list[Any] = ["é", "\U0001f600", "\ud800", "\x00\x1f\x7f\x80\u2028\ufeff", '"\\/\b\f\n\r\t', 2**64, -(2**64), 0,
                         1e16, 1e15, 1e-4, 1e-5, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2,
                         {"\ue000": 1, "\U0001f600": 2, "b": 3, "B": 4, "": 5}, [[], {}, [None]]]
    cases = [{"kind": "canonical", "json": json.dumps(v)} for v in values]
    assert _run(cases) == [_canonical({"v": v})[5:-1].decode() for v in values]


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.floats(min_value=-1e20, max_value=1e20)
                | st.integers(-(10**17), 10**17).map(lambda n: n / 100), min_size=1, max_size=150))
def test_float_repr_is_pythons(values: list[float]) -> None:
    assert _run([{"kind": "floatRepr", "value": v} for v in values]) == [repr(v) for v in values]


def _python_unb64(text: str) -> str | None:
    try:
        return _unb64(text).hex()
    except (ValueError, TypeError):
        return None


@settings(max_examples=10, deadline=None)
@given(st.lists(st.text(alphabet="AQgw09-_+/=!.é ", max_size=14), min_size=400, max_size=400))
def test_base64url_is_decoded_as_leniently_as_python_decodes_it(texts: list[str]) -> None:
    assert _run([{"kind": "unb64", "text": t} for t in texts]) == [_python_unb64(t) for t in texts]


@settings(max_examples=8, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=8), st.dictionaries(
    st.sampled_from(["resource", "start", "end", "requested_at", "note"]), st.text(max_size=8))), min_size=100, max_size=100))
def test_request_digests_are_pythons(requests: list[tuple[str, dict[str, str]]]) -> None:
    cases = [{"kind": "digest", "rid": rid, "fields": fields} for rid, fields in requests]
    assert _run(cases) == [request_digest(rid, fields) for rid, fields in requests]


# ---- statuses from any facts and decisions ------------------------------------------------------------------

STATES = {
    "undecided": UNDECIDED,
    "booked": DecisionState(Decision.BOOKED, ("room-1", START, END), decided_by="relay-a", seq=1),
    "rejected": DecisionState(Decision.REJECTED, None, reason="conflict", conflict_with="y", decided_by="relay-a", seq=1),
    "booked-then-asked-again": DecisionState(None, ("room-1", START, END), decided_by="relay-a", seq=1),
    "move-rejected": DecisionState(Decision.REJECTED, ("room-1", "2026-11-25T08:00:00Z", "2026-11-25T08:30:00Z"),
                                   reason="conflict", conflict_with="z", decided_by="relay-a", seq=2),
    "released": DecisionState(Decision.RELEASED, None, released=True, decided_by="relay-a", seq=2),
}


def _decided_json(state: DecisionState) -> dict[str, Any]:
    return {"current": str(state.current) if state.current else None, "booked": list(state.booked) if state.booked else None,
            "released": state.released, "reason": state.reason, "conflictWith": state.conflict_with,
            "decidedBy": state.decided_by, "seq": str(state.seq)}


def _fact_combinations() -> list[dict[str, Any]]:
    """Every mix of lifecycle marks (present with any value, or absent) over one request."""
    base = {"id": "x", "resource": "room-1", "start": START, "end": END, "cancel_reason": "phoned"}
    marks: list[dict[str, Any]] = [{}, *[{key: START} for key, _ in LIFECYCLE_MARKS], {"cancelled_at": ""},
                                   {"cancelled_at": None}, {"cancelled_at": START, "checked_in_at": START}]
    return [{**base, **mark} for mark in marks]


def test_status_and_view_are_derived_exactly_as_the_engine_derives_them() -> None:
    cases: list[dict[str, Any]] = [{"kind": kind, "fields": f, "hasHome": h, "decided": _decided_json(s), "state": name}
             for f in _fact_combinations() for h in (True, False) for name, s in STATES.items() for kind in ("status", "view")]
    seen = set()
    for case, answer in zip(cases, _run(cases), strict=True):
        fields, has_home, state = case["fields"], case["hasHome"], STATES[case["state"]]
        if case["kind"] == "status":
            assert answer == str(derive_status(fields, has_home=has_home, decided=state)), case
            seen.add(answer)
            continue
        want = reservation_from_fields("clinic-1", fields, has_home=has_home, decided=state)  # type: ignore[arg-type]
        booked = None if want.booked is None else [want.booked.resource, *(
            t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (want.booked.start, want.booked.end))]
        assert answer == {"status": str(want.status), "resource": want.resource, "patient": want.patient,
                          "proposal": want.proposal, "reason": want.reason, "conflict": want.conflict_with,
                          "decidedBy": want.decided_by, "booked": booked}, case
    assert seen == {str(s) for s in Status}


def test_allowed_moves_and_retired_decision_keys_are_the_engines() -> None:
    actions, keys = _run([{"kind": "actions"}, {"kind": "decisionKeys"}])
    assert set(actions) == {str(a) for a in Action} - {str(Action.EDIT)}  # the board edits no descriptive field
    for action in set(Action) - {Action.EDIT}:
        assert sorted(actions[str(action)]) == sorted(str(s) for s in ALLOWED_FROM[action])
    assert set(keys) == set(DECISION_KEYS)


# ---- writing ----------------------------------------------------------------------------------------------------


def _request(**changes: Any) -> dict[str, Any]:
    request = {"resource": "room-1", "start": START, "end": END, "patient": "P-1", "service": "", "note": ""}
    return {**request, **changes}


BOOKINGS = [
    _request(),
    _request(patient="Zoë Ångström 😀", note="première visite"),
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
    args = {"calendar": "clinic-1", "actor": "Ana", "nowMs": now_ms, "randomBytes": list(range(10)),
            "resourceIds": ["room-1", "room-2"]}
    cases: list[dict[str, Any]] = [{"kind": "book", "args": {**args, "request": r}} for r in BOOKINGS]
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
    statuses: dict[Status, tuple[dict[str, Any], DecisionState]] = {
        Status.PENDING: ({}, UNDECIDED),
        Status.BOOKED: ({}, STATES["booked"]),
        Status.REJECTED: ({}, STATES["rejected"]),
        Status.CANCELLED: ({"cancelled_at": START}, STATES["booked"]),
        Status.CHECKED_IN: ({"checked_in_at": START}, STATES["booked"]),
        Status.FULFILLED: ({"fulfilled_at": ""}, UNDECIDED),
        Status.NOSHOW: ({"noshow_at": START}, STATES["booked"]),
        Status.ENTERED_IN_ERROR: ({"entered_in_error_at": START}, STATES["released"]),
    }
    changes = {Action.RESCHEDULE: {"start": "2026-11-25T10:00:00Z", "end": "2026-11-25T10:30:00Z"},
               Action.CANCEL: {"cancelled_at": "2026-11-25T08:00:00Z", "cancel_reason": ""},
               Action.CHECK_IN: {"checked_in_at": "2026-11-25T08:00:00Z"},
               Action.FULFILL: {"fulfilled_at": "2026-11-25T08:00:00Z"},
               Action.NOSHOW: {"noshow_at": "2026-11-25T08:00:00Z"},
               Action.ENTERED_IN_ERROR: {"entered_in_error_at": "2026-11-25T08:00:00Z", "cancel_reason": ""}}
    cases: list[dict[str, Any]] = []
    for status, (extra, state) in statuses.items():
        fields = {"id": "r1", "resource": "room-1", "start": START, "end": END, **extra}
        assert derive_status(fields, has_home=True, decided=state) is status
        for action, change in changes.items():
            cases.append({"kind": "update", "status": status, "action": action, "args": {
                "id": "r1", "fields": fields, "hasHome": True, "decided": _decided_json(state), "action": str(action),
                "changes": change, "actor": "Bo", "nowMs": now_ms}})
    for case, answer in zip(cases, _run(cases), strict=True):
        status, action = case["status"], case["action"]
        if status in ALLOWED_FROM[action]:
            written = answer["ok"]
            assert written["updated_by"] == "Bo" and written["updated_at"] == "2026-11-25T08:00:00Z"
            assert not set(written) & DECISION_KEYS
        else:
            message = str(InvalidTransition(f"cannot {action} reservation r1 ({status}): {WHY_REFUSED[status]}"))
            assert answer == {"error": message, "refused": True}


def test_actions_write_the_very_keys_and_values_the_python_api_writes() -> None:
    later = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    # The board's changes: written out, or the name of the board-model.js function that makes them.
    acts: dict[Action, tuple[dict[str, str] | str, Callable[[Calendar, str], object]]] = {
        Action.RESCHEDULE: ({"start": _at("10:00"), "end": _at("10:30"), "resource": "room-2"},
                            lambda c, rid: c.reschedule(rid, start=_at("10:00"), end=_at("10:30"), resource="room-2", now=later)),
        Action.CANCEL: ({"cancelled_at": "2026-11-25T08:00:00Z", "cancel_reason": "appelée à 7 h"},
                        lambda c, rid: c.cancel(rid, now=later, reason="appelée à 7 h")),
        Action.CHECK_IN: ({"checked_in_at": "2026-11-25T08:00:00Z"}, lambda c, rid: c.check_in(rid, now=later)),
        Action.FULFILL: ("fulfilChanges", lambda c, rid: c.fulfil(rid, now=later)),
        Action.NOSHOW: ("noShowChanges", lambda c, rid: c.no_show(rid, now=later)),
        Action.ENTERED_IN_ERROR: ("enteredInErrorChanges", lambda c, rid: c.mark_entered_in_error(rid, now=later, reason="dup")),
    }
    cases: list[dict[str, Any]] = []
    wanted: list[dict[str, Any]] = []
    for action, (change, act) in acts.items():
        desk = Desk()
        rid = desk.book("P-1", "09:00", "09:30")
        desk.decide()
        before = desk.calendar.all_fields()[rid]
        state = desk.calendar.decision_state(rid, before)
        desk.calendar.actor = "Bo"
        act(desk.calendar, rid)
        after = desk.calendar.all_fields()[rid]
        wanted.append({key: value for key, value in after.items() if before.get(key, wanted) != value})
        cases.append({"kind": "update", "args": {"id": rid, "fields": before, "hasHome": True, "decided": _decided_json(state),
                                                 "action": str(action), "changes": change, "actor": "Bo",
                                                 "nowMs": int(later.timestamp() * 1000), "reason": "dup"}})
    assert [answer["ok"] for answer in _run(cases)] == wanted


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



def test_the_day_grid_offers_the_free_time_between_slots_held() -> None:
    held = [("room-1", _at("09:00"), _at("09:30"), "booked"), ("room-1", _at("10:00"), _at("10:20"), "pending"),
            ("room-1", _at("09:10"), _at("09:40"), "rejected"), ("room-2", _at("07:15"), _at("08:00"), "cancelled"),
            ("room-1", _at("17:40"), _at("19:10"), "checked-in")]
    (layout,) = _run([{"kind": "grid", "items": held, "resources": ["room-2", "dr-lee"], "from": DAY[0], "to": DAY[1]}])
    assert (layout["start"], layout["end"]) == (_at("07:00"), _at("20:00"))  # 08-18, widened to what is booked
    assert layout["columns"] == [{"resource": "dr-lee", "lanes": 1, "first": 0}, {"resource": "room-1", "lanes": 2, "first": 1},
                                 {"resource": "room-2", "lanes": 2, "first": 3}]  # a cancelled one leaves lane 0 free
    assert ["room-1", 1, _at("09:10"), _at("09:40")] in layout["blocks"]  # the rejected request sits beside the booking
    room1 = [(start, end) for resource, start, end in layout["free"] if resource == "room-1"]
    assert room1[:6] == [(_at("07:00"), _at("07:30")), (_at("07:30"), _at("08:00")), (_at("08:00"), _at("08:30")),
                         (_at("08:30"), _at("09:00")), (_at("09:30"), _at("10:00")), (_at("10:20"), _at("10:30"))]
    assert room1[-3:] == [(_at("17:30"), _at("17:40")), (_at("19:10"), _at("19:30")), (_at("19:30"), _at("20:00"))]
    room2 = [(start, end) for resource, start, end in layout["free"] if resource == "room-2"]
    assert room2[0] == (_at("07:00"), _at("07:30")) and len(room2) == 26  # a cancelled slot is free again


# ---- opening hours and free time (board-hours.js against engine/slots.py) ------------------------------

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham",
         "", "Not/AZone", "utc")
# Days around this year's daylight-saving changes (EU, US, Lord Howe's half-hour ones), and plain days.
DAYS_AROUND = ("2026-03-07", "2026-03-28", "2026-04-04", "2026-10-03", "2026-10-24", "2026-10-31", "2026-11-30",
               "2026-12-24")


def _hours_case(rng: random.Random) -> dict[str, Any]:
    def hhmm(minutes: int) -> str:
        return "24:00" if minutes == 1440 else f"{minutes // 60:02d}:{minutes % 60:02d}"

    def day_intervals() -> list[list[str]]:
        cuts = sorted(rng.sample(range(0, 1441, rng.choice((15, 30, 60))), rng.choice((0, 2, 2, 4, 6))))
        return [[hhmm(a), hhmm(b)] for a, b in zip(cuts[::2], cuts[1::2], strict=True) if a < b]

    entry: dict[str, Any] = {}
    if rng.random() < 0.85:
        weekly = {day: day_intervals() for day in rng.sample(DAYS, rng.randint(0, 7))}
        if rng.random() < 0.08:  # one that does not read: closed
            weekly["mon"] = [["9:00", "17:00"]] if rng.random() < 0.5 else [["12:00", "11:00"]]
        entry["hours"] = json.dumps(weekly)
    start = datetime.fromisoformat(rng.choice(DAYS_AROUND)).replace(tzinfo=UTC) + timedelta(hours=rng.randint(-14, 14))
    end = start + timedelta(hours=rng.choice((6, 24, 49)))
    if rng.random() < 0.5:
        dates = {(start + timedelta(days=d)).date().isoformat(): day_intervals() for d in range(rng.randint(1, 3))}
        if rng.random() < 0.08:
            dates = {"20261225": []}  # does not read: no exceptions
        entry["hours_exceptions"] = json.dumps(dates)
    entry["capacity"] = rng.choice((1, 1, 2, 3, 0, "2"))
    holds = []
    for _ in range(rng.randint(0, 8)):
        at = start + timedelta(minutes=rng.randrange(0, int((end - start).total_seconds() // 60), 15))
        holds.append([format_time(at), format_time(at + timedelta(minutes=rng.choice((15, 30, 90)))), rng.random() < 0.4])
    return {"kind": "slots", "entry": entry, "zone": rng.choice(ZONES), "from": format_time(start), "to": format_time(end),
            "holds": holds}


def _python_slots(case: dict[str, Any]) -> list[list[str]]:
    entry = case["entry"]
    hours = opening_hours(entry.get("hours"), entry.get("hours_exceptions"))
    lo, hi = parse_time(case["from"]), parse_time(case["to"])
    intervals = open_intervals(hours, zone_of(case["zone"]), lo, hi)
    holds = [Hold(parse_time(a), parse_time(b), tentative=t) for a, b, t in case["holds"]]
    return [[format_time(s.start), format_time(s.end), str(s.status)]
            for s in compute_slots("r", intervals, holds, read_capacity(entry.get("capacity", 1)))]


def test_the_boards_free_time_is_the_engines_across_zones_daylight_saving_exceptions_and_capacity() -> None:
    """400 generated schedules (weekly hours, exceptions, unreadable ones, capacity up to 3) in nine
    zones, on days around daylight-saving changes (a skipped hour, a repeated one, half-hour shifts):
    board-hours.js finds exactly engine/slots.py's free, busy-tentative and busy stretches."""
    rng = random.Random(20261201)
    cases = [_hours_case(rng) for _ in range(400)]
    cases += [  # by hand: an opening inside the hour the clock skips, and inside the one it repeats
        {"kind": "slots", "entry": {"hours": json.dumps({"sun": [["02:30", "03:30"]]})}, "zone": "Europe/Berlin",
         "from": "2026-03-28T12:00:00Z", "to": "2026-03-30T00:00:00Z", "holds": []},
        {"kind": "slots", "entry": {"hours": json.dumps({"sun": [["02:30", "04:00"]]})}, "zone": "Europe/Berlin",
         "from": "2026-10-24T12:00:00Z", "to": "2026-10-26T00:00:00Z", "holds": []},
    ]
    answers = _run(cases)
    assert sum(1 for a in answers if a) > 250  # most cases have open time to compare
    for case, got in zip(cases, answers, strict=True):
        assert got == _python_slots(case), case
    assert answers[-2] == []  # 02:30 does not exist that night: fold=0 reads it as 01:30Z, as 03:30 CEST is
    assert answers[-1] == [["2026-10-25T00:30:00Z", "2026-10-25T03:00:00Z", "free"]]  # the first 02:30 (CEST)


def test_a_takeover_that_adopts_keeps_decisions_on_the_board_and_a_deposed_homes_late_ones_count_nowhere() -> None:
    """A relay cluster's takeover (one key): epoch 2 adopts epoch 1's serials 1..2; epoch 1's
    serial 3 (signed after the takeover, or never stored) is no decision, nor is anything a
    forged or tampered adoption would bring; the board reads every one as Python does."""
    old = Desk(relay_id="pg-a")
    cal = old.calendar
    first, second = old.book("P-1", "09:00", "09:30"), old.book("P-2", "10:00", "10:30")
    old.decide()  # serials 1 and 2
    home = cal.home_record
    assert home is not None
    record, text = handover(home, old.key, "pg-b", old.key.public, adopts=2)
    cal.add_home_record(record, text)
    late = old.book("P-3", "11:00", "11:30")
    assert old.decide()  # pg-a has not noticed yet: it signs serial 3 at epoch 1
    stranger = RelayKey.generate()  # epoch 3 adopting everything, signed by someone else
    forged = HomeRecord(cal.name, 3, "pg-c", stranger.public, stranger.public, adopts=10**6)
    forged_text = stranger.sign(HOME_TAG, forged.payload())
    cal.homes[forged.entry_key(forged_text)] = forged_text
    _tag, payload, signature = text.split(".")  # the genuine record, its adoption raised: a forgery
    raised = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raised["a"], raised["h"] = 10**6, "pg-z"
    tampered = "h1." + _b64(json.dumps(raised, sort_keys=True, separators=(",", ":")).encode()) + "." + signature
    cal.homes[f"2/pg-z/{signature[:22]}"] = tampered
    want = _assert_same({"adopted": cal})["adopted"]
    assert want["home"] == ["pg-b", "2"]
    assert [want["views"][rid]["status"] for rid in (first, second, late)] == ["booked", "booked", "pending"]
    successor = Decider(cal, "pg-b", old.key)
    assert [d.reservation_id for d in successor.decide_all_pending(old.clock)] == [late]
    after = _assert_same({"adopted": cal})["adopted"]
    assert [after["views"][rid]["status"] for rid in (first, second, late)] == ["booked", "booked", "booked"]
