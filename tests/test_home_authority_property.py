"""Property: whatever hostile writers send, honest replicas never show a slot booked twice, a
cancelled reservation stays cancelled, nothing is hard-deleted, and honest replicas converge.

In memory, with the shipped parts a relay uses: every update a relay takes passes its
UpdatePolicy gate first (as relay/admission.py does), the home decides with a real Decider and
signed verdicts, and statuses derive from verified verdicts only. A hostile desk syncs from the
second relay and sends anything it likes through the plain pycrdt API.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from homes import HOME_KEY, decide
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Map

from accord.engine.authority import RelayKey
from accord.engine.decisions import Decider
from accord.engine.errors import MalformedMessage
from accord.engine.model import Decision, Status
from accord.engine.replica import Replica
from accord.engine.update_policy import Category, UpdatePolicy

CAL = "clinic-1"
NOW = datetime(2026, 11, 30, 8, tzinfo=UTC)
ROGUE = RelayKey.generate()


class Relay:
    """A relay's replica behind its policy gate (what relay/hub.py does before applying)."""

    def __init__(self, name: str, client_id: int, *, home: bool) -> None:
        self.replica = Replica(CAL, actor=name, client_id=client_id)
        self.policy = UpdatePolicy.from_update(self.replica.full_state())
        self.decider = Decider(self.replica.calendar, name, HOME_KEY) if home else None
        self.home = home
        self.observe_local()

    def observe_local(self) -> None:
        for change in self.replica.take_changes():
            self.policy.observe(change.update)

    def take(self, update: bytes, *, peer: bool) -> bool:
        """Judge, then apply; False if refused (the sender would be closed or asked to resync)."""
        try:
            violations = self.policy.violations(update)
        except MalformedMessage:
            return False
        admin_ok = peer and not self.home
        if any(not (v.category is Category.ADMIN_WRITE and admin_ok) for v in violations):
            return False
        change = self.replica.apply(update)
        for captured in [change, *self.replica.take_changes()]:
            if captured is not None:
                self.policy.observe(captured.update)
        if self.decider is not None:
            self.decider.decide_queued(NOW)
            self.observe_local()
        return True


def pull(source: Replica, target: Relay, *, peer: bool) -> bool:
    return target.take(source.diff(target.replica.state_vector()), peer=peer)


def push_into(relay: Relay, target: Replica) -> None:
    target.apply(relay.replica.diff(target.state_vector()))
    target.take_changes()


def overbooked(replica: Replica) -> bool:
    booked = [r for r in replica.calendar.list() if r.status in (Status.BOOKED, Status.CHECKED_IN) and r.booked]
    return any(a.id < b.id and a.booked.overlaps(b.booked) for a in booked for b in booked if a.booked and b.booked)


HOSTILE = ["delete", "replace", "uncancel", "blank-mark", "retired-key", "forge", "copy", "capacity", "cancel"]
ops = st.lists(st.one_of(
    st.tuples(st.just("book"), st.integers(0, 1), st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 1), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("sync"), st.integers(0, 1), st.just(0), st.just(0)),
    st.tuples(st.just("forward"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("hostile"), st.sampled_from(range(len(HOSTILE))), st.integers(0, 20), st.just(0)),
), min_size=5, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_hostile_edits_never_double_book_uncancel_or_delete_on_honest_replicas(steps: list[tuple[str, int, int, int]]) -> None:
    home, relay = Relay("relay-a", 1, home=True), Relay("relay-b", 2, home=False)
    assert pull(home.replica, relay, peer=True)
    desks = [Replica(CAL, actor=f"desk-{i}", client_id=10 + i) for i in range(2)]
    for desk in desks:
        push_into(relay, desk)
    mallory = Replica(CAL, actor="mallory", client_id=99)
    honest = [home.replica, relay.replica, *desks]
    seen: dict[int, set[str]] = {id(r): set() for r in honest}
    cancelled: dict[int, set[str]] = {id(r): set() for r in honest}

    def check() -> None:
        for replica in honest:
            calendar = replica.calendar
            assert not overbooked(replica), replica.calendar.actor
            now_ids = set(calendar.reservations.keys())
            assert seen[id(replica)] <= now_ids, "a reservation was hard-deleted"
            seen[id(replica)] |= now_ids
            statuses = {r.id: r.status for r in calendar.list()}
            assert all(statuses.get(rid) is Status.CANCELLED for rid in cancelled[id(replica)]), "un-cancelled"
            cancelled[id(replica)] |= {rid for rid, s in statuses.items() if s is Status.CANCELLED}

    for kind, a, b, c in steps:
        if kind == "book":
            start = NOW + timedelta(days=1, minutes=30 * c)
            desks[a].calendar.book(resource=f"room-{b}", start=start, end=start + timedelta(minutes=30),
                                   patient="P", now=NOW)
        elif kind == "cancel":
            calendar = desks[a].calendar
            ids = sorted(calendar.reservations.keys())
            if ids:
                rid = ids[b % len(ids)]
                if calendar.get(rid).status in (Status.PENDING, Status.BOOKED, Status.REJECTED):
                    calendar.cancel(rid, now=NOW)
        elif kind == "sync":
            desks[a].take_changes()
            if pull(desks[a], relay, peer=False):
                push_into(relay, desks[a])
        elif kind == "forward":
            pull(relay.replica, home, peer=True)
            pull(home.replica, relay, peer=True)
        else:
            mallory.apply(relay.replica.diff(mallory.state_vector()))
            mallory.take_changes()
            attack(mallory, HOSTILE[a], b)
            if not pull(mallory, relay, peer=False):  # refused: the relay closes it; it comes back fresh
                mallory = Replica(CAL, actor="mallory", client_id=99 + len(steps) + b)
        check()
    for _ in range(3):  # heal: every honest replica meets every other, through the relays
        for desk in desks:
            desk.take_changes()
            pull(desk, relay, peer=False)
        pull(relay.replica, home, peer=True)
        pull(home.replica, relay, peer=True)
        for desk in desks:
            push_into(relay, desk)
    check()
    assert desks[0].calendar.to_py() == desks[1].calendar.to_py() == relay.replica.calendar.to_py()


def attack(mallory: Replica, how: str, pick: int) -> None:
    calendar = mallory.calendar
    ids = sorted(calendar.reservations.keys())
    if not ids:
        return
    rid = ids[pick % len(ids)]
    entry = calendar.reservations[rid]
    if how == "delete":
        del calendar.reservations[rid]
    elif how == "replace":
        calendar.reservations[rid] = Map({"id": rid, "resource": "room-0", "start": "x", "end": "y"})
    elif how == "uncancel" and "cancelled_at" in entry:
        del entry["cancelled_at"]
    elif how == "blank-mark" and "cancelled_at" in entry:
        entry["cancelled_at"] = ""
    elif how == "retired-key":
        entry["booked_start"] = entry.get("start", "")
    elif how == "forge" and calendar.home_record is not None:
        decide(calendar, rid, Decision.BOOKED, key=ROGUE, reason=f"forged {pick}")
    elif how == "copy":
        genuine = [key for key in calendar.verdicts.keys() if not key.startswith(rid)]  # noqa: SIM118
        if genuine:
            calendar.verdicts[f"{rid}/{genuine[0].split('/')[-2]}/copy{pick}"] = calendar.verdicts[genuine[0]]
    elif how == "capacity":
        calendar.resources_map["room-0"] = Map({"name": "x", "capacity": 1000})
    elif how == "cancel" and calendar.get(rid).status in (Status.PENDING, Status.BOOKED, Status.REJECTED):
        calendar.cancel(rid, now=NOW)  # a write token may cancel: that is not an attack
