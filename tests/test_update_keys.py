"""Relays can tell, from the bytes alone, whether an update writes the home relay's keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText, get_state, merge_updates

from accord.engine.calendar import Calendar
from accord.engine.errors import MalformedMessage
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.update_keys import UNKNOWN_KEY, KeyIndex, ProtectedWrite, _scan_update


class LegacyDecider:
    """Writes decisions the way homes did before signed verdicts: the (now retired) decision keys
    in each reservation's map and ``meta.home``. The key index still guards exactly those keys."""

    def __init__(self, calendar: Calendar, relay_id: str) -> None:
        self.calendar = calendar
        self.relay_id = relay_id
        with calendar.doc.transaction(origin=("decider", relay_id)):
            calendar.meta["home"] = relay_id

    def decide_queued(self, now: datetime) -> None:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        taken: set[tuple[str, str]] = set()
        with self.calendar.doc.transaction(origin=("decider", self.relay_id)):
            for rid, fields in sorted(self.calendar.all_fields().items(), key=lambda item: item[1].get("created_at", "")):
                slot = (str(fields.get("resource")), str(fields.get("start")))
                if "cancelled_at" in fields or fields.get("decided_start") == fields.get("start"):
                    taken.update([slot] if fields.get("decision") == "booked" else [])
                    continue
                entry = self.calendar.reservations[rid]
                booked = slot not in taken
                changes = {"decision": "booked" if booked else "rejected", "decided_resource": slot[0],
                           "decided_start": fields.get("start"), "decided_end": fields.get("end"),
                           "decided_by": self.relay_id, "decided_at": stamp, "reason": "" if booked else "conflict",
                           "conflict_with": ""}
                if booked:
                    changes.update(booked_resource=slot[0], booked_start=fields.get("start"), booked_end=fields.get("end"))
                    taken.add(slot)
                for key, value in changes.items():
                    if entry.get(key) != value:
                        entry[key] = value

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def updates_of(replica: Replica) -> list[bytes]:
    return [change.update for change in replica.take_changes()]


class Setup:
    """A home relay (deciding), a second relay that only stores, and two terminals."""

    def __init__(self) -> None:
        self.home = Replica("clinic-1", actor="relay-a", client_id=1)
        self.decider = LegacyDecider(self.home.calendar, "relay-a")
        self.relay = Replica("clinic-1", actor="relay-b", client_id=2)
        self.index = KeyIndex()  # relay-b's index, fed with everything relay-b applies
        self.terminals = [Replica("clinic-1", actor=f"desk-{i}", client_id=10 + i) for i in range(2)]
        self.to_relay(updates_of(self.home))
        for terminal in self.terminals:
            terminal.apply(self.relay.full_state())
            terminal.take_changes()

    def to_relay(self, updates: list[bytes]) -> None:
        for update in updates:
            change = self.relay.apply(update)
            if change is not None:
                self.index.observe(change.update)

    def book(self, terminal: int, start: str = "09:00", end: str = "09:30") -> str:
        rid = self.terminals[terminal].calendar.book(
            resource="room-1", start=f"2026-12-01T{start}:00Z", end=f"2026-12-01T{end}:00Z", patient="p", now=NOW
        ).id
        return rid

    def decide_at_home(self, terminal: int) -> list[bytes]:
        """Sync a terminal into the home relay, decide, return the home's new changes."""
        self.home.apply(self.terminals[terminal].diff(self.home.state_vector()))
        self.home.take_changes()
        self.decider.decide_queued(NOW)
        return updates_of(self.home)


def test_ordinary_terminal_edits_are_not_flagged() -> None:
    s = Setup()
    rid = s.book(0)
    booking = updates_of(s.terminals[0])
    assert not s.index.writes_protected(booking[0])
    s.to_relay(booking)
    calendar = s.terminals[0].calendar
    calendar.edit(rid, note="bring x-rays", now=NOW)
    calendar.edit(rid, note="bring x-rays and a form", patient="P. Smith", now=NOW)
    calendar.reschedule(rid, start="2026-12-01T10:00:00Z", end="2026-12-01T10:30:00Z", now=NOW)
    calendar.cancel(rid, now=NOW, reason="moved away")
    for update in updates_of(s.terminals[0]):
        assert s.index.protected_writes(update) == []
        s.to_relay([update])


def test_decisions_and_home_written_by_the_home_relay_are_flagged() -> None:
    s = Setup()
    home_update = s.home.full_state()
    writes = KeyIndex().protected_writes(home_update)
    assert [w.key for w in writes] == ["home"]

    rid = s.book(0)
    s.book(1)
    s.terminals[0].take_changes()
    for terminal in s.terminals:
        s.home.apply(terminal.full_state())
    s.home.take_changes()
    s.decider.decide_queued(NOW)
    (decision,) = updates_of(s.home)
    keys = {w.key for w in s.index.protected_writes(decision)}
    assert keys >= {"decision", "decided_start", "booked_start", "decided_by", "conflict_with", "reason"}
    assert s.home.calendar.all_fields()[rid]["decided_by"] == "relay-a"


def test_overwriting_a_decision_from_a_second_doc_is_flagged_through_its_origin() -> None:
    s = Setup()
    rid = s.book(0)
    s.to_relay([s.terminals[0].full_state()])
    decision = s.decide_at_home(0)
    s.to_relay(decision)
    rogue = s.terminals[1]
    rogue.apply(s.relay.full_state())
    rogue.take_changes()
    # A rogue terminal that received the decision rewrites it: the new item has an origin
    # (the home relay's item) and no key of its own.
    rogue.calendar.reservations[rid]["decision"] = "rejected"
    rogue.calendar.reservations[rid]["booked_start"] = "2026-12-01T07:00:00Z"
    forged = updates_of(rogue)
    raw = _scan_update(forged[0])
    assert raw.candidates and raw.candidates[0][4] == 1  # origin is the home relay's client
    assert s.index.protected_writes(forged[0]) == [
        ProtectedWrite(rogue.doc.client_id, raw.candidates[0][1], "decision"),
        ProtectedWrite(1, raw.candidates[0][5], "decision", deleted=True),  # the overwritten value
    ]
    assert s.index.writes_protected(forged[1])
    # An index that never saw the decision cannot know: that is why the relay feeds it everything.
    assert not KeyIndex().writes_protected(forged[0])
    # The same holds for an index built from the relay's loaded document.
    assert KeyIndex.from_update(s.relay.full_state()).writes_protected(forged[0])


def test_overwrites_inside_one_update_inherit_the_key_of_an_item_in_the_same_update() -> None:
    doc = Doc(client_id=50)
    reservations = doc.get("reservations", type=Map)
    reservations["r"] = Map({"note": ""})
    start = doc.get_state()
    with doc.transaction():
        reservations["r"]["reason"] = "a"
    reservations["r"]["reason"] = "b"  # origin: the item above
    reservations["r"]["reason"] = "c"
    update = doc.get_update(start)
    # "a" and "b" are deleted and squashed into one item (clocks 2-3) that carries the key;
    # "c" (clock 4) has that item as origin and no key of its own.
    inheriting = [c for c in _scan_update(update).candidates if c[1] == 4]
    assert inheriting and inheriting[0][4:6] == (50, 3)
    writes = KeyIndex().protected_writes(update)
    assert [(w.clock, w.key, w.deleted) for w in writes] == [(2, "reason", False), (4, "reason", False)]


def test_deleting_decision_keys_counts_as_writing_them() -> None:
    s = Setup()
    rid = s.book(0)
    s.to_relay([s.terminals[0].full_state()])
    s.to_relay(s.decide_at_home(0))
    rogue = s.terminals[1]
    rogue.apply(s.relay.full_state())
    rogue.take_changes()
    del rogue.calendar.reservations[rid]["decided_by"]
    (deletion,) = updates_of(rogue)
    assert [(w.key, w.deleted) for w in s.index.protected_writes(deletion)] == [("decided_by", True)]
    del rogue.calendar.reservations[rid]  # the whole reservation, decision included
    (wipe,) = updates_of(rogue)
    assert any(w.deleted and w.key == "decision" for w in s.index.protected_writes(wipe))


def test_a_resent_state_with_decisions_the_relay_already_has_is_not_a_write() -> None:
    s = Setup()
    rid = s.book(0)
    s.book(1)
    for terminal in (0, 1):
        s.to_relay([s.terminals[terminal].full_state()])
        s.to_relay(s.decide_at_home(terminal))
    # A rejected reschedule overwrites decision keys: the old items end up in the delete set.
    terminal = s.terminals[0]
    terminal.apply(s.relay.full_state())
    terminal.calendar.reschedule(rid, start="2026-12-01T09:00:00Z", end="2026-12-01T09:15:00Z", now=NOW)
    s.to_relay([terminal.full_state()])
    s.to_relay(s.decide_at_home(0))
    terminal.apply(s.relay.full_state())
    terminal.take_changes()
    assert s.index.protected_writes(terminal.full_state()) == []  # e.g. a sync step 2 after a reconnect
    terminal.calendar.edit(rid, note="x", now=NOW)
    (edit,) = updates_of(terminal)
    assert not s.index.writes_protected(merge_updates(terminal.diff(s.relay.state_vector()), edit))


def test_an_origin_past_what_the_relay_has_seen_of_a_decider_is_flagged() -> None:
    s = Setup()
    rid = s.book(0)
    s.to_relay([s.terminals[0].full_state()])
    s.to_relay(s.decide_at_home(0))
    # The home relay decides again; relay-b has not seen that yet, a rogue terminal has.
    s.home.calendar.reservations[rid]["reason"] = "second thoughts"
    rogue = s.terminals[1]
    rogue.apply(s.home.full_state())
    rogue.take_changes()
    rogue.calendar.reservations[rid]["reason"] = "forged"
    (forged,) = updates_of(rogue)
    writes = s.index.protected_writes(forged)
    assert [(w.key, w.deleted) for w in writes] == [(UNKNOWN_KEY, False), (UNKNOWN_KEY, True)]  # and it deletes it
    # With the home relay's item in the same update it is an ordinary, known overwrite.
    with_origin = merge_updates(rogue.diff(s.relay.state_vector()))
    assert "reason" in {w.key for w in s.index.protected_writes(with_origin)}


def test_index_from_full_state_matches_index_fed_incrementally() -> None:
    s = Setup()
    for i, start in enumerate(("09:00", "09:00", "10:00")):
        s.book(i % 2, start, "10:30")
    for terminal in (0, 1):
        s.to_relay([s.terminals[terminal].full_state()])
        s.to_relay(s.decide_at_home(terminal))
    rebuilt = KeyIndex.from_update(s.relay.full_state())
    for client in (1, 2, 10, 11):
        for clock in range(200):
            assert rebuilt.key_at(client, clock) == s.index.key_at(client, clock)
    assert rebuilt.protected_writers == s.index.protected_writers == frozenset({1})


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x01", b"\xff\xff\xff", b"\x01\x01\x05\x00\x1f", b"\x00\x00\x00", b"\x01" + b"\x80" * 20, b"\x00\x01"],
)
def test_garbage_is_malformed(garbage: bytes) -> None:
    with pytest.raises(MalformedMessage):
        KeyIndex().writes_protected(garbage)


def test_truncated_updates_are_malformed_and_leave_the_index_unchanged() -> None:
    s = Setup()
    s.book(0)
    update = s.terminals[0].full_state()
    index = KeyIndex()
    for cut in range(len(update)):
        with pytest.raises(MalformedMessage):
            index.observe(update[:cut])
    assert index.protected_writers == frozenset()
    assert KeyIndex().protected_writes(b"\x00\x00") == []


def every_content_kind() -> list[bytes]:
    """Updates with every struct and content kind pycrdt produces (and GC/Skip structs)."""
    doc = Doc(client_id=3)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc["t"] = text = Text()
    text += "héllo 😀 wörld"  # UTF-16 length differs from characters and bytes
    text.format(1, 4, {"bold": True})
    text.insert_embed(2, {"img": "x.png"})
    doc["a"] = array = Array()
    array.append({"x": [1, 2.5, -7, 2**40, None, True, False, b"\x00\x01", {"deep": {"er": [1]}}]})
    array.append(b"raw")
    array.extend([1, "two", 3.0])
    array.append(Map({"k": "v"}))
    doc["x"] = fragment = XmlFragment()
    fragment.children.append(XmlElement("p", {"class": "c"}, [XmlText("hi")]))
    doc["m"] = nested = Map()
    nested["sub"] = Doc()
    nested["gone"] = Map({"a": 1, "b": Map({"c": 2})})
    del nested["gone"]  # its children become GC structs in the full state
    del array[0]
    skipping = merge_updates(updates[0], updates[2])  # a gap in client 3's clocks: a Skip struct
    return [*updates, doc.get_update(), skipping]


def test_decoder_reads_every_content_kind_to_the_right_clock() -> None:
    *incremental, full, skipping = every_content_kind()
    replay = Doc()
    for update in incremental:
        replay.apply_update(update)
        assert_clocks_match(update, replay)
    assert _scan_update(full).ends == decode_state_vector(get_state(full))
    assert 3 in _scan_update(skipping).ends


def assert_clocks_match(update: bytes, replay: Doc) -> None:
    """The decoder ends each client's structs where Yrs says that client's clock is now."""
    state = decode_state_vector(replay.get_state())
    for client, end in _scan_update(update).ends.items():
        assert end == state[client]


def any_item(content: bytes) -> bytes:
    """client 9, clock 0: one item in root array "arr" with the given info byte and content."""
    return bytes([1, 1, 9, 0]) + content[:1] + bytes([1, 3]) + b"arr" + content[1:] + bytes([0])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        # Yrs reads legacy JSON content with one string more than Yjs writes.
        (bytes([0x02, 2, 3]) + b'"a"' + bytes([1]) + b"1", "json"),
        # Yjs reads a hook name after an XML hook type ref, Yrs does not.
        (bytes([0x07, 5, 1]) + b"h", "xml hook"),
        # Content ref 24: Yjs has none, Yrs masks it to 8 (any).
        (bytes([0x18, 1, 0x77, 1]) + b"x", "ref 24"),
        # ref 0 with a flag: GC for Yjs, an item for Yrs.
        (bytes([0x20, 1]), "flagged gc"),
    ],
)
def test_constructs_yjs_and_yrs_read_differently_are_refused(content: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage):
        KeyIndex().writes_protected(any_item(content))


def test_an_unusual_parent_info_is_refused() -> None:
    # parent info 2: an ID for Yjs and Yrs alike, but no encoder writes it
    update = bytes([1, 1, 9, 0, 0x28, 2, 5, 0, 1]) + b"k" + bytes([1, 0x77, 1]) + b"x" + bytes([0])
    with pytest.raises(MalformedMessage):
        KeyIndex().observe(update)


def test_a_parent_id_varint_over_ten_bytes_is_refused_like_every_other_varint() -> None:
    def nested_item(parent_client: bytes) -> bytes:
        """client 9, clock 0: ``k = "x"`` in the map whose item is (parent_client, 0)."""
        return bytes([1, 1, 9, 0, 0x28, 0]) + parent_client + bytes([0, 1]) + b"k" + bytes([1, 0x77, 1]) + b"x" + bytes([0])

    padded = b"\x85" + b"\x80" * 8 + b"\x00"  # 5 in 10 bytes: a 64-bit varint, if a wasteful one
    assert KeyIndex().protected_writes(nested_item(padded)) == []
    with pytest.raises(MalformedMessage, match="longer than 64 bits"):  # Yrs would still read 11 bytes
        KeyIndex().observe(nested_item(padded[:-1] + b"\x80\x00"))


def test_hand_encoded_any_item_matches_yrs() -> None:
    update = any_item(bytes([0x08, 2, 0x77, 1]) + b"x" + bytes([0x7D, 0xC1, 0x01]))  # ["x", -65]
    doc = Doc()
    doc.apply_update(update)
    assert doc.get("arr", type=Array).to_py() == ["x", -65.0]
    assert decode_state_vector(doc.get_state()) == {9: 2} == _scan_update(update).ends


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "text", "push", "del"]), st.text(max_size=4), values), max_size=15))
def test_decoded_clocks_match_the_document_state(ops: list[tuple[str, str, Any]]) -> None:
    doc = Doc(client_id=4)
    root = doc.get("m", type=Map)
    text = doc.get("t", type=Text)
    array = doc.get("a", type=Array)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for kind, key, value in ops:
        if kind == "set":
            root[key or "k"] = value
        elif kind == "text":
            text.insert(0, key or "ü😀")  # at 0: pycrdt mis-encodes inserts after non-ASCII
        elif kind == "push":
            array.append(value)
        elif kind == "del" and len(array):
            del array[0]
    replay = Doc()
    for update in updates:
        replay.apply_update(update)
        assert_clocks_match(update, replay)
    full = doc.get_update()
    assert _scan_update(full).ends == decode_state_vector(get_state(full))


def test_pre_check_passes_ordinary_edits_and_catches_forged_overwrites_without_key_names() -> None:
    home = Replica("clinic-1", actor="relay-a", client_id=0x1F2E3D4C5B)
    decider = LegacyDecider(home.calendar, "relay-a")
    desk = Replica("clinic-1", actor="desk", client_id=0x2A3B4C5D6E)
    rid = desk.calendar.book(resource="room-1", start="2026-12-01T09:00:00Z", end="2026-12-01T09:30:00Z",
                             patient="p", now=NOW).id
    home.apply(desk.full_state())
    home.take_changes()
    decider.decide_queued(NOW)
    index = KeyIndex.from_update(home.full_state())
    desk.apply(home.full_state())
    desk.take_changes()

    desk.calendar.edit(rid, note="bring x-rays", now=NOW)
    (edit,) = updates_of(desk)
    assert not index.might_write_protected(edit) and not index.writes_protected(edit)

    desk.calendar.reservations[rid]["decision"] = "rejected"  # overwrite: no key name in the bytes
    (forged,) = updates_of(desk)
    assert b"decision" not in forged
    assert index.might_write_protected(forged) and index.writes_protected(forged)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["book", "note", "cancel", "forge", "forge-new", "reschedule"]), min_size=1, max_size=12))
def test_pre_check_never_misses_what_the_full_check_finds(ops: list[str]) -> None:
    home = Replica("clinic-1", actor="relay-a", client_id=0x1F2E3D4C5B)
    decider = LegacyDecider(home.calendar, "relay-a")
    desk = Replica("clinic-1", actor="desk", client_id=0x2A3B4C5D6E)
    index = KeyIndex.from_update(home.full_state())
    ids: list[str] = []
    for i, op in enumerate(ops):
        calendar = desk.calendar
        if op == "book" or not ids:
            ids.append(calendar.book(resource="room-1", start=f"2026-12-01T{8 + i % 8:02d}:00:00Z",
                                     end=f"2026-12-01T{8 + i % 8:02d}:30:00Z", patient="p", now=NOW).id)
        elif op == "note":
            calendar.reservations[ids[-1]]["note"] = f"n{i}"
        elif op == "cancel" and "cancelled_at" not in calendar.reservations[ids[-1]]:
            calendar.cancel(ids[-1], now=NOW)
        elif op == "forge":
            calendar.reservations[ids[0]]["decision"] = "booked"
        elif op == "forge-new":
            calendar.reservations[ids[-1]]["booked_start"] = "2026-12-01T07:00:00Z"
        elif op == "reschedule" and "cancelled_at" not in calendar.reservations[ids[-1]]:
            calendar.reservations[ids[-1]]["start"] = "2026-12-01T07:00:00Z"
        for update in updates_of(desk):
            if index.writes_protected(update):
                assert index.might_write_protected(update)
            change = home.apply(update)
            home.take_changes()
            if change is not None and index.might_write_protected(change.update):
                index.observe(change.update)
        decider.decide_queued(NOW)
        for update in updates_of(home):
            index.observe(update)
            desk.apply(update)
            desk.take_changes()
