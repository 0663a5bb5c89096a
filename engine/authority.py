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
the epoch it names and that epoch is the current one, or an earlier one whose verdicts the chain
**adopted** (below): anything else (a forgery, a copy under another reservation, a decision of a
home that has since handed over) is simply not a decision, and every replica derives the same
status from the same bytes, so convergence is untouched.

Adoption. Each verdict carries its home's running **serial** in its epoch (1, 2, 3, ... in the
order the home signed them) and the digest of the verdict it signed just before
(:func:`verdict_digest`; none for serial 1), so an epoch's verdicts form a hash chain. A
handover record may say ``adopts = K``: the previous epoch's verdicts with serials 1..K stay
genuine under it (and so does whatever the previous record adopted in turn). A new home that
holds every verdict the previous one stored, serials 1..K with none missing, can so keep them
all with one small record instead of signing each again (a relay cluster's takeover:
:mod:`accord.relay.cluster_home`); the chain lets it check that with one signature check (the
top's) and a digest per verdict instead of a signature check each. Whatever the previous home signs
later, or signed and never stored, has a higher serial (a home signs, stores and fences its
verdicts in serial order), so it does not count anywhere, as before. A record without
``adopts`` adopts nothing (the new home signs again what it keeps; verdicts without a serial,
from before serials, are kept that way too).

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
from dataclasses import dataclass, replace
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import ValidationError

VERDICT_TAG = "v1"
HOME_TAG = "h1"
MAX_ENCODED = 4096  # anything longer is not ours: refuse before decoding
CACHE_SIZE = 200_000
OUTCOMES = ("booked", "rejected", "released")
MAX_SERIAL = 2**53  # JSON integers every Yjs client reads exactly


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
class Adopted:
    """An earlier epoch whose verdicts with serials 1..``upto`` still count (see the module docstring)."""

    epoch: int
    relay_id: str
    public_key: str
    upto: int


@dataclass(frozen=True, slots=True)
class HomeRecord:
    """"From ``epoch`` on, ``relay_id`` (key ``public_key``) decides ``calendar``", signed by
    ``signer`` (the record's own key for epoch 1, the previous home's key for a handover).

    ``adopts``: the previous epoch's verdicts with serials 1..``adopts`` stay genuine (None:
    none do). ``earlier`` is not signed: :func:`home_chain` fills it in with every earlier
    epoch whose verdicts still count under this record (each record's own copy is empty)."""

    calendar: str
    epoch: int
    relay_id: str
    public_key: str
    signer: str
    adopts: int | None = None
    earlier: tuple[Adopted, ...] = ()

    def entry_key(self, encoded: str) -> str:
        """Where the record lives in the calendar's ``homes`` map: unique, and unforgeable (it
        ends in the signature), so no writer can claim the key of a handover before it is made."""
        return f"{self.epoch}/{self.relay_id}/{encoded.rsplit('.', 1)[1][:22]}"

    def payload(self) -> bytes:
        fields: dict[str, Any] = {"c": self.calendar, "e": self.epoch, "h": self.relay_id, "k": self.public_key,
                                  "s": self.signer}
        if self.adopts is not None:
            fields["a"] = self.adopts
        return _canonical(fields)


def first_home(calendar: str, relay_id: str, key: RelayKey) -> tuple[HomeRecord, str]:
    """The epoch-1 record by which ``relay_id`` takes ``calendar`` (and its signed encoding)."""
    record = HomeRecord(calendar, 1, relay_id, key.public, key.public)
    return record, key.sign(HOME_TAG, record.payload())


def handover(current: HomeRecord, key: RelayKey, to_relay: str, to_key: str, *,
             adopts: int | None = None) -> tuple[HomeRecord, str]:
    """The next epoch's record, handing ``current``'s calendar to ``to_relay``; signed by the
    current home's ``key``. ``adopts``: keep ``current``'s verdicts with serials 1..``adopts``
    (the caller has seen every one of them stored: :func:`adoption_point`).

    Raises:
        ValidationError: ``key`` is not the current home's, or the target is malformed.
    """
    if key.public != current.public_key:
        raise ValidationError(f"only the current home ({current.relay_id}) can hand {current.calendar} over")
    if not is_public_key(to_key):
        raise ValidationError(f"{to_key!r} is not an Ed25519 public key; copy it from `accord relay key` on {to_relay}")
    if adopts is not None and not 0 <= adopts <= MAX_SERIAL:
        raise ValidationError(f"cannot adopt verdicts up to serial {adopts}")
    record = HomeRecord(current.calendar, current.epoch + 1, to_relay, to_key, key.public, adopts)
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
    adopts = payload.get("a")
    if adopts is not None and (type(adopts) is not int or not 0 <= adopts <= MAX_SERIAL):
        return None
    try:
        record = HomeRecord(str(payload["c"]), int(payload["e"]), str(payload["h"]), str(payload["k"]),
                            str(payload["s"]), adopts)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if record.calendar != calendar or record.epoch < 1 or raw != record.payload():
        return None
    if record.epoch == 1 and adopts is not None:
        return None  # there is no earlier epoch to adopt
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
    """Every epoch's home, oldest first (see :func:`resolve_home`), each with the earlier epochs
    it adopted filled in (:attr:`HomeRecord.earlier`); empty: no home."""
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
        chosen = min(candidates, key=lambda r: (r.relay_id, r.public_key, r.adopts is None, r.adopts or 0))
        if chain and chosen.adopts is not None:
            before = chain[-1]
            chosen = replace(chosen, earlier=(*before.earlier, Adopted(before.epoch, before.relay_id,
                                                                       before.public_key, chosen.adopts)))
        chain.append(chosen)


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
    reservation's verdicts (the latest holds its slot), whatever the clocks say. ``serial``
    numbers the home's verdicts in its epoch, in signing order (0: from before serials; such a
    verdict is never adopted, see the module docstring); ``previous`` is the
    :func:`verdict_digest` of the verdict with the serial before (empty for serial 1).
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
    serial: int = 0  # the home's count of verdicts signed in this epoch, this one included
    previous: str = ""  # verdict_digest of the home's verdict of serial - 1 in this epoch

    def payload(self) -> bytes:
        fields: dict[str, Any] = {"c": self.calendar, "r": self.reservation, "q": self.request, "o": self.outcome,
                                  "b": list(self.booked) if self.booked else None, "why": self.reason,
                                  "w": self.conflict_with, "h": self.relay_id, "e": self.epoch, "t": self.decided_at,
                                  "n": self.seq}
        if self.serial:
            fields["k"] = self.serial
        if self.previous:
            fields["p"] = self.previous
        return _canonical(fields)

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
                          str(payload["t"]), int(payload["n"]), int(payload.get("k", 0)), str(payload.get("p", "")))
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        return None
    return verdict if verdict.outcome in OUTCOMES and 0 <= verdict.serial <= MAX_SERIAL else None


@dataclass(slots=True)
class _Opened:
    """What the verifier knows of one stored ``(entry key, text)``: the verdict, if well-formed
    and stored under its own key, and which public keys its signature was checked against."""

    verdict: Verdict | None
    signed_by: dict[str, bool]


Answers = Mapping[tuple[str, str], tuple[Verdict | None, str, bool]]
"""What :meth:`Verifier.check_all` found: per ``(entry key, text)``, the well-formed verdict
(or None), the public key its signature was checked against ("": none) and whether it verified."""


def verdict_digest(encoded: str) -> str:
    """What the next verdict of an epoch names as ``previous``: a digest of this one's whole text."""
    return _b64(hashlib.sha256(encoded.encode()).digest()[:16])


class Verifier:
    """Checks verdicts against a calendar's home chain, caching results (bounded LRU).

    What a signature check found is kept by entry and key, whatever the current epoch, so a
    takeover that adopts the previous epoch's verdicts costs a replica no check again."""

    def __init__(self, calendar: str, max_cached: int = CACHE_SIZE) -> None:
        self.calendar = calendar
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, str], _Opened] = OrderedDict()
        self._earlier: tuple[HomeRecord | None, dict[int, Adopted]] = (None, {})

    def verify(self, entry_key: str, text: object, home: HomeRecord | None) -> Verdict | None:
        """The verdict stored under ``entry_key`` if it is genuine: well-formed, for this calendar,
        stored under its own key, and signed by ``home`` at ``home``'s epoch or by an earlier
        epoch's home within what the chain adopted (:attr:`HomeRecord.earlier`). Else None."""
        if home is None or not isinstance(text, str):
            return None
        verdict = self.opened(entry_key, text)
        opened = self._cache[(entry_key, text)]
        self._cache.move_to_end((entry_key, text))
        signer = self._signer(verdict, home) if verdict is not None else None
        if signer is None:
            return None
        valid = opened.signed_by.get(signer)
        if valid is None:
            valid = opened.signed_by[signer] = self._signed(text, signer)
        return verdict if valid else None

    def opened(self, entry_key: str, text: str) -> Verdict | None:
        """The verdict in ``text`` if it is well-formed, for this calendar and stored under its own
        key, whoever signed it (signature not checked). Cached like :meth:`verify`."""
        cache_key = (entry_key, text)
        opened = self._cache.get(cache_key)
        if opened is None:
            opened = self._cache[cache_key] = _Opened(self._open(entry_key, text), {})
            if len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return opened.verdict

    def unopened(self, entries: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The ``(entry key, text)`` pairs :meth:`opened` has not read yet."""
        return [entry for entry in entries if entry not in self._cache]

    def open_all(self, entries: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Verdict | None]:
        """:meth:`opened` for many, without touching the cache (for a worker thread: ~30 µs each,
        the canonical form checked); hand the answers to :meth:`remember_opened`."""
        return {(key, text): self._open(key, text) for key, text in entries}

    def remember_opened(self, answers: Mapping[tuple[str, str], Verdict | None]) -> None:
        """Cache what :meth:`open_all` read."""
        for entry, verdict in answers.items():
            if entry not in self._cache:
                self._cache[entry] = _Opened(verdict, {})
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def vouch(self, entries: Iterable[tuple[str, str]], public_key: str) -> None:
        """Remember ``entries`` as signed by ``public_key`` without checking each: their text is
        covered, digest by digest, by a verdict whose signature was checked (:func:`verdict_digest`)."""
        for entry_key, text in entries:
            self.opened(entry_key, text)
            self._cache[(entry_key, text)].signed_by[public_key] = True

    def unchecked(self, entries: Iterable[tuple[str, str]], home: HomeRecord) -> list[tuple[str, str]]:
        """The ``(entry key, text)`` pairs whose reading under ``home`` would cost a signature check."""
        out = []
        for key, text in entries:
            opened = self._cache.get((key, text))
            if opened is None:
                out.append((key, text))
            elif opened.verdict is not None:
                signer = self._signer(opened.verdict, home)
                if signer is not None and signer not in opened.signed_by:
                    out.append((key, text))
        return out

    def check_all(self, entries: Iterable[tuple[str, str]], home: HomeRecord) -> Answers:
        """Check ``entries`` under ``home`` without touching the cache, so that it may run in a
        worker thread (PyNaCl releases the GIL inside libsodium); hand the answers to :meth:`remember`."""
        earlier = {adopted.epoch: adopted for adopted in home.earlier}
        answers = {}
        for key, text in entries:
            verdict = self._open(key, text)
            signer = _signer_in(verdict, home, earlier) if verdict is not None else None
            answers[(key, text)] = (verdict, signer or "", signer is not None and self._signed(text, signer))
        return answers

    def remember(self, answers: Answers) -> None:
        """Cache answers that :meth:`check_all` gave (under any home)."""
        for (key, text), (verdict, signer, valid) in answers.items():
            opened = self._cache.get((key, text))
            if opened is None:
                opened = self._cache[(key, text)] = _Opened(verdict, {})
            if signer:
                opened.signed_by[signer] = valid
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def _signer(self, verdict: Verdict, home: HomeRecord) -> str | None:
        cached, earlier = self._earlier
        if cached is not home:
            earlier = {adopted.epoch: adopted for adopted in home.earlier}
            self._earlier = (home, earlier)
        return _signer_in(verdict, home, earlier)

    def _open(self, entry_key: str, text: str) -> Verdict | None:
        opened = _open_signed(text, VERDICT_TAG)
        if opened is None:
            return None
        payload, raw, _signature = opened
        verdict = _read_verdict(payload)
        if (verdict is None or verdict.calendar != self.calendar or verdict.entry_key(text) != entry_key
                or raw != verdict.payload()):
            return None
        return verdict

    @staticmethod
    def _signed(text: str, public_key: str) -> bool:
        """True if the (well-formed) verdict ``text`` is signed by ``public_key`` (~55 µs)."""
        _tag, payload, signature = text.split(".")
        return _verifies(public_key, VERDICT_TAG, _unb64(payload), _unb64(signature))


def _signer_in(verdict: Verdict, home: HomeRecord, earlier: Mapping[int, Adopted]) -> str | None:
    """The public key whose signature makes ``verdict`` genuine under ``home`` (None: nothing can)."""
    if verdict.epoch == home.epoch:
        return home.public_key if verdict.relay_id == home.relay_id else None
    adopted = earlier.get(verdict.epoch)
    if adopted is None or verdict.relay_id != adopted.relay_id or not 1 <= verdict.serial <= adopted.upto:
        return None
    return adopted.public_key
