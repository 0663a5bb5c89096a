"""Who decides a calendar, and what a genuine decision is: home records and signed verdicts.

Theory of operation. Only a calendar's **home relay** turns booking requests into decisions,
and every replica must tell a genuine decision from anything else, whoever relayed it. So a
decision is one atomic value, a :class:`Verdict`, signed with the home relay's Ed25519 key
(:class:`RelayKey`). It names the calendar, the reservation, a digest of the exact request it
decides (:func:`request_digest`), the home's fencing epoch, the outcome and the slot it books.

Which key is the home's is recorded in the calendar itself, as :class:`HomeRecord` entries
(set-once, never overwritten): epoch 1 is signed by the home's own key when it first takes the
calendar; epoch ``n + 1`` (a handover) must be signed by epoch ``n``'s home. :func:`resolve_home`
walks that chain deterministically, so every replica holding the same records agrees on the
home, even when two relays were misconfigured as home at once (the records merge and the lowest
relay id of an epoch wins). A verdict counts only if its signature verifies against the home of
the epoch it names and that epoch is the current one: anything else (a forgery, a copy under
another reservation, a decision of a home that has since handed over) is simply not a decision,
and every replica derives the same status from the same bytes, so convergence is untouched.

Encoding: ``<tag>.<base64url(canonical JSON payload)>.<base64url(signature)>``, the signature
over ``tag + "\\0" + payload`` so a verdict can never pass as a home record or the reverse.
Verifying costs ~55 µs (libsodium, through PyNaCl), so :class:`Verifier` caches what it verified (bounded).

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import ValidationError

VERDICT_TAG = "v1"
HOME_TAG = "h1"
MAX_ENCODED = 4096  # anything longer is not ours: refuse before decoding
CACHE_SIZE = 200_000
OUTCOMES = ("booked", "rejected", "released")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class RelayKey:
    """A relay's Ed25519 signing key (its public half identifies it as a home)."""

    def __init__(self, private: SigningKey) -> None:
        self._private = private
        self.public = _b64(bytes(private.verify_key))

    @classmethod
    def generate(cls) -> RelayKey:
        return cls(SigningKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> RelayKey:
        """A key from :meth:`to_bytes` (32 raw bytes).

        Raises:
            ValidationError: not a 32-byte Ed25519 private key.
        """
        try:
            return cls(SigningKey(raw))
        except (CryptoError, TypeError, ValueError):
            raise ValidationError("not an Ed25519 private key (32 raw bytes expected)") from None

    def to_bytes(self) -> bytes:
        return bytes(self._private)

    def sign(self, tag: str, payload: bytes) -> str:
        """``tag.payload.signature`` (see the module docstring)."""
        signature = self._private.sign(tag.encode() + b"\0" + payload).signature
        return f"{tag}.{_b64(payload)}.{_b64(signature)}"


def _open_signed(text: object, tag: str) -> tuple[dict[str, Any], bytes, bytes] | None:
    """(payload, payload bytes, signature) of a well-formed ``tag.payload.sig`` string, else None."""
    if not isinstance(text, str) or len(text) > MAX_ENCODED:
        return None
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != tag:
        return None
    try:
        raw, signature = _unb64(parts[1]), _unb64(parts[2])
        payload = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or len(signature) != 64:
        return None
    return payload, raw, signature


def _verifies(public_key: str, tag: str, raw: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(_unb64(public_key)).verify(tag.encode() + b"\0" + raw, signature)
    except (BadSignatureError, CryptoError, TypeError, ValueError, binascii.Error):
        return False
    return True


# ---- home records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HomeRecord:
    """"From ``epoch`` on, ``relay_id`` (key ``public_key``) decides ``calendar``", signed by
    ``signer`` (the record's own key for epoch 1, the previous home's key for a handover)."""

    calendar: str
    epoch: int
    relay_id: str
    public_key: str
    signer: str

    def entry_key(self, encoded: str) -> str:
        """Where the record lives in the calendar's ``homes`` map: unique, and unforgeable (it
        ends in the signature), so no writer can claim the key of a handover before it is made."""
        return f"{self.epoch}/{self.relay_id}/{encoded.rsplit('.', 1)[1][:22]}"

    def payload(self) -> bytes:
        return _canonical({"c": self.calendar, "e": self.epoch, "h": self.relay_id, "k": self.public_key,
                           "s": self.signer})


def first_home(calendar: str, relay_id: str, key: RelayKey) -> tuple[HomeRecord, str]:
    """The epoch-1 record by which ``relay_id`` takes ``calendar`` (and its signed encoding)."""
    record = HomeRecord(calendar, 1, relay_id, key.public, key.public)
    return record, key.sign(HOME_TAG, record.payload())


def handover(current: HomeRecord, key: RelayKey, to_relay: str, to_key: str) -> tuple[HomeRecord, str]:
    """The next epoch's record, handing ``current``'s calendar to ``to_relay``; signed by the
    current home's ``key``.

    Raises:
        ValidationError: ``key`` is not the current home's.
    """
    if key.public != current.public_key:
        raise ValidationError(f"only the current home ({current.relay_id}) can hand {current.calendar} over")
    if not is_public_key(to_key):
        raise ValidationError(f"{to_key!r} is not an Ed25519 public key; copy it from `accord relay key` on {to_relay}")
    record = HomeRecord(current.calendar, current.epoch + 1, to_relay, to_key, key.public)
    return record, key.sign(HOME_TAG, record.payload())


def is_public_key(text: str) -> bool:
    """True if ``text`` is a base64url Ed25519 public key (as :attr:`RelayKey.public` prints it)."""
    try:
        VerifyKey(_unb64(text))
    except (CryptoError, TypeError, ValueError, binascii.Error):
        return False
    return True


def read_home_record(text: object, calendar: str) -> HomeRecord | None:
    """The record in ``text`` if it is well-formed, for ``calendar`` and signed by its stated signer."""
    opened = _open_signed(text, HOME_TAG)
    if opened is None:
        return None
    payload, raw, signature = opened
    try:
        record = HomeRecord(str(payload["c"]), int(payload["e"]), str(payload["h"]), str(payload["k"]),
                            str(payload["s"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if record.calendar != calendar or record.epoch < 1 or raw != record.payload():
        return None
    if (record.epoch == 1 and record.signer != record.public_key) or not is_public_key(record.public_key):
        return None
    return record if _verifies(record.signer, HOME_TAG, raw, signature) else None


def resolve_home(calendar: str, entries: Iterable[object]) -> HomeRecord | None:
    """The calendar's current home from all its home-record entries (None: no home).

    Epoch 1 is the valid self-signed record with the lowest relay id (two relays that both took
    the calendar agree on one); each next epoch is the lowest relay id among valid records signed
    by the previous epoch's key. Every replica with the same entries gets the same answer.
    """
    chain = home_chain(calendar, entries)
    return chain[-1] if chain else None


def home_chain(calendar: str, entries: Iterable[object]) -> list[HomeRecord]:
    """Every epoch's home, oldest first (see :func:`resolve_home`); empty: no home."""
    by_epoch: dict[int, list[HomeRecord]] = {}
    for text in entries:
        record = read_home_record(text, calendar)
        if record is not None:
            by_epoch.setdefault(record.epoch, []).append(record)
    chain: list[HomeRecord] = []
    while True:
        signer = chain[-1].public_key if chain else None
        candidates = [r for r in by_epoch.get(len(chain) + 1, []) if signer is None or r.signer == signer]
        if not candidates:
            return chain
        chain.append(min(candidates, key=lambda r: (r.relay_id, r.public_key)))


# ---- verdicts --------------------------------------------------------------------------------------


def request_digest(reservation_id: str, fields: Mapping[str, Any]) -> str:
    """A short digest of the request a verdict decides: the reservation and its current
    resource, start, end and request stamp (a re-request for the same slot is a new request).
    A value that is not a string (hand-written; such a request is rejected as invalid) enters
    as one marker: how Yrs and Yjs render numbers differs, and every replica must agree."""
    request = [reservation_id, *(_request_part(fields, key) for key in ("resource", "start", "end", "requested_at"))]
    return _b64(hashlib.sha256(_canonical({"q": request})).digest()[:16])


NOT_A_STRING = "\x00"


def _request_part(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key, "")
    return value if isinstance(value, str) else NOT_A_STRING


def reservation_of(entry_key: str) -> str:
    """The reservation a ``verdicts`` entry key is filed under (ids may contain "/"; the digest
    and the signature prefix never do)."""
    return entry_key.rsplit("/", 2)[0]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The home's decision about one request.

    ``outcome`` is ``booked`` or ``rejected``, or ``released``: the home saw the reservation
    cancelled (or entered in error) and freed its slot, so the reservation can never hold the
    slot again even if its lifecycle mark were lost. ``booked`` is the slot the reservation holds
    after this decision, as ``(resource, start, end)`` strings: the request's slot when booked,
    the slot of an earlier booking a rejected reschedule keeps, or None. ``seq`` orders one
    reservation's verdicts (the latest holds its slot), whatever the clocks say.
    """

    calendar: str
    reservation: str
    request: str
    outcome: str
    booked: tuple[str, str, str] | None
    reason: str
    conflict_with: str
    relay_id: str
    epoch: int
    decided_at: str
    seq: int = 1  # 1 for a reservation's first verdict, then one more than the latest before it

    def payload(self) -> bytes:
        return _canonical({"c": self.calendar, "r": self.reservation, "q": self.request, "o": self.outcome,
                           "b": list(self.booked) if self.booked else None, "why": self.reason,
                           "w": self.conflict_with, "h": self.relay_id, "e": self.epoch, "t": self.decided_at,
                           "n": self.seq})

    def entry_key(self, encoded: str) -> str:
        """Where the verdict lives in the calendar's ``verdicts`` map: unique, and unforgeable
        (it ends in the signature), so no writer can claim the key before the home does."""
        return f"{self.reservation}/{self.request}/{encoded.rsplit('.', 1)[1][:22]}"

    def sign(self, key: RelayKey) -> str:
        return key.sign(VERDICT_TAG, self.payload())


def _read_verdict(payload: dict[str, Any]) -> Verdict | None:
    try:
        booked = payload["b"]
        slot = None if booked is None else (str(booked[0]), str(booked[1]), str(booked[2]))
        if booked is not None and len(booked) != 3:
            return None
        verdict = Verdict(str(payload["c"]), str(payload["r"]), str(payload["q"]), str(payload["o"]), slot,
                          str(payload["why"]), str(payload["w"]), str(payload["h"]), int(payload["e"]),
                          str(payload["t"]), int(payload["n"]))
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
    return verdict if verdict.outcome in OUTCOMES else None


class Verifier:
    """Checks verdicts against a calendar's current home, caching results (bounded LRU)."""

    def __init__(self, calendar: str, max_cached: int = CACHE_SIZE) -> None:
        self.calendar = calendar
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, str, str, int], Verdict | None] = OrderedDict()

    def verify(self, entry_key: str, text: object, home: HomeRecord | None) -> Verdict | None:
        """The verdict stored under ``entry_key`` if it is genuine: well-formed, for this calendar,
        stored under its own key, signed by ``home`` at ``home``'s epoch. Else None."""
        if home is None or not isinstance(text, str):
            return None
        cache_key = (entry_key, text, home.public_key, home.epoch)
        if cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            return self._cache[cache_key]
        verdict = self._check(entry_key, text, home)
        self._cache[cache_key] = verdict
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return verdict

    def unchecked(self, entries: Iterable[tuple[str, str]], home: HomeRecord) -> list[tuple[str, str]]:
        """The ``(entry key, text)`` pairs this verifier has no answer for under ``home``."""
        return [(key, text) for key, text in entries if (key, text, home.public_key, home.epoch) not in self._cache]

    def check_all(self, entries: Iterable[tuple[str, str]], home: HomeRecord) -> dict[tuple[str, str], Verdict | None]:
        """Check ``entries`` without touching the cache, so that it may run in a worker thread
        (PyNaCl releases the GIL inside libsodium); hand the answers to :meth:`remember`."""
        return {(key, text): self._check(key, text, home) for key, text in entries}

    def remember(self, answers: Mapping[tuple[str, str], Verdict | None], home: HomeRecord) -> None:
        """Cache answers that :meth:`check_all` gave for ``home``."""
        for (key, text), verdict in answers.items():
            self._cache[(key, text, home.public_key, home.epoch)] = verdict
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def _check(self, entry_key: str, text: str, home: HomeRecord) -> Verdict | None:
        opened = _open_signed(text, VERDICT_TAG)
        if opened is None:
            return None
        payload, raw, signature = opened
        verdict = _read_verdict(payload)
        if (verdict is None or verdict.calendar != self.calendar or verdict.epoch != home.epoch
                or verdict.relay_id != home.relay_id or verdict.entry_key(text) != entry_key
                or raw != verdict.payload()):
            return None  # the cheap checks first: a signature check costs ~55 µs
        return verdict if _verifies(home.public_key, VERDICT_TAG, raw, signature) else None
