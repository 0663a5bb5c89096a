"""Cutting one big Yjs update into pieces that each fit in a message, in an order every piece can be applied.

A sync answer (SYNC_STEP2) is one update, as large as everything the other side lacks: a new
terminal pulling a 50,000-reservation calendar asks for ~25 MB. Messages are capped (8 MiB by
default), so :func:`split_update` cuts such an update into pieces of at most ``max_bytes``
(a struct larger than that travels alone, over the budget: nothing can cut it).

Theory of operation. A v1 update is, per client, a run of structs in clock order, then a delete
set. Struct bytes do not depend on where they sit (v1 writes every reference as a full ID), so a
piece is just a set of contiguous clock ranges, one per client, copied verbatim behind new section
headers, with an empty delete set; the delete set follows in the last pieces, after every item it
could name. Applied one by one, the pieces must never name an item the receiver has not seen,
since a relay judges each update before applying it and refuses one with a missing dependency
(:mod:`engine.update_policy`). So pieces are filled in causal order: each client's structs in clock
order (Yjs never lets an item reference a later clock of its own client), and a struct whose
origin, right origin or parent is another client's struct in this same update waits until that
struct is in the current piece or an earlier one (within one update Yjs and Yrs integrate in any
order). The update came from one document, which integrated every struct after what it
references, so the order always exists; if it ever did not, the rest goes out in clock order and
the receiver resyncs.

The reading trusts its input (the sender's own document encoded it): bytes it cannot walk are
returned as one piece, unchanged.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from .errors import MalformedMessage
from .lib0 import ANY_STRING, read_var_uint, skip_var_bytes
from .protocol import write_var_uint
from .yjs_update import ANY, GC, _skip_content

_SKIP = 10
_HEADER_BYTES = 15  # a section header (count, client, clock) in at most this many bytes, as ever
_EMPTY_DELETE_SET = b"\x00"
_PIECE_START = 6  # a piece's section count (with room to grow) and its empty delete set


def split_update(update: bytes, max_bytes: int) -> list[bytes]:
    """``update`` as pieces of at most ``max_bytes`` each (see the module docstring), to be sent
    and applied in order; ``[update]`` if it fits already or cannot be read.

    Raises:
        ValueError: ``max_bytes`` is too small to hold a section header.
    """
    if max_bytes < 4 * _HEADER_BYTES:
        raise ValueError(f"pieces of {max_bytes} bytes cannot hold an update; use at least {4 * _HEADER_BYTES}")
    if len(update) <= max_bytes:
        return [update]
    try:
        sections, deletes_at = _read_sections(update)
    except (IndexError, OverflowError, ValueError, UnicodeDecodeError, MalformedMessage):
        return [update]
    pieces = _Packer(update, sections, max_bytes).pack()
    return _add_delete_set(pieces, update[deletes_at:], max_bytes)


@dataclass(slots=True)
class _Section:
    """One client's structs in the update: where each ends, at what clock each starts, and the
    structs that reference another client (struct index, that client, that clock)."""

    client: int
    start: int  # byte position of the first struct
    ends: array[int] = field(default_factory=lambda: array("q"))
    clocks: array[int] = field(default_factory=lambda: array("q"))
    foreign: list[tuple[int, int, int]] = field(default_factory=list)
    end_clock: int = 0
    cursor: int = 0  # structs placed in pieces so far
    deps_seen: int = 0  # entries of ``foreign`` already satisfied

    def clock_at(self, index: int) -> int:
        """The clock where struct ``index`` starts (the end clock past the last one)."""
        return self.clocks[index] if index < len(self.clocks) else self.end_clock

    def position(self, index: int) -> int:
        """The byte position where struct ``index`` starts."""
        return self.ends[index - 1] if index else self.start


def _read_sections(data: bytes) -> tuple[list[_Section], int]:
    """Every client section's struct boundaries and foreign references; and where the delete set starts."""
    count_sections, pos = read_var_uint(data, 0)
    sections: list[_Section] = []
    for _ in range(count_sections):
        count, pos = read_var_uint(data, pos)
        client, pos = read_var_uint(data, pos)
        clock, pos = read_var_uint(data, pos)
        section = _Section(client, pos)
        ends, clocks, foreign = section.ends, section.clocks, section.foreign
        add_end, add_clock = ends.append, clocks.append
        for index in range(count):
            add_clock(clock)
            info = data[pos]
            pos += 1
            if info in (GC, _SKIP):
                length, pos = read_var_uint(data, pos)
                clock += length
                add_end(pos)
                continue
            if info & 0x80:  # origin
                other, pos = read_var_uint(data, pos)
                at, pos = read_var_uint(data, pos)
                if other != client:
                    foreign.append((index, other, at))
            if info & 0x40:  # right origin
                other, pos = read_var_uint(data, pos)
                at, pos = read_var_uint(data, pos)
                if other != client:
                    foreign.append((index, other, at))
            if not info & 0xC0:  # no origins: the parent (and the key, in a map)
                parent_info = data[pos]
                pos += 1
                if parent_info == 0:
                    other, pos = read_var_uint(data, pos)
                    at, pos = read_var_uint(data, pos)
                    if other != client:
                        foreign.append((index, other, at))
                elif parent_info == 1:
                    pos = skip_var_bytes(data, pos)
                else:
                    raise ValueError(f"parent info {parent_info}")
                if info & 0x20:
                    pos = skip_var_bytes(data, pos)
            ref = info & 0x1F
            if ref == ANY and data[pos] == 1 and data[pos + 1] == ANY_STRING and data[pos + 2] < 0x80:
                pos += 3 + data[pos + 2]  # one short string, the usual map value
                length = 1
            else:
                pos, length = _skip_content(data, pos, ref)
            clock += length
            add_end(pos)
        if pos > len(data):
            raise IndexError("struct runs past the end")
        section.end_clock = clock
        sections.append(section)
    return sections, pos


class _Packer:
    """Fills pieces in causal order (see the module docstring)."""

    def __init__(self, data: bytes, sections: list[_Section], max_bytes: int) -> None:
        self.data = data
        self.sections = sections
        self.max_bytes = max_bytes
        # Clock up to which each client's structs are in a piece (this one or an earlier one).
        self.placed = {s.client: s.clock_at(0) for s in sections}
        self.pieces: list[bytes] = []
        self.piece: dict[int, tuple[_Section, int]] = {}  # client -> (section, first struct in this piece)
        self.piece_bytes = _PIECE_START

    def pack(self) -> list[bytes]:
        active = [s for s in self.sections if s.cursor < len(s.clocks)]
        while active:
            progress = False
            for section in active:
                progress = self._fill(section) or progress
            active = [s for s in active if s.cursor < len(s.clocks)]
            if active and not progress:  # cannot happen for a document's own update: go on in clock order
                self._fill(active[0], force=True)
        self._close_piece()
        return self.pieces

    def _fill(self, section: _Section, *, force: bool = False) -> bool:
        """Put as many of ``section``'s next structs as their references and the budget allow
        in pieces; True if any."""
        progress = False
        total = len(section.clocks)
        while section.cursor < total:
            ready = self._ready_until(section)
            if force and ready == section.cursor:
                ready, force = ready + 1, False
            if ready == section.cursor:
                return progress
            room = self.max_bytes - self.piece_bytes - (0 if section.client in self.piece else _HEADER_BYTES)
            start = section.position(section.cursor)
            fits = bisect_right(section.ends, start + room, section.cursor, ready)
            if fits == section.cursor:
                if self.piece:
                    self._close_piece()
                    continue
                fits = section.cursor + 1  # a struct larger than a piece travels alone
            if section.client not in self.piece:
                self.piece[section.client] = (section, section.cursor)
                self.piece_bytes += _HEADER_BYTES
            self.piece_bytes += section.ends[fits - 1] - start
            section.cursor = fits
            self.placed[section.client] = section.clock_at(fits)
            progress = True
        return progress

    def _ready_until(self, section: _Section) -> int:
        """The index of ``section``'s first struct (from its cursor) that references another
        client's struct not placed yet; its length if none."""
        foreign, placed = section.foreign, self.placed
        while section.deps_seen < len(foreign):
            index, client, clock = foreign[section.deps_seen]
            if index >= section.cursor and clock >= placed.get(client, clock + 1):
                return index
            section.deps_seen += 1
        return len(section.clocks)

    def _close_piece(self) -> None:
        if not self.piece:
            return
        parts = [write_var_uint(len(self.piece))]
        for section, first in self.piece.values():
            last = section.cursor
            parts += (write_var_uint(last - first), write_var_uint(section.client),
                      write_var_uint(section.clock_at(first)),
                      self.data[section.position(first):section.position(last)])
        parts.append(_EMPTY_DELETE_SET)
        self.pieces.append(b"".join(parts))
        self.piece = {}
        self.piece_bytes = _PIECE_START


def _add_delete_set(pieces: list[bytes], deletes: bytes, max_bytes: int) -> list[bytes]:
    """Append the delete set to the last piece if it fits there, else send it in pieces of its own after it."""
    if deletes == _EMPTY_DELETE_SET:
        return pieces
    if pieces and len(pieces[-1]) - 1 + len(deletes) <= max_bytes:
        return [*pieces[:-1], pieces[-1][:-1] + deletes]
    return pieces + [b"\x00" + part for part in _split_delete_set(deletes, max_bytes - 1)]


def _split_delete_set(data: bytes, max_bytes: int) -> list[bytes]:
    """The encoded delete set ``data`` as several delete sets of at most ``max_bytes`` each
    (a client's ranges may be spread over several)."""
    count, pos = read_var_uint(data, 0)
    clients: list[tuple[bytes, list[bytes]]] = []  # (client varuint, each range's encoded bytes)
    for _ in range(count):
        start = pos
        _client, pos = read_var_uint(data, pos)
        client = data[start:pos]
        ranges, pos = read_var_uint(data, pos)
        encoded = []
        for _ in range(ranges):
            start = pos
            _clock, pos = read_var_uint(data, pos)
            _length, pos = read_var_uint(data, pos)
            encoded.append(data[start:pos])
        clients.append((client, encoded))
    out: list[bytes] = []
    piece: list[tuple[bytes, list[bytes]]] = []
    size = _PIECE_START

    def close() -> None:
        out.append(write_var_uint(len(piece)) + b"".join(
            client + write_var_uint(len(ranges)) + b"".join(ranges) for client, ranges in piece))

    for client, encoded in clients:
        chunk: list[bytes] = []
        for one in encoded:
            need = len(one) + (0 if chunk else len(client) + 5)
            if size + need > max_bytes and (piece or chunk):
                if chunk:
                    piece.append((client, chunk))
                close()
                piece, chunk, size = [], [], _PIECE_START
                need = len(one) + len(client) + 5
            chunk.append(one)
            size += need
        if chunk:
            piece.append((client, chunk))
    if piece:
        close()
    return out
