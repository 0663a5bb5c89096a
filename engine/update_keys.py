"""Which protected map keys a Yjs update writes, decided *before* the update is applied.

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
from dataclasses import dataclass
from itertools import pairwise

from .clock_runs import ClockRuns
from .errors import MalformedMessage
from .model import DECISION_KEYS

# Keys a terminal may never write. Decision keys live in nested (reservation) maps, ``home``
# in the root map ``meta``.
NESTED_PROTECTED = tuple(sorted(DECISION_KEYS))
META_PROTECTED = ("home",)
META_ROOT = b"meta"
UNKNOWN_KEY = "?"
"""Reported key of an item whose origin the index has not seen yet (see the module docstring)."""

# Key codes (1-based; 0 = not protected, -1 = inherits from its origins, -2 = being resolved).
_KEYS: tuple[str, ...] = ("", *NESTED_PROTECTED, *META_PROTECTED, UNKNOWN_KEY)
_NESTED_CODES = {key.encode(): code for code, key in enumerate(_KEYS) if key in DECISION_KEYS}
_META_CODES = {key.encode(): code for code, key in enumerate(_KEYS) if key in META_PROTECTED}
_UNKNOWN = len(_KEYS) - 1
_INHERIT = -1
_RESOLVING = -2

# Content refs (low 5 bits of the info byte), from Yjs ``contentRefs``.
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
# Type refs both Yjs and Yrs read alike: array, map, text, XML element (+ name), fragment, XML text.
# Yjs reads a name after an XML hook (5) and Yrs does not; Yrs alone knows 7, 9 and 15.
_TYPE_REFS = frozenset({0, 1, 2, 3, 4, 6})
_XML_ELEMENT = 3
_MAX_SHIFT = 63
_MAX_CLOCK = 0xFFFFFFFF  # Yrs reads clocks and lengths as u32


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
        self._last: tuple[bytes, _Scan] | None = None

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
                if not scan.starts.get(client, start + 1) <= start < scan.ends.get(client, 0):
                    found.append(ProtectedWrite(client, start, UNKNOWN_KEY, deleted=True))
                    if first_only:
                        return found
        return found

    # ---- internals ----------------------------------------------------------------------------

    def _scan(self, update: bytes) -> _Scan:
        # The relay checks an update, then observes the change it made: often the same bytes.
        last = self._last
        if last is not None and (last[0] is update or last[0] == update):
            return last[1]
        scan = _scan_update(update)
        self._last = (update, scan)
        return scan

    def _code_at(self, client: int, clock: int, scan: _Scan, strict: bool) -> int:
        """The key code of the item at an ID outside this update's candidates."""
        runs = self._runs.get(client)
        if runs is not None:
            i = runs.find(clock)
            if i >= 0:
                return runs.codes[i]
        if (
            strict
            and client in self._writers
            and clock >= self._seen.get(client, 0)
            and not scan.starts.get(client, clock + 1) <= clock < scan.ends.get(client, 0)
        ):
            return _UNKNOWN  # Yrs would keep it pending, then integrate it as an overwrite
        return 0

    def _resolve(self, scan: _Scan, *, strict: bool) -> list[int]:
        """The key code of every candidate, following origins through the update and the index."""
        cands = scan.candidates
        codes = [cand[3] for cand in cands]
        if _INHERIT not in codes:
            return codes
        starts, ends = scan.starts, scan.ends
        if not any(
            client in ends and starts[client] <= clock < ends[client]
            for cand in cands
            if cand[3] == _INHERIT
            for client, clock in ((cand[4], cand[5]), (cand[6], cand[7]))
        ):
            # The usual case (e.g. a terminal overwriting its note): every origin is outside this
            # update, so the index alone answers.
            for i, cand in enumerate(cands):
                if codes[i] == _INHERIT:
                    code = self._code_at(cand[6], cand[7], scan, strict) if cand[6] >= 0 else 0
                    if code <= 0 and cand[4] >= 0:
                        code = self._code_at(cand[4], cand[5], scan, strict)
                    codes[i] = code
            return codes
        # Candidates per client, sorted by clock, to find an origin inside this update.
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

        def local_find(client: int, clock: int) -> int:
            entry = local.get(client)
            if entry is None:
                return -1
            j = bisect_right(entry[0], clock) - 1
            if j < 0:
                return -1
            i = entry[1][j]
            return i if clock < cands[i][1] + cands[i][2] else -1

        for first in range(len(cands)):
            if codes[first] != _INHERIT:
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
                    j = local_find(client, clock)
                    if j >= 0:
                        code = codes[j]
                        if code == _INHERIT:
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
        return codes


@dataclass(slots=True)
class _Scan:
    """What :func:`_scan_update` keeps of one update (only what the key check needs)."""

    # Items that write a protected key directly or may inherit one from their origins:
    # (client, clock, length, code, origin client, origin clock, right client, right clock);
    # a missing origin is (-1, -1).
    candidates: list[tuple[int, int, int, int, int, int, int, int]]
    starts: dict[int, int]  # client -> clock of its first struct in this update
    ends: dict[int, int]  # client -> clock after its last struct
    deletes: list[tuple[int, int, int]]  # (client, clock, length)


def _scan_update(data: bytes) -> _Scan:
    """Decode a Yjs v1 update far enough to know which items may write protected keys.

    Raises:
        MalformedMessage: truncated, trailing or garbage bytes.
    """
    try:
        return _scan(data)
    except (IndexError, UnicodeDecodeError, RecursionError):
        raise MalformedMessage(f"not a Yjs update: truncated or garbage ({len(data)} bytes)") from None


def _scan(data: bytes) -> _Scan:
    size = len(data)
    pos = 0

    def uint() -> int:
        nonlocal pos
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            return byte
        value = byte & 0x7F
        shift = 7
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > _MAX_SHIFT:
                raise MalformedMessage("not a Yjs update: varint longer than 64 bits")

    def skip_bytes() -> None:  # varstring or varUint8Array
        nonlocal pos
        length = uint()
        pos += length
        if pos > size:
            raise IndexError

    candidates: list[tuple[int, int, int, int, int, int, int, int]] = []
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    nested_codes = _NESTED_CODES
    meta_codes = _META_CODES
    uint_at = _uint_at
    for _ in range(uint()):
        count = uint()
        client = uint()
        clock = uint()
        if count and clock < starts.get(client, clock + 1):
            starts[client] = clock
        for _ in range(count):
            info = data[pos]
            pos += 1
            # Yrs (which applies the update) tells GC and Skip by the whole byte and masks content
            # refs with 4 bits, Yjs with 5: accept only what both read the same way.
            if info in (_GC, _SKIP):
                clock += uint()
                continue
            ref = info & 0x1F
            if not _DELETED <= ref <= _DOC or ref == _JSON:
                # Yrs reads legacy JSON content with one string more than Yjs writes: refuse it.
                raise MalformedMessage(f"not a Yjs update: unsupported content type {ref}")
            code = 0
            oc = ok = rc = rk = -1
            if info & 0x80:
                oc, pos = uint_at(data, pos)
                ok, pos = uint_at(data, pos)
                code = _INHERIT
            if info & 0x40:
                rc, pos = uint_at(data, pos)
                rk, pos = uint_at(data, pos)
                code = _INHERIT
            if not info & 0xC0:
                parent_info = data[pos]
                pos += 1
                if parent_info == 1:  # parent is a root type, by name
                    length = data[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = uint_at(data, pos)
                    root = data[pos : pos + length]
                    pos += length
                    if pos > size:
                        raise IndexError
                    nested = False
                elif parent_info == 0:  # parent is a nested type, by the ID of its item: skip it
                    while data[pos] & 0x80:
                        pos += 1
                    pos += 1
                    while data[pos] & 0x80:
                        pos += 1
                    pos += 1
                    root = b""
                    nested = True
                else:
                    raise MalformedMessage(f"not a Yjs update: parent info {parent_info}")
                if info & 0x20:
                    length = data[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = uint_at(data, pos)
                    key = data[pos : pos + length]
                    pos += length
                    if pos > size:
                        raise IndexError
                    if nested:
                        code = nested_codes.get(key, 0)
                    elif root == META_ROOT:
                        code = meta_codes.get(key, 0)
            # content: advance past it and learn its length in clock units
            if ref == _ANY:
                length = data[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = uint_at(data, pos)
                for _ in range(length):
                    if data[pos] == 119 and data[pos + 1] < 0x80:  # fast path: one short string
                        pos += 2 + data[pos + 1]
                        if pos > size:
                            raise IndexError
                    else:
                        pos = _skip_any(data, pos)
            elif ref == _DELETED:
                length = uint()
            elif ref == _STRING:
                n = uint()
                text = data[pos : pos + n].decode()
                pos += n
                if pos > size:
                    raise IndexError
                length = len(text.encode("utf-16-le")) // 2  # Yjs counts UTF-16 code units
            elif ref == _TYPE:
                type_ref = uint()
                if type_ref not in _TYPE_REFS:
                    raise MalformedMessage(f"not a Yjs update: unsupported shared type {type_ref}")
                if type_ref == _XML_ELEMENT:
                    skip_bytes()
                length = 1
            elif ref in (_BINARY, _EMBED):
                skip_bytes()
                length = 1
            elif ref == _FORMAT:
                skip_bytes()
                skip_bytes()
                length = 1
            else:  # _DOC
                skip_bytes()
                pos = _skip_any(data, pos)
                length = 1
            if code:
                if ok > _MAX_CLOCK or rk > _MAX_CLOCK:
                    raise MalformedMessage("not a Yjs update: origin clock out of range")
                candidates.append((client, clock, length, code, oc, ok, rc, rk))
            clock += length
        if clock > _MAX_CLOCK:
            raise MalformedMessage("not a Yjs update: clock out of range")
        if count and clock > ends.get(client, 0):
            ends[client] = clock
    deletes: list[tuple[int, int, int]] = []
    for _ in range(uint()):
        client = uint()
        for _ in range(uint()):
            clock = uint()
            length = uint()
            if clock + length > _MAX_CLOCK:
                raise MalformedMessage("not a Yjs update: deleted range out of range")
            deletes.append((client, clock, length))
    if pos != size:
        raise MalformedMessage(f"not a Yjs update: {size - pos} unexpected bytes after the delete set")
    return _Scan(candidates, starts, ends, deletes)


def _skip_any(data: bytes, pos: int) -> int:
    """Skip one lib0 ``any`` value; iterative, since the sender chooses the nesting depth."""
    # lib0 readAny: one type byte, then the payload; objects are (varstring key, any) pairs.
    size = len(data)
    frames: list[list[int]] = [[0, 1]]  # [is_object, values left]
    while frames:
        frame = frames[-1]
        if frame[1] == 0:
            frames.pop()
            continue
        frame[1] -= 1
        if frame[0]:
            length, pos = _uint_at(data, pos)
            pos += length
        kind = data[pos]
        pos += 1
        if kind in (127, 126, 121, 120):  # undefined, null, false, true
            continue
        if kind == 125:  # signed varint: continuation bit 0x80 on every byte but the last
            first = pos
            while data[pos] & 0x80:
                pos += 1
            pos += 1
            if pos - first > 10:
                raise MalformedMessage("not a Yjs update: varint longer than 64 bits")
        elif kind == 124:  # float32
            pos += 4
        elif kind == 123 or kind == 122:  # float64, bigint64
            pos += 8
        elif kind == 119 or kind == 116:  # string, Uint8Array
            length, pos = _uint_at(data, pos)
            pos += length
        elif kind == 118 or kind == 117:  # object, array
            length, pos = _uint_at(data, pos)
            frames.append([kind == 118, length])
        else:
            raise MalformedMessage(f"not a Yjs update: unknown value type {kind}")
        if pos > size:
            raise IndexError
    return pos


_PROTECTED_NAMES = tuple(key.encode() for key in (*NESTED_PROTECTED, *META_PROTECTED))


def _client_probe(client: int) -> bytes:
    """The varuint encoding of ``client`` without its last byte (which padding may change).

    A one-byte id gives ``b""``, which every update contains: such a writer always gets the full check.
    """
    out = bytearray()
    while client > 0x7F:
        out.append(0x80 | (client & 0x7F))
        client >>= 7
    out.append(client)
    return bytes(out[:-1])


def _uint_at(data: bytes, pos: int) -> tuple[int, int]:
    """A lib0 varuint at ``pos``: (value, position after it)."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > _MAX_SHIFT:
            raise MalformedMessage("not a Yjs update: varint longer than 64 bits")
