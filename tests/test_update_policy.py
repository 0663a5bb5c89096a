"""A relay can tell, from an update's bytes and its calendar's item places, which layout rules the
update would break: every attack below is caught before it is applied, every honest edit passes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from accord.engine.authority import RelayKey
from accord.engine.decisions import Decider
from accord.engine.errors import InvalidTransition, MalformedMessage
from accord.engine.item_places import PlaceIndex
from accord.engine.lib0 import read_any, read_var_uint
from accord.engine.map_order import last_item
from accord.engine.place_codes import RESERVATIONS, Field
from accord.engine.protocol import decode_state_vector, write_var_uint
from accord.engine.replica import Replica
from accord.engine.update_policy import Category, UpdatePolicy, Violation
from accord.engine.yjs_update import UpdateReader

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DESK_A, DESK_B = 0x2A3B4C5D6E, 0x1F00AB  # DESK_A's client id is the higher one
HOME_KEY = RelayKey.generate()


# ---- a relay, desks, and hand-made updates -------------------------------------------------------


@dataclass
class Relay:
    """A relay's document and policy; it applies only what breaks no rule and keeps its changes."""

    replica: Replica
    policy: UpdatePolicy
    changes: list[bytes] = field(default_factory=list)  # captured changes, to forward to a peer

    @classmethod
    def start(cls, client_id: int, state: bytes | None = None) -> Relay:
        replica = Replica("clinic-1", actor=f"relay-{client_id}", client_id=client_id)
        if state is not None:
            replica.load([state])
        return cls(replica, UpdatePolicy.from_update(replica.full_state()))

    def receive(self, update: bytes, allow: frozenset[Category] = frozenset()) -> list[Violation]:
        """Check, then apply if nothing is broken but ``allow`` (and observe the change it made).
        Every update also checks the pre-check: it may pass only what the full check passes."""
        found = self.policy.judge(update)
        assert found == [] or self.policy.might_violate(update)
        if categories(found) <= allow:
            change = self.replica.apply(update)
            if change is not None:
                self.policy.observe(change.update)
                self.changes.append(change.update)
        return found

    def admit(self, update: bytes) -> list[Violation]:
        """What an admin connection gets: applied if its only violations are admin writes."""
        found = self.policy.violations(update)
        if categories(found) <= {Category.ADMIN_WRITE}:
            change = self.replica.apply(update)
            if change is not None:
                self.policy.observe(change.update)
                self.changes.append(change.update)
        return found

    def write(self) -> None:
        """Observe the relay's own writes (e.g. verdicts it adds)."""
        for change in self.replica.take_changes():
            self.policy.observe(change.update)
            self.changes.append(change.update)

    def take_changes(self) -> list[bytes]:
        changes, self.changes = self.changes, []
        return changes


def desk_of(relay: Relay, client_id: int, actor: str = "desk") -> Replica:
    desk = Replica("clinic-1", actor=actor, client_id=client_id)
    pull(desk, relay)
    return desk


def pull(desk: Replica, relay: Relay) -> None:
    desk.apply(relay.replica.diff(desk.state_vector()))
    desk.take_changes()


def pushed(desk: Replica) -> list[bytes]:
    return [change.update for change in desk.take_changes()]


def categories(found: Iterable[Violation]) -> set[Category]:
    return {violation.category for violation in found}


def book(desk: Replica, start: str = "09:00", end: str = "09:30") -> str:
    return desk.calendar.book(resource="room-1", start=f"2026-12-01T{start}:00Z", end=f"2026-12-01T{end}:00Z",
                              patient="P-0042", now=NOW).id


def booked(relay: Relay, client_id: int = DESK_A) -> tuple[Replica, str]:
    """A desk synced with ``relay`` and a reservation it booked there."""
    desk = desk_of(relay, client_id)
    rid = book(desk)
    for update in pushed(desk):
        assert relay.receive(update) == []
    return desk, rid


def uint(value: int) -> bytes:
    return write_var_uint(value)


def text(value: str) -> bytes:
    raw = value.encode()
    return uint(len(raw)) + raw


ANY, DELETED, TYPE = 8, 1, 7
MAP_CONTENT = uint(1)  # ContentType of a Y.Map


def any_string(value: str) -> bytes:
    return b"\x01\x77" + text(value)


def item(ref: int, content: bytes, *, origin: tuple[int, int] | None = None, right: tuple[int, int] | None = None,
         root: str | None = None, parent: tuple[int, int] | None = None, key: str | None = None) -> bytes:
    """One hand-made item, encoded as Yjs ``Item.write`` does."""
    info = ref | (0x80 if origin else 0) | (0x40 if right else 0) | (0x20 if key is not None else 0)
    out = bytes([info])
    if origin:
        out += uint(origin[0]) + uint(origin[1])
    if right:
        out += uint(right[0]) + uint(right[1])
    if not origin and not right:
        if root is not None:
            out += b"\x01" + text(root)
        else:
            assert parent is not None
            out += b"\x00" + uint(parent[0]) + uint(parent[1])
        if key is not None:
            out += text(key)
    return out + content


def update(sections: list[tuple[int, int, list[bytes]]], deletes: Iterable[tuple[int, int, int]] = ()) -> bytes:
    """A hand-made v1 update: (client, first clock, items) sections, then the delete set."""
    out = uint(len(sections))
    for client, clock, items in sections:
        out += uint(len(items)) + uint(client) + uint(clock) + b"".join(items)
    by_client: dict[int, list[tuple[int, int]]] = {}
    for client, clock, length in deletes:
        by_client.setdefault(client, []).append((clock, length))
    out += uint(len(by_client))
    for client, ranges in by_client.items():
        out += uint(client) + uint(len(ranges)) + b"".join(uint(c) + uint(n) for c, n in ranges)
    return out


def item_id(relay: Relay, key: str, *, root: str | None = None, parent: tuple[int, int] | None = None) -> tuple[int, int]:
    """The ID of the first item written under ``key`` (in root ``root``, or in the map at ``parent``)."""
    for struct in UpdateReader(relay.replica.full_state()).structs():
        if struct[11] == key.encode() and (struct[8] == (root or "").encode() or (struct[9], struct[10]) == parent):
            return struct[0], struct[1]
    raise AssertionError(f"no item under {key}")


def applied(relay: Relay, forged: bytes) -> Doc[Any]:
    """A copy of the relay's document with ``forged`` applied: what the attack would do."""
    copy: Doc[Any] = Doc()
    copy.apply_update(relay.replica.full_state())
    copy.apply_update(forged)
    return copy


def test_the_policy_counts_reservations_as_the_document_does() -> None:
    """The relay's quota check counts reservations from the policy's index, not the document."""
    relay = Relay.start(1)
    desk, rid = booked(relay)
    for start in ("10:00", "11:00", "12:00"):
        book(desk, start, f"{start[:2]}:30")
    desk.calendar.edit(rid, note="bring x-rays", now=NOW)
    desk.calendar.cancel(rid, now=NOW, reason="moved away")
    for change in pushed(desk):
        assert relay.receive(change) == []
    assert relay.policy.entries_in(RESERVATIONS) == len(relay.replica.calendar.reservations) == 4
    reloaded = Relay.start(2, relay.replica.full_state())
    assert reloaded.policy.entries_in(RESERVATIONS) == 4


# ---- rule 1: reservation entries are never deleted or overwritten --------------------------------


def test_an_honest_booking_edit_reschedule_cancel_and_check_in_break_no_rule() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    other = book(desk, "10:00", "10:30")
    calendar = desk.calendar
    calendar.edit(rid, note="bring x-rays", now=NOW)
    calendar.edit(rid, note="bring x-rays and a form", patient="P. Smith", now=NOW)
    calendar.reschedule(rid, start="2026-12-01T11:00:00Z", end="2026-12-01T11:30:00Z", now=NOW)
    calendar.cancel(rid, now=NOW, reason="moved away")
    calendar.check_in(other, now=NOW)
    calendar.mark_entered_in_error(rid, now=NOW, reason="duplicate")  # writes cancel_reason again
    for change in pushed(desk):
        assert relay.receive(change) == []
    assert relay.replica.calendar.get(rid).status == "entered-in-error"


def test_deleting_a_reservation_is_refused() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    del desk.calendar.reservations[rid]
    (wipe,) = pushed(desk)
    found = relay.receive(wipe)
    assert Violation(Category.ENTRY_DELETED, "reservations", rid, "", DESK_A, 0) in found
    assert rid in relay.replica.calendar.reservations  # nothing was applied


def test_overwriting_a_reservation_through_the_api_is_refused() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    desk.calendar.reservations[rid] = Map({"resource": "room-9"})
    (overwrite,) = pushed(desk)
    assert {Category.ENTRY_OVERWRITTEN, Category.ENTRY_DELETED} <= categories(relay.receive(overwrite))


@pytest.mark.parametrize("client", [DESK_A + 1, 5], ids=["higher-client-id", "lower-client-id"])
def test_an_originless_item_under_an_existing_reservation_key_is_refused(client: int) -> None:
    relay = Relay.start(1)
    _desk, rid = booked(relay)
    forged = update([(client, 0, [item(TYPE, MAP_CONTENT, root="reservations", key=rid)])])
    if client > DESK_A:  # the attack is real: Yjs orders it after the old map, which is deleted
        assert applied(relay, forged).get("reservations", type=Map)[rid].to_py() == {}
    assert relay.receive(forged) == [Violation(Category.ENTRY_OVERWRITTEN, "reservations", rid, "", client, 0)]


def test_two_items_for_one_new_key_in_one_update_are_refused() -> None:
    relay = Relay.start(1)
    forged = update([(77, 0, [item(TYPE, MAP_CONTENT, root="reservations", key="r-new"),
                              item(TYPE, MAP_CONTENT, root="reservations", key="r-new")])])
    assert categories(relay.receive(forged)) == {Category.ENTRY_OVERWRITTEN}


def test_a_deleted_content_item_under_an_existing_key_is_refused() -> None:
    relay = Relay.start(1)
    _desk, rid = booked(relay)
    forged = update([(DESK_A + 1, 0, [item(DELETED, uint(1), root="reservations", key=rid)])])
    assert rid not in applied(relay, forged).get("reservations", type=Map)  # it would hide the reservation
    assert categories(relay.receive(forged)) == {Category.ENTRY_OVERWRITTEN}


# ---- rule 2: verdicts and homes are set once -----------------------------------------------------


@pytest.mark.parametrize("root", ["verdicts", "homes"])
def test_anyone_may_add_a_verdict_or_home_entry_but_not_change_or_delete_one(root: str) -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    entries = desk.doc.get(root, type=Map)
    entries["r1/q/sig"] = "v1.payload.signature"
    (add,) = pushed(desk)
    assert relay.receive(add) == []
    entries["r1/q/sig"] = "v1.forged.signature"
    (overwrite,) = pushed(desk)
    assert relay.receive(overwrite) == [Violation(Category.ENTRY_OVERWRITTEN, root, "r1/q/sig", "", DESK_A, 1),
                                        Violation(Category.ENTRY_DELETED, root, "r1/q/sig", "", DESK_A, 0)]
    pull(desk, relay)
    desk.take_changes()
    desk2 = desk_of(relay, DESK_B)
    del desk2.doc.get(root, type=Map)["r1/q/sig"]
    (wipe,) = pushed(desk2)
    assert categories(relay.receive(wipe)) == {Category.ENTRY_DELETED}
    forged = update([(DESK_A + 1, 0, [item(ANY, any_string("v1.x.y"), root=root, key="r1/q/sig")])])
    assert categories(relay.receive(forged)) == {Category.ENTRY_OVERWRITTEN}


def test_a_verdict_entry_holding_a_map_cannot_be_written_into_later() -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.doc.get("verdicts", type=Map)["k"] = Map({"a": "1"})
    (add,) = pushed(desk)
    assert relay.receive(add) == []
    desk.doc.get("verdicts", type=Map)["k"]["a"] = "2"
    (change,) = pushed(desk)
    assert categories(relay.receive(change)) == {Category.ENTRY_OVERWRITTEN}


def test_a_homes_record_and_signed_verdicts_pass_a_peer_relay() -> None:
    home = Relay.start(1)
    peer = Relay.start(2)
    decider = Decider(home.replica.calendar, "relay-1", HOME_KEY)  # takes the calendar: a home record
    home.write()
    desk = desk_of(home, DESK_A)
    first, second = book(desk), book(desk)  # the second asks for the same slot: rejected
    for change in pushed(desk):
        assert home.receive(change) == []
    decider.decide_queued(NOW)
    home.write()
    assert [home.replica.calendar.get(rid).status for rid in (first, second)] == ["booked", "rejected"]
    desk.calendar.reschedule(second, start="2026-12-01T10:00:00Z", end="2026-12-01T10:30:00Z", now=NOW)
    for change in pushed(desk):
        assert home.receive(change) == []
    decider.decide_queued(NOW)  # a second verdict about the same reservation: a new key
    home.write()
    for change in home.take_changes():
        assert peer.receive(change) == []
    assert peer.replica.calendar.get(second).status == "booked"
    assert len(peer.replica.calendar.verdicts) == 3


# ---- rule 3: lifecycle marks are never removed (overwriting one is fine) --------------------------


def cancelled(relay: Relay, client_id: int = DESK_A) -> tuple[Replica, str]:
    desk, rid = booked(relay, client_id)
    desk.calendar.cancel(rid, now=NOW, reason="ill")
    for change in pushed(desk):
        assert relay.receive(change) == []
    return desk, rid


def test_overwriting_a_mark_is_allowed_and_deleting_one_is_refused() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    desk.calendar.reservations[rid]["cancelled_at"] = ""
    (overwrite,) = pushed(desk)
    assert relay.receive(overwrite) == []
    del desk.calendar.reservations[rid]["cancelled_at"]
    (removal,) = pushed(desk)
    assert relay.receive(removal) == [Violation(Category.MARK_REMOVED, "reservations", rid, "cancelled_at",
                                                 DESK_A, 16)]  # the item written by the overwrite
    assert "cancelled_at" in relay.replica.calendar.reservations[rid]


def test_overwriting_a_mark_and_deleting_it_in_one_transaction_is_refused() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    with desk.doc.transaction():
        desk.calendar.reservations[rid]["cancel_reason"] = "x"
        del desk.calendar.reservations[rid]["cancel_reason"]
    (removal,) = pushed(desk)
    assert categories(relay.receive(removal)) == {Category.MARK_REMOVED}


@pytest.mark.parametrize("content", ["value", "deleted"])
def test_a_hand_made_mark_item_that_would_displace_the_mark_and_vanish_is_refused(content: str) -> None:
    relay = Relay.start(1)
    _desk, rid = cancelled(relay)
    reservation = item_id(relay, rid, root="reservations")
    attacker = DESK_A + 1  # ordered after the desk's item: it becomes the value, the old one is deleted
    if content == "value":  # ... and its own delete set then deletes it
        forged = update([(attacker, 0, [item(ANY, any_string(""), parent=reservation, key="cancelled_at")])],
                        [(attacker, 0, 1)])
    else:  # ... or it is born deleted
        forged = update([(attacker, 0, [item(DELETED, uint(1), parent=reservation, key="cancelled_at")])])
    fields = applied(relay, forged).get("reservations", type=Map)[rid]
    assert "cancelled_at" not in fields  # the attack is real
    assert categories(relay.receive(forged)) == {Category.MARK_REMOVED}


def test_a_hand_made_mark_item_ordered_before_the_mark_is_harmless() -> None:
    relay = Relay.start(1)
    _desk, rid = cancelled(relay)
    reservation = item_id(relay, rid, root="reservations")
    forged = update([(5, 0, [item(ANY, any_string(""), parent=reservation, key="cancelled_at")])], [(5, 0, 1)])
    assert "cancelled_at" in applied(relay, forged).get("reservations", type=Map)[rid]
    assert relay.receive(forged) == []


@pytest.mark.parametrize("first", ["a", "b"])
@pytest.mark.parametrize("ids", [(DESK_A, DESK_B), (DESK_B, DESK_A)], ids=["a-higher", "b-higher"])
def test_concurrent_cancels_pass_both_relays_in_any_order(first: str, ids: tuple[int, int]) -> None:
    relay = Relay.start(1)
    second = Relay.start(2)
    desk_a, rid = booked(relay, ids[0])
    desk_b = desk_of(relay, ids[1])
    for change in relay.take_changes():
        assert second.receive(change) == []
    # Both cancel offline; each update is an originless item per mark, neither knows the other.
    desk_a.calendar.cancel(rid, now=NOW, reason="a")
    desk_b.calendar.cancel(rid, now=NOW, reason="b")
    sent = {"a": pushed(desk_a), "b": pushed(desk_b)}
    for name in (first, "b" if first == "a" else "a"):
        for change in sent[name]:
            assert relay.receive(change) == []
    # The relay's second change carries the integration delete of one desk's items.
    captured = relay.take_changes()
    assert any(deletes_of(change) for change in captured)
    for change in captured:
        assert second.receive(change) == []
    for relay_ in (relay, second):
        assert relay_.replica.calendar.get(rid).status == "cancelled"
    assert relay.replica.calendar.to_py() == second.replica.calendar.to_py()
    # The desks sync back and go on editing: still nothing refused, on either relay.
    for desk in (desk_a, desk_b):
        pull(desk, relay)
        desk.calendar.edit(rid, note="called back", now=NOW)
        for change in pushed(desk):
            assert relay.receive(change) == []
    for change in relay.take_changes():
        assert second.receive(change) == []


def deletes_of(data: bytes) -> list[tuple[int, int, int]]:
    reader = UpdateReader(data)
    for _ in reader.structs():
        pass
    return reader.deletes


def test_a_desk_that_cancelled_offline_resyncs_with_its_whole_state() -> None:
    relay = Relay.start(1)
    desk_a, rid = booked(relay, DESK_A)
    desk_b = desk_of(relay, DESK_B)
    desk_a.calendar.cancel(rid, now=NOW, reason="a")
    for change in pushed(desk_a):
        assert relay.receive(change) == []
    desk_b.calendar.cancel(rid, now=NOW, reason="b")
    desk_b.take_changes()
    desk_b.apply(relay.replica.diff(desk_b.state_vector()))  # desk-b integrates desk-a's cancel ...
    desk_b.take_changes()
    assert relay.receive(desk_b.diff(relay.replica.state_vector())) == []  # ... and sends a sync step 2
    assert relay.receive(desk_b.full_state()) == []


# ---- rule 4: retired decision keys --------------------------------------------------------------


def test_writing_or_deleting_a_retired_decision_key_is_refused() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    desk.calendar.reservations[rid]["decision"] = "booked"
    (forged,) = pushed(desk)
    assert relay.receive(forged) == [Violation(Category.RETIRED_KEY, "reservations", rid, "decision", DESK_A, 14)]
    # Decision keys in a calendar from before signed verdicts (written by its home relay):
    # overwriting or deleting them is refused too.
    fields = relay.replica.calendar.reservations[rid]
    with relay.replica.doc.transaction():
        for key, value in {"decision": "booked", "booked_start": "2026-12-01T09:00:00Z", "decided_by": "relay-1"}.items():
            fields[key] = value
    relay.write()
    desk = desk_of(relay, DESK_B)
    desk.calendar.reservations[rid]["booked_start"] = "2026-12-01T07:00:00Z"
    del desk.calendar.reservations[rid]["decided_by"]
    overwrite, deletion = pushed(desk)
    assert categories(relay.receive(overwrite)) == {Category.RETIRED_KEY}
    assert relay.receive(deletion)[0].category is Category.RETIRED_KEY


# ---- rule 5: resources and meta are for admins, with valid values ---------------------------------


def test_resource_and_meta_writes_are_admin_writes() -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.calendar.put_resource("room-1", name="Room 1", capacity=2)
    (create,) = pushed(desk)
    assert categories(relay.admit(create)) == {Category.ADMIN_WRITE}
    desk.calendar.put_resource("room-1", name="Room 1", capacity=3)  # overwrites through origins
    (change,) = pushed(desk)
    assert relay.admit(change)[:2] == [Violation(Category.ADMIN_WRITE, "resources", "room-1", "name", DESK_A, 3),
                                       Violation(Category.ADMIN_WRITE, "resources", "room-1", "capacity", DESK_A, 4)]
    desk.calendar.meta["home"] = "relay-9"
    (home,) = pushed(desk)
    assert relay.admit(home) == [Violation(Category.ADMIN_WRITE, "meta", "home", "", DESK_A, 5)]
    del desk.calendar.resources_map["room-1"]
    (wipe,) = pushed(desk)
    assert relay.admit(wipe)[0] == Violation(Category.ADMIN_WRITE, "resources", "room-1", "", DESK_A, 0)
    assert relay.replica.calendar.resources() == []
    full = relay.replica.full_state()
    assert any(struct[3] == 0 for struct in UpdateReader(full).structs())  # the resource's fields are GC now
    assert relay.policy.violations(full) == []


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({"name": "Room", "capacity": 1}, True),
        ({"name": "x" * 128, "capacity": 1000}, True),
        ({"capacity": 0}, False),
        ({"capacity": 1001}, False),
        ({"capacity": 2.5}, False),
        ({"capacity": "5"}, False),
        ({"capacity": True}, False),
        ({"name": "x" * 129}, False),
        ({"name": 7}, False),
        ({"name": ["a"]}, False),
    ],
)
def test_admin_writes_carry_valid_values_only(fields: dict[str, Any], valid: bool) -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.calendar.resources_map["room-1"] = Map(fields)
    (write,) = pushed(desk)
    found = categories(relay.receive(write))
    assert found == ({Category.ADMIN_WRITE} if valid else {Category.ADMIN_WRITE, Category.INVALID_VALUE})


def test_a_resource_must_have_a_valid_id_and_be_a_map() -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.calendar.resources_map["room 1!"] = Map({"capacity": 1})
    desk.calendar.resources_map["room-2"] = "not a map"
    bad_id, not_a_map = (relay.receive(u) for u in pushed(desk))
    assert Violation(Category.INVALID_VALUE, "resources", "room 1!", "", DESK_A, 0) in bad_id
    assert Category.INVALID_VALUE in categories(not_a_map)


def test_capacities_written_by_a_javascript_client_are_read_as_lib0_integers() -> None:
    relay = Relay.start(1)
    room = (77, 0)
    for value, number in ((b"\x7d\x05", 5), (b"\x7d\x45", -5), (b"\x7d\xa8\x0f", 1000), (b"\x7d\xa9\x0f", 1001),
                          (b"\x7d\xe8\x0f", -1000)):
        forged = update([(77, 0, [item(TYPE, MAP_CONTENT, root="resources", key="room-1"),
                                  item(ANY, b"\x01" + value, parent=room, key="capacity")])])
        assert applied(relay, forged).get("resources", type=Map)["room-1"]["capacity"] == number  # as Yrs reads it
        assert (Category.INVALID_VALUE not in categories(relay.receive(forged))) is (1 <= number <= 1000), number


def test_values_read_as_yrs_reads_them() -> None:
    doc = Doc(client_id=3)
    values = doc.get("a", type=Array)
    for value in [{"x": [1, 2.5, -7, 2**40, None, True, b"\x00\x01", {"deep": {"er": [1]}}]}, "héllo", -65, 1e300, 0.1]:
        values.append(value)
    update_ = doc.get_update()
    read = []
    for struct in UpdateReader(update_).structs():
        count, pos = read_var_uint(update_, struct[12])
        for _ in range(count):
            value, pos = read_any(update_, pos)
            read.append(value)
    assert read == values.to_py()  # pycrdt reads bytes as bytearray, which compares equal


# ---- rule 6: no other roots, no list content in layout roots ------------------------------------


def test_writes_to_another_root_are_refused() -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.doc["notes"] = Text("hello")
    (write,) = pushed(desk)
    assert relay.receive(write) == [Violation(Category.UNKNOWN_ROOT, "notes", "", "", DESK_A, 0)]
    desk = desk_of(relay, DESK_B)
    desk.doc.get("extra", type=Map)["k"] = Map({"a": "b"})
    (nested,) = pushed(desk)
    assert categories(relay.receive(nested)) == {Category.UNKNOWN_ROOT}


def test_deleting_what_another_root_holds_is_refused() -> None:
    relay = Relay.start(1)
    relay.replica.doc.get("extra", type=Map)["k"] = "v"  # e.g. left over from an older layout
    relay.write()
    desk = desk_of(relay, DESK_A)
    del desk.doc.get("extra", type=Map)["k"]
    (wipe,) = pushed(desk)
    assert relay.receive(wipe) == [Violation(Category.UNKNOWN_ROOT, "extra", "k", "", 1, 0)]


def test_list_content_in_a_layout_root_is_refused() -> None:
    relay = Relay.start(1)
    stock = Doc(client_id=DESK_A)
    stock.get("reservations", type=Array).append("oops")  # a client that reads the root as an array
    assert categories(relay.receive(stock.get_update())) == {Category.NOT_A_MAP_ENTRY}


# ---- rule 7 and what cannot be judged -------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x01", b"\xff\xff\xff", b"\x00\x00\x00", b"\x01" + b"\x80" * 20,
     update([(9, 0, [item(ANY, any_string("x"), root="verdicts", key="k")]), (9, 1, [])]),  # client twice
     update([(9, 0, [item(ANY, any_string("x"), origin=(9, 0))])]),  # refers to itself
     update([(9, 3, [item(ANY, any_string("x"), parent=(9, 7), key="k")])])],  # to a later item of its client
)
def test_what_cannot_be_read_as_yrs_reads_it_is_malformed(garbage: bytes) -> None:
    with pytest.raises(MalformedMessage):
        UpdatePolicy().violations(garbage)


def test_origins_in_two_places_are_malformed() -> None:
    relay = Relay.start(1)
    _desk, rid = booked(relay)
    _desk2, other = booked(relay, DESK_B)
    a = item_id(relay, "note", parent=item_id(relay, rid, root="reservations"))
    b = item_id(relay, "note", parent=item_id(relay, other, root="reservations"))
    with pytest.raises(MalformedMessage, match="two different places"):
        relay.policy.violations(update([(77, 0, [item(ANY, any_string("x"), origin=a, right=b)])]))


def test_updates_naming_items_the_relay_has_not_seen_cannot_be_judged() -> None:
    relay = Relay.start(1)
    elsewhere = Relay.start(2)
    desk, rid = booked(elsewhere)  # the relay never saw this booking
    desk.calendar.edit(rid, note="x", now=NOW)
    (edit,) = pushed(desk)
    assert categories(relay.receive(edit)) == {Category.MISSING_DEPENDENCY}
    # Deleting what has not arrived yet: Yrs would delete it when it does.
    assert categories(relay.receive(update([], [(DESK_A, 0, 1)]))) == {Category.MISSING_DEPENDENCY}
    # Skipping clocks: Yrs would integrate it out of order.
    forged = update([(DESK_B, 5, [item(ANY, any_string("x"), root="verdicts", key="k")])])
    assert categories(relay.receive(forged)) == {Category.MISSING_DEPENDENCY}
    # With the booking in the same update, the edit is fine.
    assert relay.receive(desk.full_state()) == []


TEXT = frozenset({Category.NOT_PLAIN})  # what the placement tests below let through


def test_a_struct_over_what_the_relay_has_is_placed_from_the_clock_after() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    note = Text("hello")
    desk.calendar.reservations[rid]["note"] = note  # a Y.Text in the map: refused by relays, but placed
    for change in pushed(desk):
        assert categories(relay.receive(change, TEXT)) == {Category.NOT_PLAIN}
    note += " world"
    desk.take_changes()
    # The desk's document squashed both inserts into one item, half of which the relay has.
    full = desk.full_state()
    text = next(struct for struct in UpdateReader(full).structs() if struct[3] == 4)
    assert text[2] == 11 and text[1] < relay.policy.index.seen[DESK_A] < text[1] + text[2]
    assert categories(relay.receive(full, TEXT)) == {Category.NOT_PLAIN}
    assert str(relay.replica.calendar.reservations[rid]["note"]) == "hello world"


def test_a_struct_over_what_the_relay_has_that_names_another_parent_is_malformed() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    desk.calendar.reservations[rid]["note"] = Text("hello")
    for change in pushed(desk):
        assert categories(relay.receive(change, TEXT)) == {Category.NOT_PLAIN}
    text = next(struct for struct in UpdateReader(relay.replica.full_state()).structs() if struct[3] == 4)
    # The same clocks and one more, but under another root: Yrs would put the new part there.
    forged = update([(DESK_A, text[1], [item(4, text_content("hello!"), root="elsewhere")])])
    with pytest.raises(MalformedMessage, match="another parent"):
        relay.policy.violations(forged)


def text_content(value: str) -> bytes:
    return text(value)


def test_a_resent_state_is_not_a_write() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    desk.calendar.edit(rid, note="x", now=NOW)
    for change in pushed(desk):
        assert relay.receive(change) == []
    assert relay.policy.violations(relay.replica.full_state()) == []
    assert relay.policy.violations(desk.full_state()) == []


def test_first_only_stops_at_the_first_violation() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    del desk.calendar.reservations[rid]
    (wipe,) = pushed(desk)
    assert len(relay.policy.violations(wipe)) > 1
    assert len(relay.policy.violations(wipe, first_only=True)) == 1


# ---- the pre-check ----------------------------------------------------------------------------------


def test_the_pre_check_passes_the_common_updates() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    other = book(desk, "10:00", "10:30")
    desk.calendar.edit(rid, note="x", now=NOW)
    desk.calendar.cancel(other, now=NOW, reason="ill")
    verdicts = desk.doc.get("verdicts", type=Map)
    verdicts["r1/q/sig"] = "v1.p.s"
    for change in pushed(desk):
        assert not relay.policy.might_violate(change)
        assert relay.receive(change) == []
    desk.calendar.reservations[other]["cancelled_at"] = "again"  # deletes a mark item: the full check says
    (overwrite,) = pushed(desk)
    assert relay.policy.might_violate(overwrite)
    assert relay.receive(overwrite) == []


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "cut", "insert"]))
def test_the_pre_check_never_passes_what_the_full_check_refuses(where: int, byte: int, how: str) -> None:
    """Mutated common updates: whatever the pre-check passes, the full check reads and passes."""
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    desk.calendar.edit(rid, note="x", now=NOW)
    book(desk, "10:00", "10:30")
    desk.doc.get("verdicts", type=Map)["r1/q/sig"] = "v1.p.s"
    for change in pushed(desk):
        at = where % (len(change) + 1)
        mutated = {"flip": change[:at] + bytes([byte]) + change[at + 1:], "cut": change[:at],
                   "insert": change[:at] + bytes([byte]) + change[at:]}[how]
        if not relay.policy.might_violate(mutated):
            assert relay.policy.judge(mutated) == []
        relay.receive(change)


# ---- the index ------------------------------------------------------------------------------------


def test_index_from_full_state_matches_index_fed_incrementally() -> None:
    relay = Relay.start(1)
    desk, rid = cancelled(relay)
    other = book(desk, "10:00", "10:30")
    desk.calendar.edit(other, note="n", now=NOW)
    desk.calendar.reservations[rid]["cancelled_at"] = "again"
    for change in pushed(desk):
        assert relay.receive(change) == []
    relay.replica.calendar.put_resource("room-1", name="Room", capacity=2)
    Decider(relay.replica.calendar, "relay-1", HOME_KEY).decide_all_pending(NOW)  # a home record, verdicts
    relay.write()
    assert len(relay.replica.calendar.verdicts) == 1 and len(relay.replica.calendar.homes) == 1
    rebuilt = PlaceIndex(relay.replica.full_state())
    fed = relay.policy.index
    assert rebuilt.seen == fed.seen
    for client, end in fed.seen.items():
        for clock in range(end):
            assert rebuilt.place_of(client, clock) == fed.place_of(client, clock), (client, clock)
    assert fed.place_of(DESK_A, 0) is not None and fed.place_of(DESK_A, 0).key == rid  # type: ignore[union-attr]
    marks = {(p.key, p.field) for c, e in fed.seen.items() for k in range(e) if (p := fed.place_of(c, k)) and p.depth == 1
             and p.field in (Field.CANCELLED_AT, Field.CANCEL_REASON)}
    assert marks == {(rid, Field.CANCELLED_AT), (rid, Field.CANCEL_REASON)}

    def mark_items(index: PlaceIndex) -> dict[tuple[bytes | None, int], set[tuple[int, ...]]]:
        return {(index.entry_keys[chain >> 6], chain & 63): {tuple(unit) for unit in units}
                for chain, units in index.marks.items()}

    assert mark_items(rebuilt) == mark_items(fed)
    assert len(mark_items(fed)[(rid.encode(), Field.CANCELLED_AT)]) == 2  # the cancel and its overwrite


# ---- property tests ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(1, 2**40), min_size=3, max_size=3, unique=True),
    st.lists(st.tuples(st.sampled_from(["set", "set", "del", "set+del", "sync"]), st.integers(0, 2), st.integers(0, 2)),
             max_size=14),
)
def test_the_predicted_value_of_a_mark_key_is_the_one_yrs_shows(ids: list[int], ops: list[tuple[str, int, int]]) -> None:
    """Concurrent and sequential writes and deletes of one mark by three writers, merged in any
    order: the item the policy predicts as the key's value is the one Yrs shows, and the key is
    present exactly when that item is not deleted."""
    start = Doc(client_id=1)
    start.get("reservations", type=Map)["r"] = Map({"note": ""})
    docs = [Doc(client_id=client) for client in ids]
    for doc in docs:
        doc.apply_update(start.get_update())
    for kind, i, j in ops:
        doc = docs[i]
        fields = doc.get("reservations", type=Map)["r"]
        clock = decode_state_vector(doc.get_state()).get(doc.client_id, 0)
        if kind == "set":
            fields["cancelled_at"] = f"{doc.client_id}:{clock}"
        elif kind == "del" and "cancelled_at" in fields:
            del fields["cancelled_at"]
        elif kind == "set+del":
            with doc.transaction():
                fields["cancelled_at"] = f"{doc.client_id}:{clock}"
                del fields["cancelled_at"]
        elif kind == "sync":
            docs[j].apply_update(doc.get_update(docs[j].get_state()))
    merged = Doc()
    for doc in reversed(docs):
        merged.apply_update(doc.get_update())
    index = PlaceIndex(merged.get_update())
    units = next(iter(index.marks.values()), [])
    value = merged.get("reservations", type=Map)["r"].get("cancelled_at")
    last = last_item(units)
    assert last is not None
    if value is not None:
        assert f"{last[0]}:{last[1]}" == value
    runs = index.runs
    present = last != (-1, -1) and not runs[last[0]].is_deleted(last[1])
    assert present is (value is not None)


class Clinic:
    """Two relays (relay-2 gets relay-1's captured changes and the reverse) and three desks."""

    def __init__(self) -> None:
        self.relays = [Relay.start(1), Relay.start(2)]
        self.decider = Decider(self.relays[0].replica.calendar, "relay-1", HOME_KEY)  # relay-1 is the home
        self.relays[0].write()
        self.desks = [desk_of(self.relays[0], DESK_A, "desk-a"), desk_of(self.relays[0], DESK_B, "desk-b"),
                      desk_of(self.relays[1], 0x333333, "desk-c")]
        self.home = [0, 0, 1]  # the relay each desk talks to

    def relay_of(self, desk: int) -> Relay:
        return self.relays[self.home[desk]]

    def ids(self, desk: int) -> list[str]:
        return sorted(self.desks[desk].calendar.reservations.keys())

    def send(self, desk: int, *, resync: bool = False) -> None:
        """The desk's pending changes (or a sync step 2) to its relay, then the relay's state back."""
        relay, replica = self.relay_of(desk), self.desks[desk]
        updates = [replica.diff(relay.replica.state_vector())] if resync else pushed(replica)
        replica.take_changes()
        for sent in updates:
            assert relay.receive(sent) == [], sent
        pull(replica, relay)

    def peer(self) -> None:
        """Forward captured changes between the relays until both are quiet."""
        while any(relay.changes for relay in self.relays):
            for relay, other in ((self.relays[0], self.relays[1]), (self.relays[1], self.relays[0])):
                for change in relay.take_changes():
                    assert other.receive(change) == [], change


HONEST = ["book", "note", "reschedule", "cancel", "check-in", "verdict", "decide", "send", "resync", "peer",
          "cancel-both"]


def play(clinic: Clinic, ops: list[tuple[str, int, int]]) -> None:
    """Honest work: every update any relay receives must pass."""
    for n, (kind, d, pick) in enumerate(ops):
        desk = clinic.desks[d].calendar
        ids = clinic.ids(d)
        rid = ids[pick % len(ids)] if ids else ""
        try:
            if kind == "book" or not rid:
                book(clinic.desks[d], f"{8 + n % 10:02d}:00", f"{8 + n % 10:02d}:30")
            elif kind == "note":
                desk.edit(rid, note=f"note {n}", now=NOW)
            elif kind == "reschedule":
                desk.reschedule(rid, start="2026-12-02T09:00:00Z", end="2026-12-02T09:30:00Z", now=NOW)
            elif kind == "cancel":
                desk.cancel(rid, now=NOW, reason=f"r{n}")
            elif kind == "check-in":
                desk.check_in(rid, now=NOW)
            elif kind == "verdict":
                relay = clinic.relays[d % 2]
                relay.replica.doc.get("verdicts", type=Map)[f"{rid}/q{n}/sig"] = f"v1.p{n}.s"
                relay.write()
            elif kind == "decide":
                clinic.decider.decide_queued(NOW)
                clinic.relays[0].write()
            elif kind == "send":
                clinic.send(d)
            elif kind == "resync":
                clinic.send(d, resync=True)
            elif kind == "peer":
                clinic.peer()
            elif kind == "cancel-both" and all(rid in clinic.desks[o].calendar.reservations for o in (0, 1)):
                # Two desks of relay-1 cancel the same reservation offline, then both send.
                for other in (0, 1):
                    try:
                        clinic.desks[other].calendar.cancel(rid, now=NOW, reason=f"both {other}")
                    except InvalidTransition:
                        pass
                clinic.send(0)
                clinic.send(1)
        except InvalidTransition:
            pass
    for d in range(len(clinic.desks)):
        clinic.send(d)
    clinic.peer()
    for d in range(len(clinic.desks)):
        pull(clinic.desks[d], clinic.relay_of(d))
    assert clinic.relays[0].replica.calendar.to_py() == clinic.relays[1].replica.calendar.to_py()


honest_ops = st.lists(st.tuples(st.sampled_from(HONEST), st.integers(0, 2), st.integers(0, 20)), max_size=25)


@settings(max_examples=150, deadline=None)
@given(honest_ops)
def test_honest_work_through_two_relays_breaks_no_rule(ops: list[tuple[str, int, int]]) -> None:
    play(Clinic(), ops)


HOSTILE = {
    "delete-reservation": Category.ENTRY_DELETED,
    "overwrite-reservation": Category.ENTRY_OVERWRITTEN,
    "forge-reservation": Category.ENTRY_OVERWRITTEN,
    "delete-mark": Category.MARK_REMOVED,
    "displace-mark": Category.MARK_REMOVED,
    "retired-key": Category.RETIRED_KEY,
    "overwrite-verdict": Category.ENTRY_OVERWRITTEN,
    "delete-verdict": Category.ENTRY_DELETED,
    "resource": Category.ADMIN_WRITE,
    "meta": Category.ADMIN_WRITE,
    "unknown-root": Category.UNKNOWN_ROOT,
}


@settings(max_examples=120, deadline=None)
@given(honest_ops, st.sampled_from(sorted(HOSTILE)), st.integers(0, 20))
def test_hostile_writes_after_any_honest_work_are_caught(ops: list[tuple[str, int, int]], attack: str,
                                                          pick: int) -> None:
    clinic = Clinic()
    play(clinic, ops)
    relay = clinic.relays[0]
    _desk, rid = cancelled(relay, DESK_A + 1)  # at least one cancelled reservation, and a verdict
    relay.replica.doc.get("verdicts", type=Map)[f"{rid}/q/sig"] = "v1.p.s"
    relay.write()
    rogue = desk_of(relay, 0x7777777)
    reservations = rogue.calendar.reservations
    ids = sorted(reservations.keys())
    marked = [r for r in ids if "cancelled_at" in reservations[r]]
    rid = ids[pick % len(ids)]
    verdicts = rogue.doc.get("verdicts", type=Map)
    if attack == "delete-reservation":
        del reservations[rid]
    elif attack == "overwrite-reservation":
        reservations[rid] = Map({"resource": "room-9"})
    elif attack == "delete-mark":
        del reservations[marked[pick % len(marked)]]["cancelled_at"]
    elif attack == "retired-key":
        reservations[rid]["booked_start"] = "2026-12-01T07:00:00Z"
    elif attack == "overwrite-verdict":
        verdicts[sorted(verdicts.keys())[0]] = "v1.forged.sig"
    elif attack == "delete-verdict":
        del verdicts[sorted(verdicts.keys())[0]]
    elif attack == "resource":
        rogue.calendar.put_resource("room-1", capacity=9)
    elif attack == "meta":
        rogue.calendar.meta["home"] = "rogue"
    elif attack == "unknown-root":
        rogue.doc.get("elsewhere", type=Map)["x"] = "y"
    if attack == "forge-reservation":
        hostile = update([(2**52, 0, [item(TYPE, MAP_CONTENT, root="reservations", key=rid)])])
    elif attack == "displace-mark":
        target = marked[pick % len(marked)]
        parent = item_id(relay, target, root="reservations")
        hostile = update([(2**52, 0, [item(ANY, any_string(""), parent=parent, key="cancelled_at")])], [(2**52, 0, 1)])
        assert "cancelled_at" not in applied(relay, hostile).get("reservations", type=Map)[target]
    else:
        (hostile,) = pushed(rogue)
    assert HOSTILE[attack] in categories(relay.policy.violations(hostile))
    assert relay.policy.might_violate(hostile)


# ---- settings and relay receipts -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "valid"), [(60, True), (900, True), (30 * 86400, True), (59, False),
                                              (30 * 86400 + 1, False), (90.5, False), ("900", False), (True, False)])
def test_the_hold_ttl_setting_is_an_admin_write_with_a_checked_value(value: object, valid: bool) -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    desk.calendar.meta["hold_ttl"] = value
    (write,) = pushed(desk)
    found = categories(relay.receive(write))
    assert found == ({Category.ADMIN_WRITE} if valid else {Category.ADMIN_WRITE, Category.INVALID_VALUE})


def test_receipts_are_relay_only_and_set_once() -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    rid = book(desk)
    relay.receive(pushed(desk)[0])
    desk.calendar.receipts[f"{rid}/digest/relay-x"] = "2026-11-30T08:00:00Z"
    (forged,) = pushed(desk)
    assert categories(relay.receive(forged)) == {Category.RELAY_ONLY}  # what a client gets
    # From a peer the receipt is fine (the relay skips RELAY_ONLY for peers) ...
    assert categories(relay.policy.violations(forged)) == {Category.RELAY_ONLY}
    relay.replica.apply(forged)
    relay.policy.observe(forged)
    # ... but nobody overwrites or deletes it afterwards, and its value is a time string.
    peer = desk_of(relay, DESK_B, actor="peer")
    peer.calendar.receipts[f"{rid}/digest/relay-x"] = "2020-01-01T00:00:00Z"
    (overwrite,) = pushed(peer)
    assert {Category.RELAY_ONLY, Category.ENTRY_OVERWRITTEN} <= categories(relay.policy.violations(overwrite))
    peer = desk_of(relay, DESK_B + 1, actor="peer")
    del peer.calendar.receipts[f"{rid}/digest/relay-x"]
    (delete,) = pushed(peer)
    assert categories(relay.policy.violations(delete)) == {Category.RELAY_ONLY, Category.ENTRY_DELETED}
    peer.calendar.receipts[f"{rid}/other/relay-y"] = 12
    (number,) = pushed(peer)
    assert categories(relay.policy.violations(number)) == {Category.RELAY_ONLY, Category.INVALID_VALUE}


# ---- sizes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "limit"), [("patient", 256), ("note", 2000), ("service", 128), ("anything", 2000)])
def test_reservation_fields_are_held_to_the_engines_length_table(key: str, limit: int) -> None:
    relay = Relay.start(1)
    desk = desk_of(relay, DESK_A)
    reservations = desk.calendar.reservations
    reservations["r-fits"] = Map({key: "é" * limit})  # characters, not bytes
    (fits,) = pushed(desk)
    assert relay.receive(fits) == []
    other = desk_of(relay, DESK_B)
    other.calendar.reservations["r-long"] = Map({key: "é" * (limit + 1)})
    (too_long,) = pushed(other)
    assert categories(relay.receive(too_long)) == {Category.TOO_LARGE}
    # An overwrite does not name its key: it is held to the longest limit.
    reservations["r-fits"][key] = "x" * 2001
    (overwrite,) = pushed(desk)
    assert categories(relay.receive(overwrite)) == {Category.TOO_LARGE}


def test_keys_and_entry_values_have_limits_too() -> None:
    relay = Relay.start(1)
    desk, rid = booked(relay)
    desk.calendar.reservations[rid]["k" * 128] = "v"
    desk.doc.get("verdicts", type=Map)["r/q/" + "s" * 300] = "v"
    desk.doc.get("verdicts", type=Map)["r/q/s"] = "v" * 5000
    long_key, long_entry_key, long_value = pushed(desk)
    for change in (long_key, long_entry_key, long_value):
        assert Category.TOO_LARGE in categories(relay.policy.violations(change))
