"""The common updates a relay can pass after a quick look: bookings, edits, cancels, new verdicts.

:func:`read_plain` is the cheap pre-check in front of
:meth:`engine.update_policy.UpdatePolicy.violations`, and the cheap path of
:meth:`engine.update_policy.UpdatePolicy.observe`. It reads an update in one tight pass and
gives a :class:`engine.item_places.PlainUpdate` only for a narrow grammar whose every sentence
the full rules allow; anything outside it (or anything it is unsure of) gives None, which means
"run the full check", never "refuse":

- at most one struct section, starting exactly at the clock the index has for its client (no
  part Yrs would skip, no gap);
- items that are either a new root entry (a reservation's map, or a string under a new key of
  ``verdicts`` or ``homes``), a key of a map that the same update created or that is a
  reservation in the index (a request key, or a mark no item was written under yet), or an
  overwrite (an origin, no right origin) of an item whose place is free (a request key) or a
  reservation's mark;
- values that are one string, or a new map;
- a delete set inside what the index has, covering only free places.

Each of those is allowed by the rules: a new key in a set-once root, request keys, the first
item of a mark, an overwrite that leaves a mark's key present (the new item is live, and the
delete set touches no mark), deletions of request keys. The grammar is strict (one section,
canonical shapes), so what it accepts the full reader reads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .item_places import PlaceIndex
from .lib0 import ANY_STRING, read_var_uint
from .place_codes import ENTRY, FIELD, FIELD_CODES, MARKS, RESERVATIONS, Field, MarkUnit, is_free, place
from .protocol import write_var_uint
from .yjs_update import read_id

_MAX_CLOCK = 0xFFFFFFFF
PLAIN_FIELD_BYTES = 128  # longest value of a reservation field the grammar passes (the shortest field limit)
PLAIN_KEY_BYTES = 255  # longest root entry key it passes (update_policy.MAX_ENTRY_KEY_BYTES)
PLAIN_ENTRY_BYTES = 4096  # longest verdict or home record it passes (update_policy.MAX_ENTRY_BYTES)
_ROOTS = {b"reservations": 0, b"verdicts": 1, b"homes": 2}  # the set-once roots, by code
_MAP_ITEM = 0x27  # a map item written under a key without origins: ContentType, parentSub flag
_VALUE_ITEM = 0x28  # a value written under a key without origins: ContentAny, parentSub flag
_OVERWRITE_ITEMS = (0x88, 0xA8)  # ContentAny with an origin (Yjs also sets the parentSub flag)
_MAP_TYPE = 1


@dataclass(slots=True)
class PlainUpdate:
    """The items of an update in the plain grammar (see the module docstring): one client's
    items of length 1 from ``first`` on, with their place codes, the root entries they create
    (numbered from ``entry_base``) and the mark items; ``client`` is -1 when it has no items."""

    client: int
    first: int
    entry_base: int
    codes: list[int] = field(default_factory=list)
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    marks: list[tuple[int, MarkUnit]] = field(default_factory=list)  # (entry << 6 | mark, item)



def read_plain(index: PlaceIndex, data: bytes) -> PlainUpdate | None:
    """The update's items if ``data`` is in the grammar of the module docstring (so it breaks
    no rule), else None. Never raises: bytes it cannot read give None."""
    try:
        return _read(index, data)
    except (IndexError, OverflowError):
        return None


def _read(index: PlaceIndex, data: bytes) -> PlainUpdate | None:
    seen, keys, marks = index.seen, index.keys, index.marks
    sections = data[0]
    if sections > 1:
        return None
    pos = 1
    plan = PlainUpdate(-1, 0, len(index.entry_keys))
    if sections:
        count, pos = read_var_uint(data, pos)
        start = pos
        client, pos = read_var_uint(data, pos)
        own = data[start:pos]
        first, pos = read_var_uint(data, pos)
        if first != seen.get(client, 0) or first + count > _MAX_CLOCK:
            return None
        if count:
            plan.client, plan.first = client, first
        codes, entries = plan.codes, plan.entries
        new_entries: dict[int, int] = {}  # clock of a map item this update creates -> its place code
        # A booking's fields name the map item just before them: their parent info, as bytes.
        booking = b"\xff"
        booking_code = skip = 0
        size = len(data)
        fields, add = FIELD_CODES, codes.append
        for clock in range(first, first + count):
            info = data[pos]
            pos += 1
            if info == _VALUE_ITEM and data.startswith(booking, pos) and data[pos + skip] < 0x80:
                pos += skip + 1  # inlined below: the key, and one short string
                key = data[pos : pos + data[pos - 1]]
                pos += len(key)
                field = fields.get(key, 0)
                if data[pos] != 1 or data[pos + 1] != ANY_STRING or data[pos + 2] >= 0x80:
                    return None
                if field:
                    if field == Field.RETIRED:
                        return None
                    if field in MARKS:
                        plan.marks.append(((booking_code >> 8) << 6 | field, (client, clock, 1, -1, -1, False)))
                pos += 3 + data[pos + 2]
                if pos > size:
                    return None
                add(booking_code | field)
                continue
            if info in (_MAP_ITEM, _VALUE_ITEM):
                parent_info = data[pos]
                pos += 1
                longest = PLAIN_ENTRY_BYTES if parent_info == 1 else PLAIN_FIELD_BYTES
                if parent_info == 1:  # a root entry
                    name, pos = _read_bytes(data, pos)
                    key, pos = _read_bytes(data, pos)
                    if len(key) > PLAIN_KEY_BYTES:
                        return None
                    root = _ROOTS.get(name, -1)
                    if root < 0 or key in keys[root] or (root, key) in entries:
                        return None
                    if (info == _MAP_ITEM) != (root == RESERVATIONS):  # reservations hold maps, the others strings
                        return None
                    code = place(plan.entry_base + len(entries), ENTRY, 0)
                    entries.append((root, key))
                    if info == _MAP_ITEM:
                        new_entries[clock] = code
                        booking = b"\x00" + own + write_var_uint(clock)
                        booking_code, skip = code | FIELD << 6, len(booking)
                elif parent_info == 0 and info == _VALUE_ITEM:  # a key of a nested map
                    parent_client, parent_clock, pos = read_id(data, pos, own, client)
                    key, pos = _read_bytes(data, pos)
                    if len(key) > PLAIN_FIELD_BYTES - 1:
                        return None
                    field = FIELD_CODES.get(key, Field.OTHER)
                    if field == Field.RETIRED:
                        return None
                    if parent_client == client and parent_clock in new_entries:  # a reservation it books
                        entry = new_entries[parent_clock] >> 8
                        if field in MARKS:
                            plan.marks.append((entry << 6 | field, (client, clock, 1, -1, -1, False)))
                        code = place(entry, FIELD, field)
                    elif parent_clock < seen.get(parent_client, 0):  # a reservation in the index
                        parent = _code_at(index, parent_client, parent_clock)
                        if parent < 0 or parent & 0xC0 != ENTRY << 6 or index.entry_roots[parent >> 8] != RESERVATIONS:
                            return None
                        chain = (parent >> 8) << 6 | field
                        if field in MARKS:
                            if chain in marks:
                                return None  # a mark was written there before: the full rules decide
                            plan.marks.append((chain, (client, clock, 1, -1, -1, False)))
                        code = place(parent >> 8, FIELD, field)
                    else:
                        return None
                else:
                    return None
            elif info in _OVERWRITE_ITEMS:
                longest = PLAIN_FIELD_BYTES
                origin_client, origin_clock, pos = read_id(data, pos, own, client)
                if origin_clock >= seen.get(origin_client, 0):
                    return None
                code = _code_at(index, origin_client, origin_clock)
                if code >= 0 and code & 0xC0 == FIELD << 6 and code & 63 in MARKS \
                        and index.entry_roots[code >> 8] == RESERVATIONS:
                    plan.marks.append(((code >> 8) << 6 | (code & 63),
                                       (client, clock, 1, origin_client, origin_clock, False)))
                elif not is_free(code, index.entry_roots):
                    return None
            else:
                return None
            pos = _skip_value(data, pos, info == _MAP_ITEM, longest)
            if pos < 0:
                return None
            codes.append(code)
    return plan if _deletes_are_free(index, data, pos) else None


def _code_at(index: PlaceIndex, client: int, clock: int) -> int:
    """The place code of a recorded item (the caller checked it is below ``seen``); -2 if absent."""
    runs = index.runs[client]
    i = runs.find(clock)
    return runs.codes[i] if i >= 0 else -2


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length = data[pos]
    if length >= 0x80:
        length, pos = read_var_uint(data, pos)
    else:
        pos += 1
    end = pos + length
    if end > len(data):
        raise IndexError
    return data[pos:end], end


def _skip_value(data: bytes, pos: int, is_map: bool, longest: int) -> int:
    """The position after a map's content or a one-string value of at most ``longest`` bytes;
    -1 for any other content (the full rules judge longer values by their field's limit)."""
    if is_map:
        return pos + 1 if data[pos] == _MAP_TYPE else -1
    if data[pos] != 1 or data[pos + 1] != ANY_STRING:
        return -1
    length, pos = read_var_uint(data, pos + 2)
    if length > longest:
        return -1
    pos += length
    if pos > len(data):
        raise IndexError
    return pos


def _deletes_are_free(index: PlaceIndex, data: bytes, pos: int) -> bool:
    """The delete set at ``pos`` lies inside what the index has and covers only free places,
    and nothing follows it."""
    seen, runs, entry_roots = index.seen, index.runs, index.entry_roots
    clients, pos = read_var_uint(data, pos)
    for _ in range(clients):
        client, pos = read_var_uint(data, pos)
        ranges, pos = read_var_uint(data, pos)
        known = seen.get(client, 0)
        for _ in range(ranges):
            clock, pos = read_var_uint(data, pos)
            length, pos = read_var_uint(data, pos)
            if clock + length > known or not length:
                return False
            client_runs = runs[client]
            i = client_runs.find(clock)
            if i >= 0 and clock + length <= client_runs.ends[i]:  # inside one run: the usual case
                if not is_free(client_runs.codes[i], entry_roots) and not client_runs.deleted[i]:
                    return False
                continue
            for _start, _end, code in client_runs.live(clock, clock + length):
                if not is_free(code, entry_roots):
                    return False
    return pos == len(data)
