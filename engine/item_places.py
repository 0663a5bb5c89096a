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
whose run codes are place codes (:mod:`engine.place_codes`: root entry, depth below it, and the
key that matters), plus the table of root entries (root name and key, one row per item written
directly under a root map). A writer's consecutive items in one reservation share a run, so a
booking costs two runs. Deletions are kept only where a rule looks at them: splitting a writer's
long run of request keys for each overwritten note would cost a copy of all its runs after it.

It also keeps the items written under each lifecycle mark of each reservation with their
origins (:attr:`PlaceIndex.marks`), which is what deciding whether a mark survives an update
needs (see :mod:`engine.map_order`), and ``seen``: per client, the clock up to which it has
recorded every item. That is Yrs' state for the client, since each committed transaction's
update holds every struct from the state before it to the state after it: Yrs skips the part
of a struct below it, and a struct above it would be integrated out of order.

:meth:`PlaceIndex.place` places the items of an update that is not applied yet, without
changing the index (a :class:`engine.placement.Placement`); :meth:`PlaceIndex.observe` records
an update the document has integrated, and :meth:`PlaceIndex.record` one that
:mod:`engine.plain_updates` read already. The first two work through :class:`engine.placement.Placer`.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from .clock_runs import ClockRuns
from .place_codes import (
    FIELD,
    FIELD_CODES,
    LAYOUT_ROOTS,
    MARKS,
    MAX_ROOT,
    OTHER_ROOTS,
    RESERVATIONS,
    SET_ONCE_ROOTS,
    MarkUnit,
    Place,
    child_place,
    is_free,
)
from .placement import Placement, Placer
from .yjs_update import DELETED, GC, Struct, UpdateReader

if TYPE_CHECKING:
    from .plain_updates import PlainUpdate

_COMPACT_AFTER = 64  # merge a client's runs again once that many of its items were placed late


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
        self.keys: dict[int, dict[bytes, int]] = {root: {} for root in SET_ONCE_ROOTS}
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
        placer = Placer(self, placement)
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
                code = child_place(parent, key) if parent >= 0 else placer.place(struct, start, len(items))
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
        placer = Placer(self, None)
        all_runs = self.runs
        runs = ClockRuns()
        current = -1  # the client of ``runs``
        # The map item a run of keys was written in (a booking's fields, a decision's keys): one lookup.
        parent_client = parent_clock = parent = -1
        fields = FIELD_CODES
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
                code = child_place(parent, key, fields) if parent >= 0 else placer.place(struct, clock)
            else:
                code = placer.place(struct, clock)
            if ends and clock == ends[-1] and runs.codes[-1] == code and runs.deleted[-1] == deleted:
                ends[-1] = end  # inlined ClockRuns.add: the usual case
            else:
                runs.add(clock, end, code, deleted)
            if code & 0xC0 == FIELD << 6 and code & 63 in MARKS:
                self.note_mark(struct, clock, code)
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
            self.add_entry(root, key)
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

    def note_mark(self, struct: Struct, start: int, code: int) -> None:
        """Keep an item written under a lifecycle mark of a reservation, with its origin."""
        if code < 0 or (code >> 6) & 3 != FIELD or (code & 63) not in MARKS or self.entry_roots[code >> 8] != RESERVATIONS:
            return
        client, clock, length = struct[0], struct[1], struct[2]
        origin = (struct[4], struct[5]) if start == clock else (client, start - 1)
        units = self.marks.setdefault((code >> 8) << 6 | (code & 63), [])
        units.append((client, start, clock + length - start, origin[0], origin[1], struct[6] >= 0))

    def add_entry(self, root: int, key: bytes | None) -> int:
        entry = len(self.entry_keys)
        self.entry_roots.append(root)
        self.entry_keys.append(key)
        if key is not None and root in SET_ONCE_ROOTS:
            self.keys[root][key] = entry
        return entry

    def root_code(self, name: bytes) -> int:
        code = self.root_codes.get(name)
        if code is None:
            code = len(self.root_names) if len(self.root_names) <= MAX_ROOT else OTHER_ROOTS
            if code != OTHER_ROOTS:
                self.root_names.append(name)
                self.root_codes[name] = code
        return code


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
