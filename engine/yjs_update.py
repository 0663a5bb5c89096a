"""Reading a Yjs v1 update without applying it: every struct, its references, and the delete set.

A Yjs update (v1 encoding, lib0 varints) is a list of *structs* per client followed by a
*delete set*. An *item* names where it goes in one of two ways (Yjs ``Item.write``): an item
with an ``origin`` (the item to its left when it was written) or a ``rightOrigin`` carries no
parent and no key, and Yjs and Yrs take both from those neighbours when they integrate it; an
item with neither names its parent (a root type by name, or a nested type by the ID of the
item holding it) and, in a map, its key (``parentSub``). So a map entry's key is written only
by the first item ever written under it; an overwrite points at the item it replaces.

:class:`UpdateReader` walks the structs once and yields each item and GC range as a
:data:`Struct` tuple, decoding references but not content (it keeps where the content starts,
for the few values a caller wants to read); it then reads the delete set. It refuses every
construct Yjs and Yrs read differently (legacy JSON content, XML hooks, 5-bit content refs, odd
parent infos, two sections for one client) or that no encoder writes and Yrs would mishandle (a
reference to a clock of the item's own client at or after the item), and trailing bytes, so that
what a caller judged cannot be read by Yrs as something else.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import MalformedMessage
from .lib0 import ANY_STRING, read_var_bytes, read_var_string, read_var_uint, skip_any, skip_var_bytes

# Content refs (low 5 bits of the info byte), from Yjs ``contentRefs``. GC is also the struct
# kind of a GC range in a :data:`Struct`.
GC, DELETED, _JSON, BINARY, STRING, EMBED, FORMAT, TYPE, ANY, DOC, _SKIP = range(11)
# Type refs both Yjs and Yrs read alike: array, map, text, XML element (+ name), fragment, XML text.
# Yjs reads a name after an XML hook (5) and Yrs does not; Yrs alone knows 7, 9 and 15.
_TYPE_REFS = frozenset({0, 1, 2, 3, 4, 6})
MAP_TYPE = 1
_XML_ELEMENT = 3
_MAX_CLOCK = 0xFFFFFFFF  # Yrs reads clocks and lengths as u32

Struct = tuple[int, int, int, int, int, int, int, int, bytes | None, int, int, bytes | None, int]
"""One item or GC range: ``(client, clock, length, content ref, origin client, origin clock,
right client, right clock, root name, parent client, parent clock, key, content position)``.

A missing origin, right origin or parent ID is ``(-1, -1)``. ``root name`` is set for an item
without origins whose parent is a root type, ``parent client``/``parent clock`` for one whose
parent is a nested type; ``key`` is the map key of an item without origins (None in a list).
A GC range has content ref :data:`GC` and nothing else. A plain tuple: a full state holds one
struct per map entry."""

class UpdateReader:
    """One pass over a Yjs v1 update: iterate :meth:`structs`, then read :attr:`deletes`.

    Attributes (complete once :meth:`structs` is exhausted):
        deletes: the delete set, as ``(client, clock, length)`` ranges.
        spans: client -> ``(clock of its first struct, clock after its last)``, skips included.
    """

    __slots__ = ("data", "deletes", "spans")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.deletes: list[tuple[int, int, int]] = []
        self.spans: dict[int, tuple[int, int]] = {}  # only clients with at least one struct

    def structs(self) -> Iterator[Struct]:
        """Every item and GC range, in the update's order (per client, by clock).

        Raises:
            MalformedMessage: truncated, trailing or garbage bytes, or a construct Yjs and Yrs
                read differently; refuse the update.
        """
        data = self.data
        size = len(data)
        try:
            sections, pos = read_var_uint(data, 0)
            clients: set[int] = set()
            for _ in range(sections):
                count, pos = read_var_uint(data, pos)
                start = pos
                client, pos = read_var_uint(data, pos)
                # References to the section's own client are the usual case: compare their bytes.
                own = data[start:pos]
                clock, pos = read_var_uint(data, pos)
                if client in clients:  # Yrs appends the second one, Yjs replaces the first
                    raise MalformedMessage("not a Yjs update: two struct sections for one client")
                clients.add(client)
                first = clock
                # The loop below is _read_struct inlined by hand: a booking has 14 items, and
                # the relay reads every update before applying it.
                for _ in range(count):
                    info = data[pos]
                    pos += 1
                    # Yrs (which applies the update) tells GC and Skip by the whole byte and masks
                    # content refs with 4 bits, Yjs with 5: accept only what both read the same way.
                    if info in (GC, _SKIP):
                        length, pos = read_var_uint(data, pos)
                        if info == GC:
                            yield (client, clock, length, GC, -1, -1, -1, -1, None, -1, -1, None, -1)
                        clock += length
                        continue
                    ref = info & 0x1F
                    if not DELETED <= ref <= DOC or ref == _JSON:
                        # Yrs reads legacy JSON content with one string more than Yjs writes: refuse it.
                        raise MalformedMessage(f"not a Yjs update: unsupported content type {ref}")
                    oc = ok = rc = rk = pc = pk = -1
                    root = key = None
                    if info & 0xC0:  # an origin (left) or right origin ID, or both: parent and key come from them
                        if info & 0x80:
                            oc, ok, pos = read_id(data, pos, own, client)
                            if (oc == client and ok >= clock) or ok > _MAX_CLOCK:
                                _refuse_reference()
                        if info & 0x40:
                            rc, pos = read_var_uint(data, pos)
                            rk, pos = read_var_uint(data, pos)
                            if (rc == client and rk >= clock) or rk > _MAX_CLOCK:
                                _refuse_reference()
                    else:  # no origin: the item names its parent (and its key, in a map)
                        parent_info = data[pos]
                        pos += 1
                        if parent_info == 0:  # a nested type, by the ID of its item
                            pc, pk, pos = read_id(data, pos, own, client)
                            if (pc == client and pk >= clock) or pk > _MAX_CLOCK:
                                _refuse_reference()
                        elif parent_info == 1:  # a root type, by name
                            root, pos = read_var_bytes(data, pos)
                        else:
                            raise MalformedMessage(f"not a Yjs update: parent info {parent_info}")
                        if info & 0x20:
                            length = data[pos]
                            if length < 0x80:  # inlined read_var_bytes: a short key
                                pos += 1 + length
                                if pos > size:
                                    raise IndexError
                                key = data[pos - length : pos]
                            else:
                                key, pos = read_var_bytes(data, pos)
                    content = pos
                    if ref == ANY and data[pos] == 1 and data[pos + 1] == ANY_STRING and data[pos + 2] < 0x80:
                        pos += 3 + data[pos + 2]  # inlined _skip_content: one short string, the usual map value
                        if pos > size:
                            raise IndexError
                        length = 1
                    else:
                        pos, length = _skip_content(data, pos, ref)
                    yield (client, clock, length, ref, oc, ok, rc, rk, root, pc, pk, key, content)
                    clock += length
                if clock > _MAX_CLOCK:
                    raise MalformedMessage("not a Yjs update: clock out of range")
                if count:
                    self.spans[client] = (first, clock)
            pos = _read_delete_set(data, pos, self.deletes)
        except (IndexError, UnicodeDecodeError):
            raise MalformedMessage(f"not a Yjs update: truncated or garbage ({len(data)} bytes)") from None
        except OverflowError:
            raise MalformedMessage("not a Yjs update: varint longer than 64 bits") from None
        except ValueError as exc:  # lib0.skip_any: an unknown value type
            raise MalformedMessage(f"not a Yjs update: {exc}") from None
        if pos != size:
            raise MalformedMessage(f"not a Yjs update: {size - pos} unexpected bytes after the delete set")


def read_id(data: bytes, pos: int, own: bytes, own_client: int) -> tuple[int, int, int]:
    """The item ID (varuint client, varuint clock) at ``pos``: ``(client, clock, position after it)``.

    ``own`` is the complete varuint of ``own_client``, the client the caller meets most (a
    section's own): those bytes are compared, not decoded. Clocks under 16384 are read inline.

    Raises:
        IndexError, OverflowError: as :func:`engine.lib0.read_var_uint`.
    """
    if data.startswith(own, pos):
        client = own_client
        pos += len(own)
    else:
        client, pos = read_var_uint(data, pos)
    clock = data[pos]
    if clock < 0x80:
        return client, clock, pos + 1
    if data[pos + 1] < 0x80:
        return client, (clock & 0x7F) | data[pos + 1] << 7, pos + 2
    clock, pos = read_var_uint(data, pos)
    return client, clock, pos


def _refuse_reference() -> None:
    """Refuse an ID Yrs cannot resolve: a clock out of its range, or the item's own client at or after it."""
    raise MalformedMessage("not a Yjs update: a reference to a clock out of range, or to the item itself "
                           "or a later item of its client")


def _skip_content(data: bytes, pos: int, ref: int) -> tuple[int, int]:
    """Skip an item's content: the position after it and its length in clock units."""
    if ref == ANY:  # map values and array elements
        count, pos = read_var_uint(data, pos)
        for _ in range(count):
            pos = skip_any(data, pos)
        return pos, count
    if ref == STRING:
        text, pos = read_var_string(data, pos)
        return pos, len(text.encode("utf-16-le")) // 2  # Yjs counts UTF-16 code units
    if ref == DELETED:
        length, pos = read_var_uint(data, pos)
        return pos, length
    if ref == TYPE:
        type_ref, pos = read_var_uint(data, pos)
        if type_ref not in _TYPE_REFS:
            raise MalformedMessage(f"not a Yjs update: unsupported shared type {type_ref}")
        return (skip_var_bytes(data, pos) if type_ref == _XML_ELEMENT else pos), 1
    if ref in (BINARY, EMBED):
        return skip_var_bytes(data, pos), 1
    if ref == FORMAT:  # key, value
        return skip_var_bytes(data, skip_var_bytes(data, pos)), 1
    # DOC: guid, options
    return skip_any(data, skip_var_bytes(data, pos)), 1


def _read_delete_set(data: bytes, pos: int, deletes: list[tuple[int, int, int]]) -> int:
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
