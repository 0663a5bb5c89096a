"""Stored state vectors: what a calendar's log holds, without loading it.

Every store keeps, beside each calendar's log, the state vector of everything in that log,
updated in the same commit as the rows (:func:`advance`). A relay compares it with a peer's at
link-up and loads only the calendars whose vectors differ (:func:`differ`).

The stored vector never claims more than the log holds. A row moves client ``c`` from clock
``a`` to ``b`` (its *span*, :func:`update_spans`); the vector takes ``b`` only if the log already
reaches ``a``, so a row stored ahead of one it builds on (two connections relaying one client,
committed out of order) leaves the vector behind, never ahead: the calendar then merely looks
different to its peers, which costs a sync, not data. A compaction snapshot (the whole document)
sets every client it holds to its exact end.

Only content moves a state vector: a change that only deletes leaves it as it was. accord never
deletes reservations, verdicts, home records or lifecycle marks (the update policy refuses it),
but resources, settings and reservation fields can lose keys. Two relays whose stored vectors
agree can therefore still differ by deletions made while they were apart; the relay makes that
harmless by opening every calendar it has *loaded* on every peer link (a full state-vector
exchange, whose answer always carries the whole delete set), so a calendar is fully synced with
its peers whenever anyone uses it, and only calendars nobody uses stay unexamined.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pycrdt

from ..errors import MalformedMessage
from ..lib0 import read_var_uint
from ..protocol import decode_state_vector, encode_state_vector
from ..yjs_update import UpdateReader

Spans = dict[int, tuple[int, int]]
"""client -> ``(first clock, clock after the last)`` of the structs one update holds."""

KNOWN_SPANS_MAX = 4096  # updates whose spans are remembered until a store asks (oldest forgotten)
_known_spans: OrderedDict[bytes, Spans] = OrderedDict()
_known_lock = threading.Lock()  # stores ask from their writer threads
_last_after: tuple[bytes, dict[int, int]] = (b"", {})  # the last after-state remember_spans decoded


def remember_spans(update: bytes, before_state: bytes, after_state: bytes) -> None:
    """Note the spans of a transaction's ``update`` from the state vectors around it, so that
    :func:`update_spans` need not walk its structs when a store asks (the relay's hot path).

    A transaction's update holds, for every client it moved, the structs from its clock
    before the transaction to its clock after (Yrs encodes it from the before-state), so the
    spans are exactly the state vectors' difference.
    """
    global _last_after
    last_bytes, last_clocks = _last_after
    before = last_clocks if before_state == last_bytes else decode_state_vector(before_state)
    after = decode_state_vector(after_state)
    _last_after = (after_state, after)  # a document's next transaction starts where this one ended
    spans = {client: (before.get(client, 0), end) for client, end in after.items() if end > before.get(client, 0)}
    with _known_lock:
        _known_spans[update] = spans
        if len(_known_spans) > KNOWN_SPANS_MAX:
            _known_spans.popitem(last=False)


def update_spans(update: bytes) -> Spans:
    """The clock range each client's structs cover in ``update`` (empty for garbage or a
    delete-only update: such a row moves no state vector). Spans noted with
    :func:`remember_spans` are answered (once) without reading the update."""
    if _known_spans:
        with _known_lock:
            known = _known_spans.pop(update, None)
        if known is not None:
            return known
    try:
        sections = read_var_uint(update, 0)[0] if update else 0
        if not sections:
            return {}
        # Rust first: exact for every client whose structs start at clock 0 (full states,
        # snapshots, first writes). If that covers every section, nothing is left to walk.
        whole = decode_state_vector(pycrdt.get_state(update))
        if len(whole) == sections:
            return {client: (0, end) for client, end in whole.items()}
        reader = UpdateReader(update)
        for _ in reader.structs():
            pass
        return dict(reader.spans)
    except (ValueError, MalformedMessage, IndexError, OverflowError):
        return {}


def advance(clocks: dict[int, int], spans: Spans) -> bool:
    """Move ``clocks`` (a stored state vector, in place) past one more stored row; True if it moved.

    A client moves only if the row starts where the log already reaches (or before): the
    vector never claims a clock the log lacks.
    """
    moved = False
    for client, (first, end) in spans.items():
        have = clocks.get(client, 0)
        if first <= have < end:
            clocks[client] = end
            moved = True
    return moved


def advance_encoded(state_vector: bytes | None, updates: list[bytes]) -> bytes | None:
    """The encoded stored vector after ``updates`` are appended, or None if it did not move."""
    clocks = decode_state_vector(state_vector) if state_vector else {}
    moved = False
    for update in updates:
        moved = advance(clocks, update_spans(update)) or moved
    return encode_state_vector(clocks) if moved or state_vector is None else None


def differ(ours: bytes | None, theirs: bytes | None) -> bool:
    """True if either stored vector has a clock the other lacks (None and ``b"\\x00"`` are empty).

    Raises:
        MalformedMessage: a vector cannot be decoded.
    """
    a = {c: k for c, k in decode_state_vector(ours).items() if k} if ours else {}
    b = {c: k for c, k in decode_state_vector(theirs).items() if k} if theirs else {}
    return a != b


def log_state_vector(updates: list[bytes]) -> bytes:
    """The state vector of a whole stored log (for migrating a store that kept none): merged in
    Rust when the rows are Yjs updates (a gapless log then starts every client at clock 0), row
    by row if they are not."""
    rows = [u for u in updates if u and u != b"\x00\x00"]
    clocks: dict[int, int] = {}
    try:
        while len(rows) > 1:
            rows = [pycrdt.merge_updates(*rows[i : i + 500]) if len(rows[i : i + 500]) > 1 else rows[i]
                    for i in range(0, len(rows), 500)]
        if rows:
            advance(clocks, update_spans(rows[0]))
    except ValueError:
        for update in updates:
            advance(clocks, update_spans(update))
    return encode_state_vector(clocks)
