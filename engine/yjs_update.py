"""Scanning a Yjs v1 update without applying it: the items that may write watched map keys, and the delete set.

A Yjs update (v1 encoding, lib0 varints) is a list of *structs* per client followed by a
*delete set*. A map entry is an *item* whose ``parentSub`` is the key; only the first item ever
written under a key carries it, later ones point at the item they replace through their origin
IDs (see :mod:`engine.update_keys`). :func:`scan_update` walks the structs once, decoding only
what that question needs: each item that carries a watched key or has an origin becomes a
*candidate*, and it keeps the clock span of every client and the deleted ranges. It refuses
every construct Yjs and Yrs read differently (legacy JSON content, XML hooks, 5-bit content
refs, odd parent infos) and trailing bytes, so that what it did not flag cannot be read by Yrs
as something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import MalformedMessage
from .lib0 import ANY_STRING, read_var_bytes, read_var_string, read_var_uint, skip_any, skip_var_bytes, skip_varint

INHERITS = -1
"""Key code of a candidate that has an origin: it writes the key its origins were written under."""

Candidate = tuple[int, int, int, int, int, int, int, int]
"""(client, clock, length, key code, origin client, origin clock, right client, right clock);
a missing origin is (-1, -1). A plain tuple, since a full state holds one per map entry."""

# Content refs (low 5 bits of the info byte), from Yjs ``contentRefs``.
_GC, _DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
# Type refs both Yjs and Yrs read alike: array, map, text, XML element (+ name), fragment, XML text.
# Yjs reads a name after an XML hook (5) and Yrs does not; Yrs alone knows 7, 9 and 15.
_TYPE_REFS = frozenset({0, 1, 2, 3, 4, 6})
_XML_ELEMENT = 3
_MAX_CLOCK = 0xFFFFFFFF  # Yrs reads clocks and lengths as u32
_NOT_WATCHED: Mapping[bytes, int] = {}


@dataclass(frozen=True, slots=True)
class WatchedKeys:
    """The map keys a scan reports, each as a positive key code (0 means not watched)."""

    nested: Mapping[bytes, int]  # keys of maps nested in another type (e.g. each reservation)
    roots: Mapping[bytes, Mapping[bytes, int]]  # keys of root maps, by root name


@dataclass(slots=True)
class UpdateScan:
    """What :func:`scan_update` keeps of one update."""

    # Items that write a watched key directly (a positive code) or may inherit one (INHERITS).
    candidates: list[Candidate]
    starts: dict[int, int]  # client -> clock of its first struct in this update
    ends: dict[int, int]  # client -> clock after its last struct
    deletes: list[tuple[int, int, int]]  # (client, clock, length)

    def spans(self, client: int, clock: int) -> bool:
        """True if this update has structs of ``client`` from before ``clock`` to after it."""
        return self.starts.get(client, clock + 1) <= clock < self.ends.get(client, 0)


def scan_update(data: bytes, keys: WatchedKeys) -> UpdateScan:
    """Decode a Yjs v1 update far enough to know which items may write the watched ``keys``.

    Raises:
        MalformedMessage: truncated, trailing or garbage bytes, or a construct Yjs and Yrs read
            differently; refuse the update.
    """
    scan = UpdateScan([], {}, {}, [])
    try:
        pos = _scan_structs(data, keys, scan)
        pos = _scan_delete_set(data, pos, scan.deletes)
    except (IndexError, UnicodeDecodeError):
        raise MalformedMessage(f"not a Yjs update: truncated or garbage ({len(data)} bytes)") from None
    except OverflowError:
        raise MalformedMessage("not a Yjs update: varint longer than 64 bits") from None
    except ValueError as exc:  # lib0.skip_any: an unknown value type
        raise MalformedMessage(f"not a Yjs update: {exc}") from None
    if pos != len(data):
        raise MalformedMessage(f"not a Yjs update: {len(data) - pos} unexpected bytes after the delete set")
    return scan


def _scan_structs(data: bytes, keys: WatchedKeys, scan: UpdateScan) -> int:
    """Scan the struct sections (one per client) into ``scan``; returns the position after them."""
    starts, ends, candidates = scan.starts, scan.ends, scan.candidates
    sections, pos = read_var_uint(data, 0)
    for _ in range(sections):
        count, pos = read_var_uint(data, pos)
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        if count and clock < starts.get(client, clock + 1):
            starts[client] = clock
        pos, clock = _scan_items(data, pos, count, client, clock, keys, candidates)
        if clock > _MAX_CLOCK:
            raise MalformedMessage("not a Yjs update: clock out of range")
        if count and clock > ends.get(client, 0):
            ends[client] = clock
    return pos


def _scan_items(
    data: bytes, pos: int, count: int, client: int, clock: int, keys: WatchedKeys, candidates: list[Candidate]
) -> tuple[int, int]:
    """Scan ``count`` structs of ``client`` from ``clock``; returns the position and clock after them."""
    nested = keys.nested
    size = len(data)
    for _ in range(count):
        info = data[pos]
        pos += 1
        # Yrs (which applies the update) tells GC and Skip by the whole byte and masks content
        # refs with 4 bits, Yjs with 5: accept only what both read the same way.
        if info in (_GC, _SKIP):
            length, pos = read_var_uint(data, pos)
            clock += length
            continue
        ref = info & 0x1F
        if not _DELETED <= ref <= _DOC or ref == _JSON:
            # Yrs reads legacy JSON content with one string more than Yjs writes: refuse it.
            raise MalformedMessage(f"not a Yjs update: unsupported content type {ref}")
        code = 0
        oc = ok = rc = rk = -1
        if info & 0xC0:  # an origin (left) or right origin ID, or both: the item inherits its key
            code = INHERITS
            if info & 0x80:
                oc, pos = read_var_uint(data, pos)
                ok, pos = read_var_uint(data, pos)
            if info & 0x40:
                rc, pos = read_var_uint(data, pos)
                rk, pos = read_var_uint(data, pos)
        else:  # no origin: the item names its parent (and its key, in a map)
            if data[pos] == 0:  # a nested type, by the ID of its item: skip the ID
                pos = skip_varint(data, skip_varint(data, pos + 1))
                codes = nested
            else:
                codes, pos = _read_root_parent(data, pos, keys)
            if info & 0x20:
                length = data[pos]
                if length < 0x80:  # inlined read_var_bytes: a short key
                    pos += 1 + length
                    if pos > size:
                        raise IndexError
                    key = data[pos - length : pos]
                else:
                    key, pos = read_var_bytes(data, pos)
                code = codes.get(key, 0)
        if ref == _ANY and data[pos] == 1 and data[pos + 1] == ANY_STRING and data[pos + 2] < 0x80:
            pos += 3 + data[pos + 2]  # inlined _skip_content: one short string, the usual map value
            if pos > size:
                raise IndexError
            length = 1
        else:
            pos, length = _skip_content(data, pos, ref)
        if code:
            if ok > _MAX_CLOCK or rk > _MAX_CLOCK:
                raise MalformedMessage("not a Yjs update: origin clock out of range")
            candidates.append((client, clock, length, code, oc, ok, rc, rk))
        clock += length
    return pos, clock


def _read_root_parent(data: bytes, pos: int, keys: WatchedKeys) -> tuple[Mapping[bytes, int], int]:
    """The watched keys of the root type named at ``pos`` (parent info 1, then the name), and the position after it."""
    parent_info = data[pos]
    if parent_info != 1:
        raise MalformedMessage(f"not a Yjs update: parent info {parent_info}")
    root, pos = read_var_bytes(data, pos + 1)
    return keys.roots.get(root, _NOT_WATCHED), pos


def _skip_content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """Skip an item's content: the position after it and its length in clock units."""
    if ref == _ANY:  # map values and array elements
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = skip_any(data, pos)
        return pos, count
    if ref == _STRING:
        text, pos = read_var_string(data, pos)
        return pos, len(text.encode("utf-16-le")) // 2  # Yjs counts UTF-16 code units
    if ref == _DELETED:
        length, pos = read_var_uint(data, pos)
        return pos, length
    if ref == _TYPE:
        type_ref, pos = read_var_uint(data, pos)
        if type_ref not in _TYPE_REFS:
            raise MalformedMessage(f"not a Yjs update: unsupported shared type {type_ref}")
        return (skip_var_bytes(data, pos) if type_ref == _XML_ELEMENT else pos), 1
    if ref in (_BINARY, _EMBED):
        return skip_var_bytes(data, pos), 1
    if ref == _FORMAT:  # key, value
        return skip_var_bytes(data, skip_var_bytes(data, pos)), 1
    # _DOC: guid, options
    return skip_any(data, skip_var_bytes(data, pos)), 1


def _scan_delete_set(data: bytes, pos: int, deletes: list[tuple[int, int, int]]) -> int:
    """Read the delete set at ``pos`` into ``deletes``; returns the position after it."""
    clients, pos = read_var_uint(data, pos)
    for _ in range(clients):
        client, pos = read_var_uint(data, pos)
        ranges, pos = read_var_uint(data, pos)
        for _ in range(ranges):
            clock, pos = read_var_uint(data, pos)
            length, pos = read_var_uint(data, pos)
            if clock + length > _MAX_CLOCK:
                raise MalformedMessage("not a Yjs update: deleted range out of range")
            deletes.append((client, clock, length))
    return pos
