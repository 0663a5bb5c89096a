"""Which protected map keys a Yjs update writes, decided *before* the update is applied.

(:class:`engine.update_policy.UpdatePolicy` judges every rule of the calendar layout and
supersedes this index; :mod:`relay.admission` uses this one until it switches over.)

Only a calendar's home relay may write the decision keys of a reservation
(:data:`engine.model.DECISION_KEYS`) and the ``home`` key of the ``meta`` map. A relay
therefore checks every update that arrives on a terminal connection and drops it if it
would create, overwrite or delete one of those keys. The check has to happen on the bytes:
once applied, a Yjs update cannot be taken back.

Theory of operation
-------------------
A Yjs update (v1 encoding, lib0 varints) is a list of *structs* per client followed by a
*delete set*. A map entry is an *item* whose ``parentSub`` is the key. Only the first item
ever written under a key carries the key: when a key is overwritten, the new item points at
the item it replaces through its ``origin`` ("left") ID and the encoder leaves ``parentSub``
and the parent out (Yjs ``Item.write``: parent info is written only when neither origin nor
right origin is set). A decoder that only looks at ``parentSub`` therefore misses every
overwrite. :class:`KeyIndex` remembers, per client, the clock ranges of every item written
under a protected key, so that an incoming item whose ``origin`` or ``rightOrigin`` falls in
such a range is known to write that key too, also when the origin is in the same update.

The index also remembers which protected items are already deleted (an update that carries
the whole delete set of a replica, such as a sync step 2, is not a new write) and up to which
clock it has seen each client. An item whose origin points past what the index has seen of a
client that writes protected keys (a relay) is reported as well: Yrs would hold it pending
and integrate it as an overwrite once the origin arrives.

This module holds that policy. The bytes are read by :func:`engine.yjs_update.scan_update`
(a view of :class:`engine.yjs_update.UpdateReader`, on :mod:`engine.lib0`), and the ranges
per client are :class:`engine.clock_runs.ClockRuns`.

Typical use on a relay, per calendar::

    index = KeyIndex.from_update(replica.full_state())      # once, after loading
    if from_terminal and index.writes_protected(update):     # before applying
        ...refuse the update...
    # MalformedMessage from writes_protected means "refuse" too, never "apply unchecked": the
    # decoder refuses every construct Yjs and Yrs read differently (legacy JSON content, XML hooks,
    # 5-bit content refs, odd parent infos) and trailing bytes, all of which Yrs may still accept.
    change = replica.apply(update)
    if change is not None:
        index.observe(change.update)                         # every applied change, any source

Feed :meth:`KeyIndex.observe` with every change the relay's document commits (remote
updates, peer updates and the relay's own decisions): a :class:`engine.replica.Change`
carries exactly what was integrated.

Limits: deletions of protected items that the index has not seen yet (and that are not of a
known protected writer's future clocks) are not reported.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from .clock_runs import ClockRuns
from .model import DECISION_KEYS
from .protocol import write_var_uint
from .yjs_update import INHERITS, Candidate, UpdateScan, WatchedKeys, scan_update

# Keys a terminal may never write. Decision keys live in nested (reservation) maps, ``home``
# in the root map ``meta``.
NESTED_PROTECTED = tuple(sorted(DECISION_KEYS))
META_PROTECTED = ("home",)
META_ROOT = b"meta"
UNKNOWN_KEY = "?"
"""Reported key of an item whose origin the index has not seen yet (see the module docstring)."""

# Key codes (1-based; 0 = not protected, INHERITS = inherits from its origins, -2 = being resolved).
_KEYS: tuple[str, ...] = ("", *NESTED_PROTECTED, *META_PROTECTED, UNKNOWN_KEY)
_WATCHED = WatchedKeys(
    nested={key.encode(): code for code, key in enumerate(_KEYS) if key in DECISION_KEYS},
    roots={META_ROOT: {key.encode(): code for code, key in enumerate(_KEYS) if key in META_PROTECTED}},
)
_UNKNOWN = len(_KEYS) - 1
_RESOLVING = -2
_PROTECTED_NAMES = tuple(key.encode() for key in (*NESTED_PROTECTED, *META_PROTECTED))


@dataclass(frozen=True, slots=True)
class ProtectedWrite:
    """One protected key an update writes: the item (or deleted range) and the key.

    ``key`` is :data:`UNKNOWN_KEY` when the item's origin is an item of a protected writer the
    index has not seen yet.
    """

    client: int
    clock: int
    key: str
    deleted: bool = False


class KeyIndex:
    """Per calendar: the item ID ranges written under protected keys, for :meth:`writes_protected`.

    Build it from the loaded document (:meth:`from_update` with ``doc.get_update()``), then
    :meth:`observe` every update the document integrates, from any source, in the order applied.
    Memory is about 20 bytes per protected item (11 per decided reservation).
    """

    def __init__(self) -> None:
        self._runs: dict[int, ClockRuns] = {}
        self._seen: dict[int, int] = {}  # client -> clock after the last struct observed
        self._writers: set[int] = set()  # clients that wrote protected keys (relays)
        self._writer_probes: tuple[bytes, ...] = ()
        self._last: tuple[bytes, UpdateScan] | None = None

    @classmethod
    def from_update(cls, update: bytes) -> KeyIndex:
        """An index of everything in ``update``, e.g. a replica's full state after loading.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update.
        """
        index = cls()
        index.observe(update)
        return index

    @property
    def protected_writers(self) -> frozenset[int]:
        """Yjs client ids that have written protected keys (normally the home relays' docs)."""
        return frozenset(self._writers)

    def key_at(self, client: int, clock: int) -> str | None:
        """The protected key the item with this ID was written under, or None."""
        runs = self._runs.get(client)
        if runs is None:
            return None
        i = runs.find(clock)
        return _KEYS[runs.codes[i]] if i >= 0 else None

    def observe(self, update: bytes) -> None:
        """Record the protected items and deletions of an update the document has integrated.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update (the index is unchanged).
        """
        scan = self._scan(update)
        codes = self._resolve(scan, strict=False)
        for cand, code in zip(scan.candidates, codes, strict=True):
            if code > 0:
                client = cand[0]
                runs = self._runs.get(client)
                if runs is None:
                    runs = self._runs[client] = ClockRuns()
                runs.add(cand[1], cand[1] + cand[2], code)
                if client not in self._writers:
                    self._writers.add(client)
                    self._writer_probes = tuple(_client_probe(c) for c in sorted(self._writers))
        for client, clock, length in scan.deletes:
            runs = self._runs.get(client)
            if runs is not None:
                runs.delete(clock, clock + length)
        seen = self._seen
        for client, end in scan.ends.items():
            if end > seen.get(client, 0):
                seen[client] = end

    def might_write_protected(self, update: bytes) -> bool:
        """A fast, conservative pre-check (a few substring searches, no decoding).

        False means ``update`` can neither write nor delete a protected key, so :meth:`writes_protected`
        would find nothing and :meth:`observe` would record nothing a later check needs: a new
        protected item carries its key name as bytes, and an overwrite or deletion of one names
        a protected writer's client id (origin IDs and delete sets are varuint client, clock).
        Names are searched without their length prefix and client ids without their last byte,
        so that non-canonical varuint encodings cannot slip through. True means: decode and check.
        """
        if any(name in update for name in _PROTECTED_NAMES):
            return True
        return any(probe in update for probe in self._writer_probes)

    def writes_protected(self, update: bytes) -> bool:
        """True if applying ``update`` would create, overwrite or delete a protected key.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update; refuse it as well.
        """
        return bool(self.protected_writes(update, first_only=True))

    def protected_writes(self, update: bytes, *, first_only: bool = False) -> list[ProtectedWrite]:
        """Every protected write in ``update`` (items first, then deletions), for logs and tests.

        Items the index already holds (a redundant resend) are not writes.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update.
        """
        scan = self._scan(update)
        found: list[ProtectedWrite] = []
        if scan.candidates:
            codes = self._resolve(scan, strict=True)
            for cand, code in zip(scan.candidates, codes, strict=True):
                if code > 0:
                    runs = self._runs.get(cand[0])
                    if runs is not None and runs.covers(cand[1], cand[1] + cand[2]):
                        continue  # already integrated: Yrs skips it
                    found.append(ProtectedWrite(cand[0], cand[1], _KEYS[code]))
                    if first_only:
                        return found
        for client, clock, length in scan.deletes:
            runs = self._runs.get(client)
            if runs is not None:
                hit = runs.first_live(clock, clock + length)
                if hit is not None:
                    found.append(ProtectedWrite(client, hit[0], _KEYS[hit[1]], deleted=True))
                    if first_only:
                        return found
                    continue
            if client in self._writers and clock + length > self._seen.get(client, 0):
                start = max(clock, self._seen.get(client, 0))
                if not scan.spans(client, start):
                    found.append(ProtectedWrite(client, start, UNKNOWN_KEY, deleted=True))
                    if first_only:
                        return found
        return found

    # ---- internals ----------------------------------------------------------------------------

    def _scan(self, update: bytes) -> UpdateScan:
        # The relay checks an update, then observes the change it made: often the same bytes.
        last = self._last
        if last is not None and (last[0] is update or last[0] == update):
            return last[1]
        scan = _scan_update(update)
        self._last = (update, scan)
        return scan

    def _code_at(self, client: int, clock: int, scan: UpdateScan, strict: bool) -> int:
        """The key code of the item at an ID outside this update's candidates."""
        runs = self._runs.get(client)
        if runs is not None:
            i = runs.find(clock)
            if i >= 0:
                return runs.codes[i]
        if strict and client in self._writers and clock >= self._seen.get(client, 0) and not scan.spans(client, clock):
            return _UNKNOWN  # Yrs would keep it pending, then integrate it as an overwrite
        return 0

    def _resolve(self, scan: UpdateScan, *, strict: bool) -> list[int]:
        """The key code of every candidate, following origins through the update and the index."""
        cands = scan.candidates
        codes = [cand[3] for cand in cands]
        if INHERITS not in codes:
            return codes
        if any(
            scan.spans(client, clock)
            for cand in cands
            if cand[3] == INHERITS
            for client, clock in ((cand[4], cand[5]), (cand[6], cand[7]))
        ):
            self._resolve_through_update(scan, codes, strict)
            return codes
        # The usual case (e.g. a terminal overwriting its note): every origin is outside this
        # update, so the index alone answers.
        for i, cand in enumerate(cands):
            if codes[i] == INHERITS:
                code = self._code_at(cand[6], cand[7], scan, strict) if cand[6] >= 0 else 0
                if code <= 0 and cand[4] >= 0:
                    code = self._code_at(cand[4], cand[5], scan, strict)
                codes[i] = code
        return codes

    def _resolve_through_update(self, scan: UpdateScan, codes: list[int], strict: bool) -> None:
        """Replace every INHERITS in ``codes`` when origins may be other candidates of the same update.

        Depth first and iterative (the sender chooses how long a chain of origins is); a cycle,
        which Yrs cannot integrate, resolves to 0.
        """
        cands = scan.candidates
        candidate_at = _candidate_finder(cands)
        for first in range(len(cands)):
            if codes[first] != INHERITS:
                continue
            stack = [first]
            while stack:
                cur = stack[-1]
                codes[cur] = _RESOLVING
                cand = cands[cur]
                result = 0
                wait_for = -1
                # Yjs takes parent and key from the right origin if there is one, else the origin;
                # count the item as protected if either one is.
                for client, clock in ((cand[6], cand[7]), (cand[4], cand[5])):
                    if client < 0:
                        continue
                    j = candidate_at(client, clock)
                    if j >= 0:
                        code = codes[j]
                        if code == INHERITS:
                            wait_for = j
                            break
                        if code == _RESOLVING:
                            code = 0  # a cycle: not a valid update, Yrs cannot integrate it
                    else:
                        code = self._code_at(client, clock, scan, strict)
                    if code > 0 and not result:
                        result = code
                if wait_for >= 0:
                    stack.append(wait_for)
                    continue
                codes[cur] = result
                stack.pop()


def _candidate_finder(cands: list[Candidate]) -> Callable[[int, int], int]:
    """A function ``(client, clock) -> index`` of the candidate holding that item ID, or -1."""
    # Candidates per client, sorted by clock (they usually are already).
    local: dict[int, tuple[list[int], list[int]]] = {}
    for i, cand in enumerate(cands):
        entry = local.get(cand[0])
        if entry is None:
            entry = local[cand[0]] = ([], [])
        entry[0].append(cand[1])
        entry[1].append(i)
    for client, (clocks, ids) in local.items():
        if any(a > b for a, b in pairwise(clocks)):
            pairs = sorted(zip(clocks, ids, strict=True))
            local[client] = ([p[0] for p in pairs], [p[1] for p in pairs])

    def candidate_at(client: int, clock: int) -> int:
        entry = local.get(client)
        if entry is None:
            return -1
        j = bisect_right(entry[0], clock) - 1
        if j < 0:
            return -1
        i = entry[1][j]
        return i if clock < cands[i][1] + cands[i][2] else -1

    return candidate_at


def _scan_update(update: bytes) -> UpdateScan:
    """Scan ``update`` for the protected keys (see :func:`engine.yjs_update.scan_update`).

    Raises:
        MalformedMessage: truncated, trailing or garbage bytes.
    """
    return scan_update(update, _WATCHED)


def _client_probe(client: int) -> bytes:
    """The varuint encoding of ``client`` without its last byte (which padding may change).

    A one-byte id gives ``b""``, which every update contains: such a writer always gets the full check.
    """
    return write_var_uint(client)[:-1]
