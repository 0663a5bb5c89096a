"""Home records and signed verdicts: only the calendar's home can decide, whoever relays it."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.engine.authority import (
    RelayKey,
    Verdict,
    Verifier,
    first_home,
    handover,
    read_home_record,
    request_digest,
    resolve_home,
)

CAL = "clinic-1"
KEY_A, KEY_B, KEY_C = RelayKey.generate(), RelayKey.generate(), RelayKey.generate()
FIELDS = {"resource": "room-1", "start": "2026-12-01T09:00:00Z", "end": "2026-12-01T09:30:00Z",
          "requested_at": "2026-11-30T08:00:00Z"}


def verdict(home: str = "relay-a", epoch: int = 1, outcome: str = "booked", reservation: str = "r1") -> Verdict:
    booked = ("room-1", FIELDS["start"], FIELDS["end"]) if outcome == "booked" else None
    return Verdict(CAL, reservation, request_digest(reservation, FIELDS), outcome, booked, "", "", home, epoch,
                   "2026-11-30T08:00:01Z")


def test_a_relay_takes_a_calendar_with_a_self_signed_record() -> None:
    record, text = first_home(CAL, "relay-a", KEY_A)
    assert read_home_record(text, CAL) == record
    assert read_home_record(text, "clinic-2") is None  # a record is for one calendar
    assert resolve_home(CAL, [text]) == record


def test_two_relays_that_both_took_a_calendar_agree_on_one_home() -> None:
    _, a = first_home(CAL, "relay-a", KEY_A)
    _, b = first_home(CAL, "relay-b", KEY_B)
    for order in itertools.permutations([a, b]):
        home = resolve_home(CAL, order)
        assert home is not None and home.relay_id == "relay-a"


def test_only_the_current_home_can_hand_over_and_the_old_home_stops_counting() -> None:
    first, text = first_home(CAL, "relay-a", KEY_A)
    second, moved = handover(first, KEY_A, "relay-b", KEY_B.public)
    forged_record = second.__class__(CAL, 2, "relay-c", KEY_C.public, KEY_C.public)
    forged = KEY_C.sign("h1", forged_record.payload())  # relay-c signs its own "handover"
    home = resolve_home(CAL, [text, moved, forged])
    assert home is not None and (home.relay_id, home.epoch) == ("relay-b", 2)
    verifier = Verifier(CAL)
    old = verdict("relay-a", 1)
    old_text = old.sign(KEY_A)
    assert verifier.verify(old.entry_key(old_text), old_text, first) == old
    assert verifier.verify(old.entry_key(old_text), old_text, home) is None  # fenced by the handover
    new = verdict("relay-b", 2)
    new_text = new.sign(KEY_B)
    assert verifier.verify(new.entry_key(new_text), new_text, home) == new


def test_a_verdict_counts_only_when_signed_by_the_home_and_stored_under_its_own_key() -> None:
    home, _ = first_home(CAL, "relay-a", KEY_A)
    verifier = Verifier(CAL)
    genuine = verdict()
    text = genuine.sign(KEY_A)
    key = genuine.entry_key(text)
    assert verifier.verify(key, text, home) == genuine
    assert verifier.verify(key, text, home) == genuine  # cached
    assert verifier.verify(key.replace("r1/", "r2/"), text, home) is None  # copied under another reservation
    assert verifier.verify(key, verdict("relay-b").sign(KEY_B), home) is None  # another relay's decision
    assert verifier.verify(key, text, None) is None  # no home: nothing is decided
    payload, signature = text.split(".")[1:]
    tampered = "v1." + payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + signature
    assert verifier.verify(key, tampered, home) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_garbage_is_never_a_verdict_or_a_home(text: str) -> None:
    home, _ = first_home(CAL, "relay-a", KEY_A)
    assert Verifier(CAL).verify("r1/x/y", text, home) is None
    assert read_home_record(text, CAL) is None
    assert resolve_home(CAL, [text]) is None


def test_the_request_digest_names_the_exact_request() -> None:
    again = dict(FIELDS, requested_at="2026-11-30T09:00:00Z")  # the same slot asked for again
    moved = dict(FIELDS, start="2026-12-01T10:00:00Z")
    digests = {request_digest("r1", FIELDS), request_digest("r1", again), request_digest("r1", moved),
               request_digest("r2", FIELDS)}
    assert len(digests) == 4
    assert request_digest("r1", FIELDS) == request_digest("r1", dict(FIELDS, note="irrelevant"))
