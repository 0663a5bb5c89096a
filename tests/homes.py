"""Acting as a calendar's home relay in tests: take the calendar, write genuine signed verdicts."""

from __future__ import annotations

from accord.engine.authority import RelayKey, Verdict, first_home, request_digest
from accord.engine.calendar import Calendar
from accord.engine.model import Decision

HOME_KEY = RelayKey.generate()
DECIDED_AT = "2026-11-30T08:00:00Z"


def take_home(calendar: Calendar, relay_id: str = "relay-a", key: RelayKey = HOME_KEY) -> None:
    """Record ``relay_id`` (with ``key``) as the calendar's home, as its Decider does."""
    calendar.add_home_record(*first_home(calendar.name, relay_id, key))


def decide(calendar: Calendar, reservation_id: str, outcome: Decision, *, reason: str = "", conflict_with: str = "",
           relay_id: str = "relay-a", key: RelayKey = HOME_KEY, epoch: int = 1) -> str:
    """Write a verdict about the reservation's current request, signed with ``key``; return its entry key."""
    fields = calendar.all_fields()[reservation_id]
    state = calendar.decision_state(reservation_id, fields)
    if outcome is Decision.BOOKED:
        booked: tuple[str, str, str] | None = (fields["resource"], fields["start"], fields["end"])
    else:
        booked = state.booked if outcome is Decision.REJECTED else None
    verdict = Verdict(calendar.name, reservation_id, request_digest(reservation_id, fields), str(outcome), booked,
                      reason, conflict_with, relay_id, epoch, DECIDED_AT, state.seq + 1)
    encoded = verdict.sign(key)
    with calendar.doc.transaction():
        calendar.verdicts[verdict.entry_key(encoded)] = encoded
    return verdict.entry_key(encoded)
