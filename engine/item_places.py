"""Where every item of a calendar document sits: its root entry, how deep below it, under which key.

Theory of operation
-------------------
A Yjs item does not carry a path. An item without origins names its parent (a root type by
name, or a nested type by the ID of the item that holds it) and, in a map, its key; an item
with an origin or a right origin names neither and takes both from that neighbour when it is
integrated (Yrs ``Update::missing_dependency``: from the origin if that one is placed, else from
the right origin). Every map overwrite is such an item. So to know what an update writes
before applying it, a relay must know where each item the update can name already is.

:class:`PlaceIndex` keeps that for one calendar: per client a :class:`engine.clock_runs.ClockRuns`
whose run codes are *place codes* (:func:`place`): an entry number into a table of root entries
(root name and key, one row per item written directly under a root map), the depth below the
entry (:data:`ENTRY`: the entry's own item, :data:`FIELD`: a key of the map the entry holds,
:data:`DEEPER`: anything below that) and the :class:`Field` the item was written under at depth
1 (only the few keys a rule looks at have a code; at depth 2 the depth-1 ancestor's). A
writer's consecutive items in one reservation share a run, so a booking costs two runs. Two
codes are no place: :data:`NOWHERE` (a GC range, or an item Yrs turns into one) and
:data:`MISSING` (an item whose references this index never saw).

It also keeps the items written under each lifecycle mark of each reservation with their
origins (:attr:`PlaceIndex.marks`), which is what deciding whether a mark survives an update
needs (see :mod:`engine.update_policy`), and ``seen``: per client, the clock up to which it has
recorded every item. That is Yrs' state for the client, since each committed transaction's
update holds every struct from the state before it to the state after it: Yrs skips the part
of a struct below it, and a struct above it would be integrated out of order.

:meth:`PlaceIndex.place` places the items of an update that is not applied yet, without
changing the index (:class:`Placement`); :meth:`PlaceIndex.observe` records an update the
document has integrated. Both resolve references inside the update too (a booking's fields name
the map item of the same update), in any order and depth first, so a forward reference to
another client's section or a chain of overwrites costs one pass.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from dataclasses import dataclass, field

from .clock_runs import ClockRuns
from .errors import MalformedMessage
from .model import DECISION_KEYS, LIFECYCLE_MARKS
from .yjs_update import DELETED, GC, Struct, UpdateReader

# Root maps of the layout, by code; other root names get the next codes (up to _MAX_ROOT).
RESERVATIONS, VERDICTS, HOMES, RESOURCES, META = range(5)
LAYOUT_ROOTS = (b"reservations", b"verdicts", b"homes", b"resources", b"meta")
OTHER_ROOTS = 255  # the code every root name past the 250th shares
_MAX_ROOT = OTHER_ROOTS - 1

ENTRY, FIELD, DEEPER = 0, 1, 2
NOWHERE = -1
"""Place code of a GC range and of an item Yrs integrates as one (its parent or neighbours are GC)."""
MISSING = -2
"""Place code of an item that names an item this index has not seen and the update does not hold."""
_PENDING = -3  # codes from here down: an item of the update being placed, waiting for another one
_COMPACT_AFTER = 64  # merge a client's runs again once that many of its items were placed late


class Field(enum.IntEnum):
    """The keys a rule looks at, as the low 6 bits of a place code (the rest are OTHER)."""

    OTHER = 0
    CANCELLED_AT = 1
    CANCEL_REASON = 2
    ENTERED_IN_ERROR_AT = 3
    CHECKED_IN_AT = 4
    FULFILLED_AT = 5
    NOSHOW_AT = 6
    RETIRED = 7  # every one of engine.model.DECISION_KEYS
    NAME = 8
    CAPACITY = 9
    KEYLESS = 63  # list content (no key) inside an entry


MARK_KEYS = (*(key for key, _status in LIFECYCLE_MARKS), "cancel_reason")
"""Lifecycle marks: set once, present while their key is (any value)."""
MARKS = frozenset({Field.CANCELLED_AT, Field.CANCEL_REASON, Field.ENTERED_IN_ERROR_AT, Field.CHECKED_IN_AT,
                   Field.FULFILLED_AT, Field.NOSHOW_AT})
_FIELDS: dict[bytes, int] = {
    **{key.encode(): Field[key.upper()] for key in MARK_KEYS},
    **{key.encode(): Field.RETIRED for key in DECISION_KEYS},
    b"name": Field.NAME,
    b"capacity": Field.CAPACITY,
}
assert set(_FIELDS.values()) >= MARKS


def place(entry: int, depth: int, code: int) -> int:
    """The place code of an item in ``entry`` at ``depth`` under field ``code``."""
    return entry << 8 | depth << 6 | code


def is_free(code: int, entry_roots: bytearray) -> bool:
    """True for a place where every write and delete is allowed: a reservation's request keys
    and what is below them, and no place at all (a GC range). The index does not keep which of
    those items are deleted."""
    if code == NOWHERE:
        return True
    if code < 0 or code & 0xC0 == ENTRY << 6:
        return False
    field = code & 63
    return entry_roots[code >> 8] == RESERVATIONS and (field in (Field.OTHER, Field.KEYLESS)
                                                        or (field in MARKS and code & 0xC0 == DEEPER << 6))


def _record_rest(runs: ClockRuns, start: int, end: int, deleted: bool) -> None:
    """Record the parts of ``[start, end)`` not recorded yet, under the code of the clock before each."""
    clock = start
    while clock < end:
        i = runs.find(clock)
        if i >= 0:
            clock = runs.ends[i]
            continue
        after = bisect_right(runs.starts, clock)
        stop = min(end, runs.starts[after]) if after < len(runs) else end
        runs.add(clock, stop, runs.codes[runs.find(clock - 1)], deleted)
        clock = stop


def _child_place(parent: int, key: bytes | None, fields: dict[bytes, int] = _FIELDS) -> int:
    """The place code of an item written under ``key`` in the type the item at ``parent`` holds."""
    if parent & 0xC0 == ENTRY << 6:
        return (parent & ~0xFF) | FIELD << 6 | (Field.KEYLESS if key is None else fields.get(key, 0))
    return (parent & ~0xC0) | DEEPER << 6


@dataclass(frozen=True, slots=True)
class Place:
    """Where an item is, spelled out (for logs and tests): root name, root entry key (None for
    list content in a root), depth below the entry and the field code."""

    root: str
    key: str | None
    depth: int
    field: int


MarkUnit = tuple[int, int, int, int, int, bool]
"""An item written under a mark: (client, clock, length, origin client, origin clock, has a right
origin); a missing origin is (-1, -1). Clocks after the first have the previous clock as origin."""


@dataclass(slots=True)
class PlainUpdate:
    """The items of an update in the plain grammar (see :mod:`engine.plain_updates`): one client's
    items of length 1 from ``first`` on, with their place codes, the root entries they create
    (numbered from ``entry_base``) and the mark items; ``client`` is -1 when it has no items."""

    client: int
    first: int
    entry_base: int
    codes: list[int] = field(default_factory=list)
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    marks: list[tuple[int, MarkUnit]] = field(default_factory=list)  # (entry << 6 | mark, item)


@dataclass(slots=True)
class Placement:
    """Where the new items of an update not yet applied would go (:meth:`PlaceIndex.place`)."""

    items: list[tuple[Struct, int, int]]  # (struct, first clock Yrs would integrate, place code)
    gaps: list[tuple[int, int]]  # (client, clock): a struct above what the index has of its client
    new: dict[int, ClockRuns]  # client -> the update's new parts, by place code
    entry_base: int  # entry number of the first root entry the update creates
    entries: list[tuple[int, bytes | None]] = field(default_factory=list)  # (root code, key) from entry_base on
    root_names: list[bytes] = field(default_factory=list)  # root names the index lacks, codes from root_base
    root_base: int = 0


class PlaceIndex:
    """The place of every item of one calendar document (see the module docstring).

    Build it from the loaded document's full state, then :meth:`observe` every update the
    document integrates, from any source, in the order applied.
    """

    def __init__(self, state: bytes = b"") -> None:
        """An index of everything in ``state`` (e.g. a replica's full state after loading), or of nothing.

        Raises:
            MalformedMessage: ``state`` is not a Yjs v1 update.
        """
        self.runs: dict[int, ClockRuns] = {}
        self.seen: dict[int, int] = {}  # client -> clock up to which every item is recorded
        self.entry_roots = bytearray()  # entry number -> root code
        self.entry_keys: list[bytes | None] = []  # entry number -> key (None: list content in a root)
        # Keys of the set-once roots -> the entry number of their latest item.
        self.keys: tuple[dict[bytes, int], dict[bytes, int], dict[bytes, int]] = ({}, {}, {})
        self.root_names: list[bytes] = list(LAYOUT_ROOTS)
        self.root_codes: dict[bytes, int] = {name: code for code, name in enumerate(LAYOUT_ROOTS)}
        # (entry << 6 | mark field) -> items written under that mark in that reservation's map.
        self.marks: dict[int, list[MarkUnit]] = {}
        if state:
            self.observe(state)

    def code_at(self, client: int, clock: int) -> int | None:
        """The place code of the recorded item with this ID, or None."""
        runs = self.runs.get(client)
        if runs is None:
            return None
        i = runs.find(clock)
        return runs.codes[i] if i >= 0 else None

    def place_of(self, client: int, clock: int) -> Place | None:
        """Where the recorded item with this ID is; None if it is not recorded or has no place."""
        code = self.code_at(client, clock)
        if code is None or code < 0:
            return None
        entry = code >> 8
        key = self.entry_keys[entry]
        return Place(self.root_name(self.entry_roots[entry]).decode(errors="replace"),
                     None if key is None else key.decode(errors="replace"), (code >> 6) & 3, code & 63)

    def root_of(self, entry: int, placement: Placement | None = None) -> int:
        """The root code of an entry (of the index, or created by ``placement``)."""
        if entry < len(self.entry_roots):
            return self.entry_roots[entry]
        assert placement is not None
        return placement.entries[entry - placement.entry_base][0]

    def key_of(self, entry: int, placement: Placement | None = None) -> bytes | None:
        """The key of an entry (of the index, or created by ``placement``)."""
        if entry < len(self.entry_keys):
            return self.entry_keys[entry]
        assert placement is not None
        return placement.entries[entry - placement.entry_base][1]

    def root_name(self, code: int, placement: Placement | None = None) -> bytes:
        """The name of a root code (``b"?"`` for the shared code of roots past the 250th)."""
        if code == OTHER_ROOTS:
            return b"?"
        if code < len(self.root_names):
            return self.root_names[code]
        assert placement is not None
        return placement.root_names[code - placement.root_base]

    # ---- an update not applied yet --------------------------------------------------------

    def place(self, update: bytes) -> tuple[Placement, list[tuple[int, int, int]]]:
        """Where the items of ``update`` would go, and its delete set; the index is unchanged.

        Only what Yrs would integrate is placed: parts of structs below :attr:`seen` are skipped
        (a struct that straddles it is placed from the clock after, as Yrs does).

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update, or it holds an item Yrs would
                place other than either reading suggests (origins in two places; an item over
                what the index has that names another parent).
        """
        reader = UpdateReader(update)
        placement = Placement([], [], {}, len(self.entry_keys), root_base=len(self.root_names))
        placer = _Placer(self, placement)
        seen, items, new = self.seen, placement.items, placement.new
        runs = ClockRuns()
        current = known = at = -1  # the client of ``runs``, its clock in the index, its clock so far
        parent_client = parent_clock = parent = -1  # as in observe
        for struct in reader.structs():
            client, clock, length, ref, oc, _ok, rc, _rk, root, pc, pk, key, _content = struct
            if client != current:  # one section per client: its structs come in a row
                current = client
                known = at = seen.get(client, 0)
                runs = new[client] = ClockRuns()
            end = clock + length
            if end <= known or not length:  # Yrs has it already, or drops it (empty)
                continue
            if clock > at:  # Yrs would integrate it out of order, after a hole of unknown items
                placement.gaps.append((client, at))
            at = end
            start = clock if clock >= known else known
            if root is None and oc < 0 and rc < 0 and ref != GC and start == clock:  # a key in a nested map, usually
                if pc != parent_client or pk != parent_clock:
                    found = placer.lookup(pc, pk)
                    parent_client, parent_clock, parent = (pc, pk, found) if found is not None and found >= 0 else (-1, -1, -1)
                code = _child_place(parent, key) if parent >= 0 else placer.place(struct, start, len(items))
            else:
                code = placer.place(struct, start, len(items))
            ends = runs.ends
            if ends and start == ends[-1] and runs.codes[-1] == code:
                ends[-1] = end  # inlined ClockRuns.add: the usual case
            else:
                runs.add(start, end, code)
            items.append((struct, start, code))
        placer.resolve_deferred()
        return placement, reader.deletes

    # ---- an update the document integrated --------------------------------------------------

    def observe(self, update: bytes) -> None:
        """Record the items and deletions of an update the document has integrated.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update. The index may then hold part
                of it; rebuild it from the document's full state.
        """
        reader = UpdateReader(update)
        placer = _Placer(self, None)
        all_runs = self.runs
        runs = ClockRuns()
        current = -1  # the client of ``runs``
        # The map item a run of keys was written in (a booking's fields, a decision's keys): one lookup.
        parent_client = parent_clock = parent = -1
        fields = _FIELDS
        for struct in reader.structs():
            client, clock, length, ref, oc, _ok, rc, _rk, root, pc, pk, key, _content = struct
            if not length:
                continue
            if client != current:
                current = client
                if client not in all_runs:
                    all_runs[client] = ClockRuns()
                runs = all_runs[client]
            end = clock + length
            ends = runs.ends
            deleted = ref <= DELETED  # GC or deleted content
            if ends and clock < ends[-1] and runs.find(clock) >= 0:
                # Recorded already: Yrs re-encodes items it integrated out of order, and may
                # have squashed them with the next ones since. Record the rest where its start is.
                _record_rest(runs, clock, end, deleted)
                continue
            if root is None and oc < 0 and rc < 0 and ref != GC:  # a key in a nested map, usually
                if pc != parent_client or pk != parent_clock:
                    found = self.code_at(pc, pk)
                    # Not placed (yet)? Let _Placer say what it is, or wait for it.
                    parent_client, parent_clock, parent = (pc, pk, found) if found is not None and found >= 0 else (-1, -1, -1)
                code = _child_place(parent, key, fields) if parent >= 0 else placer.place(struct, clock)
            else:
                code = placer.place(struct, clock)
            if ends and clock == ends[-1] and runs.codes[-1] == code and runs.deleted[-1] == deleted:
                ends[-1] = end  # inlined ClockRuns.add: the usual case
            else:
                runs.add(clock, end, code, deleted)
            if code & 0xC0 == FIELD << 6 and code & 63 in MARKS:
                self._note_mark(struct, clock, code)
        placer.resolve_deferred()
        for client, clock, length in reader.deletes:
            if client in all_runs:
                runs = all_runs[client]
                for start, end, code in runs.live(clock, clock + length):
                    # Only where a rule looks at deletions: splitting a writer's long run of
                    # request keys would cost a copy of all its runs after it.
                    if not is_free(code, self.entry_roots):
                        runs.delete(start, end)
        for client in reader.spans:
            if client not in all_runs:
                continue
            runs = all_runs[client]
            if placer.patched.get(client, 0) > _COMPACT_AFTER:
                runs.compact()
            self._advance_seen(client)

    def record(self, plan: PlainUpdate) -> None:
        """Record an update :func:`engine.plain_updates.read_plain` read (the document integrated it):
        the cheap :meth:`observe` of a booking, an edit, a cancel, a new verdict."""
        if plan.client < 0:
            return
        assert plan.entry_base == len(self.entry_keys)
        for root, key in plan.entries:
            self._add_entry(root, key)
        if plan.client not in self.runs:
            self.runs[plan.client] = ClockRuns()
        runs = self.runs[plan.client]
        clock = start = plan.first
        codes = plan.codes
        for i, code in enumerate(codes):  # one run per stretch of equal codes
            clock += 1
            if i + 1 == len(codes) or codes[i + 1] != code:
                runs.add(start, clock, code)
                start = clock
        for chain, unit in plan.marks:
            self.marks.setdefault(chain, []).append(unit)
        self._advance_seen(plan.client)

    def _advance_seen(self, client: int) -> None:
        """Move ``seen`` of ``client`` up over the runs recorded from it on."""
        runs = self.runs[client]
        clock = self.seen.get(client, 0)
        i = runs.find(clock)
        while i >= 0:
            clock = runs.ends[i]
            i += 1
            if i == len(runs) or runs.starts[i] != clock:
                break
        self.seen[client] = clock

    def _note_mark(self, struct: Struct, start: int, code: int) -> None:
        """Keep an item written under a lifecycle mark of a reservation, with its origin."""
        if code < 0 or (code >> 6) & 3 != FIELD or (code & 63) not in MARKS or self.entry_roots[code >> 8] != RESERVATIONS:
            return
        client, clock, length = struct[0], struct[1], struct[2]
        origin = (struct[4], struct[5]) if start == clock else (client, start - 1)
        units = self.marks.setdefault((code >> 8) << 6 | (code & 63), [])
        units.append((client, start, clock + length - start, origin[0], origin[1], struct[6] >= 0))

    def _add_entry(self, root: int, key: bytes | None) -> int:
        entry = len(self.entry_keys)
        self.entry_roots.append(root)
        self.entry_keys.append(key)
        if root < 3 and key is not None:
            self.keys[root][key] = entry
        return entry

    def _root_code(self, name: bytes) -> int:
        code = self.root_codes.get(name)
        if code is None:
            code = len(self.root_names) if len(self.root_names) <= _MAX_ROOT else OTHER_ROOTS
            if code != OTHER_ROOTS:
                self.root_names.append(name)
                self.root_codes[name] = code
        return code


class _Placer:
    """Places the structs of one update, for :meth:`PlaceIndex.place` (``placement`` given: the
    index stays as it is) or :meth:`PlaceIndex.observe` (None: entries go straight into the index)."""

    def __init__(self, index: PlaceIndex, placement: Placement | None) -> None:
        self.index = index
        self.placement = placement
        self.deferred: list[tuple[Struct, int, int]] = []  # (struct, start, its position in placement.items)
        self.patched: dict[int, int] = {}  # client -> deferred structs placed later (observe)
        self._final = False
        self._item = -1

    def place(self, struct: Struct, start: int, item: int = -1) -> int:
        """The place code of ``struct`` from clock ``start`` on, or a pending code: in the first
        pass the struct's own (it is deferred; ``item`` is its position in the placement's items),
        in :meth:`resolve_deferred` the code of the deferred struct it waits for."""
        self._item = item
        return self._place(struct, start, self._final)

    def _place(self, struct: Struct, start: int, final: bool) -> int:
        _client, clock, _length, ref, oc, ok, rc, rk, root, pc, pk, key, _content = struct
        if ref == GC:
            return NOWHERE
        if start > clock:  # Yrs cut off the part it has: the rest follows the item before it
            return self._place_remainder(struct, start)
        if oc < 0 and rc < 0:
            if root is not None:
                return place(self._new_entry(self._root_code(root), key), ENTRY, 0)
            parent = self._lookup(pc, pk, final)
            if parent is None or parent <= _PENDING:  # not placed yet
                return self._wait(struct, start, parent)
            return parent if parent < 0 else _child_place(parent, key)
        left = self._lookup(oc, ok, final) if oc >= 0 else NOWHERE
        if left is None or left <= _PENDING:
            return self._wait(struct, start, left)
        right = self._lookup(rc, rk, final) if rc >= 0 else NOWHERE
        if right is None or right <= _PENDING:
            return self._wait(struct, start, right)
        if left == MISSING or right == MISSING:
            return MISSING
        if left >= 0 and right >= 0 and not self._same_place(left, right):
            raise MalformedMessage("not a Yjs update: an item whose origins are in two different places")
        chosen = left if left >= 0 else right
        if chosen >= 0 and (chosen >> 6) & 3 == ENTRY:  # a new item under a root key: a new entry
            entry = chosen >> 8
            return place(self._new_entry(self._root_of(entry), self._key_of(entry)), ENTRY, 0)
        return chosen

    def resolve_deferred(self) -> None:
        """Place the deferred structs, following their references depth first."""
        deferred = self.deferred
        if not deferred:
            return
        self._final = True
        done = [False] * len(deferred)
        busy = [False] * len(deferred)
        for first in range(len(deferred)):
            stack = [first]
            while stack:
                j = stack[-1]
                if done[j]:
                    stack.pop()
                    continue
                busy[j] = True
                struct, start, _item = deferred[j]
                code = self._place(struct, start, True)
                if code <= _PENDING:
                    waiting = _PENDING - code
                    if not busy[waiting]:
                        stack.append(waiting)
                        continue
                    code = MISSING  # a cycle: Yrs can integrate none of it
                self._settle(j, code)
                done[j] = True
                stack.pop()

    # ---- internals ----------------------------------------------------------------------------

    def lookup(self, client: int, clock: int) -> int | None:
        """The place code of the item with this ID, if it is recorded or placed already (see :meth:`_lookup`)."""
        return self._lookup(client, clock, False)

    def _lookup(self, client: int, clock: int, final: bool) -> int | None:
        """The place code of the item with this ID: recorded, or placed from this update
        (possibly pending); None if not (yet) found, MISSING if not found in a final pass."""
        index = self.index
        placement = self.placement
        if placement is not None and clock >= index.seen.get(client, 0):
            runs = placement.new.get(client)
        else:
            runs = index.runs.get(client)
        if runs is not None:
            i = runs.find(clock)
            if i >= 0:
                return runs.codes[i]
        return MISSING if final else None

    def _wait(self, struct: Struct, start: int, found: int | None) -> int:
        """What to return for a struct that names one not placed yet (``found``: None, or its
        pending code): in the first pass, defer the struct; in the final pass, whom it waits for."""
        if self._final:
            assert found is not None
            return found
        self.deferred.append((struct, start, self._item))
        return _PENDING - (len(self.deferred) - 1)

    def _settle(self, j: int, code: int) -> None:
        """Give deferred struct ``j`` its place code wherever it was recorded."""
        struct, start, item = self.deferred[j]
        client = struct[0]
        placement = self.placement
        if placement is not None:
            placement.new[client].set_code(start, code)
            placement.items[item] = (struct, start, code)
        else:
            self.index.runs[client].set_code(start, code)
            self.patched[client] = self.patched.get(client, 0) + 1
            if code >= 0:
                self.index._note_mark(struct, start, code)

    def _place_remainder(self, struct: Struct, start: int) -> int:
        """The place of the part of a struct above what the index has. Yrs gives it the item
        before as origin, so it goes where that item is; an item without origins keeps its own
        parent though (and takes the key from that item): refuse one that names another."""
        client, _clock, _length, _ref, oc, _ok, rc, _rk, root, pc, pk, key, _content = struct
        left = self._lookup(client, start - 1, True)
        if left is None or left < 0:
            return NOWHERE if left == NOWHERE else MISSING
        if oc < 0 and rc < 0:
            if root is not None:
                entry = left >> 8
                same = (left >> 6) & 3 == ENTRY and self._root_of(entry) == self._root_code(root) \
                    and self._key_of(entry) == key
            else:
                parent = self._lookup(pc, pk, True)
                same = parent is not None and parent >= 0 and _child_place(parent, key) == left
            if not same:
                raise MalformedMessage("not a Yjs update: an item over what the calendar has names another parent")
        return left

    def _same_place(self, a: int, b: int) -> bool:
        if a == b:
            return True
        if (a >> 6) & 3 == ENTRY and (b >> 6) & 3 == ENTRY:
            return (self._root_of(a >> 8), self._key_of(a >> 8)) == (self._root_of(b >> 8), self._key_of(b >> 8))
        return False

    def _root_of(self, entry: int) -> int:
        return self.index.root_of(entry, self.placement)

    def _key_of(self, entry: int) -> bytes | None:
        return self.index.key_of(entry, self.placement)

    def _new_entry(self, root: int, key: bytes | None) -> int:
        placement = self.placement
        if placement is None:
            return self.index._add_entry(root, key)
        placement.entries.append((root, key))
        return placement.entry_base + len(placement.entries) - 1

    def _root_code(self, name: bytes) -> int:
        index, placement = self.index, self.placement
        code = index.root_codes.get(name)
        if code is not None:
            return code
        if placement is None:
            return index._root_code(name)
        if name in placement.root_names:
            return placement.root_base + placement.root_names.index(name)
        if placement.root_base + len(placement.root_names) > _MAX_ROOT:
            return OTHER_ROOTS
        placement.root_names.append(name)
        return placement.root_base + len(placement.root_names) - 1
