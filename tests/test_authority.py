"""Home records and signed verdicts: only the calendar's home can decide, whoever relays it."""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.engine.authority import (
    Adopted,
    HomeRecord,
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


def numbered(serial: int, home: str = "relay-a", epoch: int = 1, reservation: str = "r1") -> Verdict:
    return replace(verdict(home, epoch, reservation=reservation), serial=serial)


def test_a_handover_that_adopts_keeps_the_previous_epochs_verdicts_up_to_its_serial_and_no_further() -> None:
    first, text = first_home(CAL, "relay-a", KEY_A)
    _, moved = handover(first, KEY_A, "relay-b", KEY_A.public, adopts=2)  # a cluster: one key
    home = resolve_home(CAL, [text, moved])
    assert home is not None and home.epoch == 2 and home.adopts == 2
    verifier = Verifier(CAL)
    for serial, counts in ((1, True), (2, True), (3, False)):  # 3: signed after the takeover, or never stored
        old = numbered(serial, reservation=f"r{serial}")
        old_text = old.sign(KEY_A)
        assert (verifier.verify(old.entry_key(old_text), old_text, home) == old) is counts
    legacy = verdict()  # from before serials: never adopted
    legacy_text = legacy.sign(KEY_A)
    assert verifier.verify(legacy.entry_key(legacy_text), legacy_text, home) is None
    # A third epoch that adopts in turn keeps both earlier epochs' adopted verdicts; one that
    # does not adopt keeps none of them.
    _, moved_again = handover(home, KEY_A, "relay-c", KEY_A.public, adopts=1)
    kept = numbered(2, reservation="r2")
    kept_text = kept.sign(KEY_A)
    chained = resolve_home(CAL, [text, moved, moved_again])
    assert chained is not None and chained.epoch == 3
    assert verifier.verify(kept.entry_key(kept_text), kept_text, chained) == kept
    for serial, counts in ((1, True), (2, False)):  # epoch 2's own verdicts, adopted up to 1
        of_two = numbered(serial, home="relay-b", epoch=2, reservation=f"s{serial}")
        of_two_text = of_two.sign(KEY_A)
        assert (verifier.verify(of_two.entry_key(of_two_text), of_two_text, chained) == of_two) is counts
    _, plain = handover(home, KEY_A, "relay-c", KEY_A.public)
    not_adopting = resolve_home(CAL, [text, moved, plain])
    assert not_adopting is not None and not_adopting.adopts is None
    assert verifier.verify(kept.entry_key(kept_text), kept_text, not_adopting) is None


def test_a_forged_or_tampered_adoption_record_is_refused() -> None:
    first, text = first_home(CAL, "relay-a", KEY_A)
    # relay-c (not the home) claims the next epoch and adopts everything relay-a ever signed
    forged_record = HomeRecord(CAL, 2, "relay-c", KEY_C.public, KEY_C.public, adopts=10**6)
    forged = KEY_C.sign("h1", forged_record.payload())
    assert read_home_record(forged, CAL) == forged_record  # well-formed and self-consistent ...
    home = resolve_home(CAL, [text, forged])
    assert home == first  # ... but not signed by the current home: no handover at all
    # The genuine handover with its adoption raised by someone who cannot sign: refused.
    genuine, moved = handover(first, KEY_A, "relay-b", KEY_A.public, adopts=1)
    _tag, payload, signature = moved.split(".")
    raised = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raised["a"] = 10**6
    tampered = "h1." + base64.urlsafe_b64encode(json.dumps(raised, sort_keys=True, separators=(",", ":")).encode()
                                                ).rstrip(b"=").decode() + "." + signature
    assert read_home_record(tampered, CAL) is None
    assert resolve_home(CAL, [text, tampered]) == first
    # Malformed adoptions, even signed by the home, are not records: a string, a negative, a
    # boolean, and an adoption on epoch 1 (nothing before it to adopt).
    for bad in ("3", -1, True):
        record = HomeRecord(CAL, 2, "relay-b", KEY_A.public, KEY_A.public)
        fields = json.loads(record.payload())
        fields["a"] = bad
        raw = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        assert read_home_record(KEY_A.sign("h1", raw), CAL) is None
    first_adopting = HomeRecord(CAL, 1, "relay-a", KEY_A.public, KEY_A.public, adopts=5)
    assert read_home_record(KEY_A.sign("h1", first_adopting.payload()), CAL) is None
    assert resolve_home(CAL, [text, moved]) == replace(
        genuine, earlier=(Adopted(1, "relay-a", KEY_A.public, 1),))


def test_an_adopted_verdict_counts_only_as_signed_by_the_epoch_it_names() -> None:
    first, text = first_home(CAL, "relay-a", KEY_A)
    _, moved = handover(first, KEY_A, "relay-b", KEY_B.public, adopts=5)
    home = resolve_home(CAL, [text, moved])
    assert home is not None
    verifier = Verifier(CAL)
    for forged in (numbered(1).sign(KEY_B), numbered(1, home="relay-b").sign(KEY_A),
                   numbered(1, epoch=0).sign(KEY_A)):
        assert verifier.verify(numbered(1).entry_key(forged), forged, home) is None
    genuine = numbered(1).sign(KEY_A)
    assert verifier.verify(numbered(1).entry_key(genuine), genuine, home) == numbered(1)
