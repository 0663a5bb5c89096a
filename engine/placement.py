"""Placing the structs of one update: where each of its items goes, references inside it included.

:class:`Placer` works for :class:`engine.item_places.PlaceIndex`: for an update not applied yet
(:meth:`PlaceIndex.place`, into a :class:`Placement`; the index stays as it is) and for one the
document integrated (:meth:`PlaceIndex.observe`; new root entries go straight into the index).
An item's references may name items of the same update (a booking's fields name the map item
of the same update) in any order: a struct whose reference is not placed yet is deferred and
placed after the pass, depth first, so a forward reference to another client's section or a
chain of overwrites costs one more look, and a cycle (which Yrs cannot integrate) is MISSING.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .clock_runs import ClockRuns
from .errors import MalformedMessage
from .place_codes import ENTRY, MAX_ROOT, MISSING, NOWHERE, OTHER_ROOTS, child_place, place
from .yjs_update import GC, Struct

if TYPE_CHECKING:
    from .item_places import PlaceIndex

PENDING = -3
"""Codes from here down: an item of the update being placed, waiting for another one."""


@dataclass(slots=True)
class Placement:
    """Where the new items of an update not yet applied would go (:meth:`engine.item_places.PlaceIndex.place`)."""

    items: list[tuple[Struct, int, int]]  # (struct, first clock Yrs would integrate, place code)
    gaps: list[tuple[int, int]]  # (client, clock): a struct above what the index has of its client
    new: dict[int, ClockRuns]  # client -> the update's new parts, by place code
    entry_base: int  # entry number of the first root entry the update creates
    entries: list[tuple[int, bytes | None]] = field(default_factory=list)  # (root code, key) from entry_base on
    root_names: list[bytes] = field(default_factory=list)  # root names the index lacks, codes from root_base
    root_base: int = 0



class Placer:
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
            if parent is None or parent <= PENDING:  # not placed yet
                return self._wait(struct, start, parent)
            return parent if parent < 0 else child_place(parent, key)
        left = self._lookup(oc, ok, final) if oc >= 0 else NOWHERE
        if left is None or left <= PENDING:
            return self._wait(struct, start, left)
        right = self._lookup(rc, rk, final) if rc >= 0 else NOWHERE
        if right is None or right <= PENDING:
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
                if code <= PENDING:
                    waiting = PENDING - code
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
        return PENDING - (len(self.deferred) - 1)

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
                self.index.note_mark(struct, start, code)

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
                same = parent is not None and parent >= 0 and child_place(parent, key) == left
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
            return self.index.add_entry(root, key)
        placement.entries.append((root, key))
        return placement.entry_base + len(placement.entries) - 1

    def _root_code(self, name: bytes) -> int:
        index, placement = self.index, self.placement
        code = index.root_codes.get(name)
        if code is not None:
            return code
        if placement is None:
            return index.root_code(name)
        if name in placement.root_names:
            return placement.root_base + placement.root_names.index(name)
        if placement.root_base + len(placement.root_names) > MAX_ROOT:
            return OTHER_ROOTS
        placement.root_names.append(name)
        return placement.root_base + len(placement.root_names) - 1
