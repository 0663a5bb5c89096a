"""Place codes: where an item of a calendar document is, packed into one int.

A place code (:func:`place`) is ``entry << 8 | depth << 6 | field``: the number of the root entry
the item belongs to (a row of :class:`engine.item_places.PlaceIndex`'s table of ``(root, key)``),
its depth below that entry (:data:`ENTRY`: the entry's own item, the one written directly under
a root map; :data:`FIELD`: a key of the map the entry holds; :data:`DEEPER`: anything below), and
at depth 1 the :class:`Field` it was written under (at depth 2, its depth-1 ancestor's). Only the
keys a rule looks at have a field code, so a writer's consecutive items in one reservation share
one code. Negative codes are no place: :data:`NOWHERE` and :data:`MISSING`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .model import DECISION_KEYS, LIFECYCLE_MARKS

# Root maps of the layout, by code; other root names get the next codes (up to MAX_ROOT).
RESERVATIONS, VERDICTS, HOMES, RESOURCES, META, RECEIPTS = range(6)
LAYOUT_ROOTS = (b"reservations", b"verdicts", b"homes", b"resources", b"meta", b"receipts")
SET_ONCE_ROOTS = frozenset({RESERVATIONS, VERDICTS, HOMES, RECEIPTS})
"""Roots whose entries are written once and never deleted."""
OTHER_ROOTS = 255  # the code every root name past the 250th shares
MAX_ROOT = OTHER_ROOTS - 1

ENTRY, FIELD, DEEPER = 0, 1, 2
NOWHERE = -1
"""Place code of a GC range and of an item Yrs integrates as one (its parent or neighbours are GC)."""
MISSING = -2
"""Place code of an item that names an item this index has not seen and the update does not hold."""


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
FIELD_CODES: dict[bytes, int] = {
    **{key.encode(): Field[key.upper()] for key in MARK_KEYS},
    **{key.encode(): Field.RETIRED for key in DECISION_KEYS},
    b"name": Field.NAME,
    b"capacity": Field.CAPACITY,
}
assert set(FIELD_CODES.values()) >= MARKS


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


def child_place(parent: int, key: bytes | None, fields: dict[bytes, int] = FIELD_CODES) -> int:
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
