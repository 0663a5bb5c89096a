"""Which rules of the calendar layout a Yjs update would break, decided *before* it is applied.

A relay applies updates from writers it does not trust (terminals, stock Yjs clients, a board in
a browser, partner relays), and an applied update cannot be taken back. So it judges each
update's bytes first. :class:`UpdatePolicy` reports every :class:`Violation` an update would
commit against the layout of a calendar document:

- ``reservations``, ``verdicts``, ``homes``: root entries are set once. Anyone may add a key;
  nobody deletes an entry or writes under a key that exists (:attr:`Category.ENTRY_DELETED`,
  :attr:`Category.ENTRY_OVERWRITTEN`), which also covers an item without origins under an
  existing key: Yjs orders it among the key's items by client id and, if it ends up last, it
  becomes the value and the old one is deleted on integration. Inside a verdict or home entry
  nothing changes either; inside a reservation's map request keys are free, and
- lifecycle marks (:data:`engine.item_places.MARK_KEYS`) count as present while their key is:
  overwriting one is harmless (two desks that cancel at once do that), removing one is not
  (:attr:`Category.MARK_REMOVED`; see :mod:`engine.map_order`);
- the retired decision keys (:data:`engine.model.DECISION_KEYS`) are written by nobody but the
  relay itself (:attr:`Category.RETIRED_KEY`);
- ``resources`` and ``meta`` are written by admins only: every write or delete in them is an
  :attr:`Category.ADMIN_WRITE`, and the values written are checked (:attr:`Category.INVALID_VALUE`,
  for admins too: resource ids, ``name``, ``capacity``, ``meta.hold_ttl``);
- ``receipts`` (:mod:`engine.receipts`) are written by relays only: every write or delete there is
  a :attr:`Category.RELAY_ONLY`, and receipts are set-once entries like verdicts;
- no other root (:attr:`Category.UNKNOWN_ROOT`), and no list content in a layout root
  (:attr:`Category.NOT_A_MAP_ENTRY`);
- an update that names an item the relay has not seen, deletes one, or skips clocks of a writer
  cannot be judged (:attr:`Category.MISSING_DEPENDENCY`): Yrs would hold it or integrate it out
  of order, so refuse it and resync.

Bytes that cannot be read exactly as Yrs reads them raise ``MalformedMessage``: refuse those too.

Theory of operation
-------------------
The policy is an :class:`engine.item_places.PlaceIndex` (where each item of the calendar is)
plus these rules. :meth:`UpdatePolicy.violations` places the update's new items without changing
the index, judges each one by its place, judges the ranges its delete set covers by the places
of the items there, and for each mark a reservation had before, tells whether the mark's key is
still present after the update from the key's items and their origins. Feed
:meth:`UpdatePolicy.observe` every change the relay's document commits (remote updates, peer
updates, its own writes: an :class:`engine.replica.Change` carries exactly what was integrated),
so that the index stays in step.

Typical use on a relay, per calendar::

    policy = UpdatePolicy.from_update(replica.full_state())   # once, after loading
    found = policy.violations(update, first_only=True)         # before applying
    if any(v.category not in allowed_for(connection) for v in found):
        ...refuse the update...
    change = replica.apply(update)
    if change is not None:
        policy.observe(change.update)                           # every applied change, any source

The policy reports; the relay decides per connection (an admin token may write ``resources``;
what a partner relay may forward is the relay's call).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .calendar import HOLD_TTL_KEY, TIME_ZONE_KEY, read_hold_ttl, read_time_zone
from .clock_runs import ClockRuns
from .errors import MalformedMessage
from .item_places import PlaceIndex
from .lib0 import read_any, read_var_string, read_var_uint, skip_any
from .map_order import mark_is_present
from .model import MAX_LENGTHS, RESOURCE_ID
from .place_codes import (
    DEEPER,
    ENTRY,
    FIELD,
    LAYOUT_ROOTS,
    MARK_KEYS,
    MARKS,
    META,
    MISSING,
    RECEIPTS,
    RESERVATIONS,
    RESOURCES,
    Field,
    MarkUnit,
)
from .placement import Placement
from .plain_updates import PlainUpdate, read_plain
from .slots import EXCEPTIONS_KEY, HOURS_KEY, read_exceptions, read_weekly
from .yjs_update import ANY, DELETED, MAP_TYPE, STRING, TYPE, Struct

MAX_CAPACITY = 1000
_SETTINGS: dict[bytes, Callable[[object], object]] = {HOLD_TTL_KEY.encode(): read_hold_ttl,
                                                      TIME_ZONE_KEY.encode(): read_time_zone}
_RESOURCE_SETTINGS: dict[bytes, Callable[[object], object]] = {HOURS_KEY.encode(): read_weekly,
                                                               EXCEPTIONS_KEY.encode(): read_exceptions}
"""Resource keys besides name and capacity whose values are checked (opening hours: engine.slots)."""
FIELD_CHARS: dict[bytes, int] = {**{key.encode(): limit for key, limit in MAX_LENGTHS.items()},
                                 b"cancel_reason": MAX_LENGTHS["reason"]}
"""Longest string (characters) each reservation field holds: the engine's own table."""
OTHER_FIELD_CHARS = max(MAX_LENGTHS.values())
"""Longest string in any other field (and in a field an overwrite does not name)."""
MAX_KEY_BYTES = 127  # a field's key (UTF-8 bytes)
MAX_ENTRY_KEY_BYTES = 255  # a root entry's key: a reservation id, verdict, home or receipt key
MAX_ENTRY_BYTES = 4096  # a verdict, home record or receipt value; a string in resources or meta
_SHOWN = 128  # characters of a root name or key a violation keeps (they come from the sender)
_FIELD_NAMES = {**{int(Field[key.upper()]): key for key in MARK_KEYS}, Field.RETIRED: "decision",
                Field.NAME: "name", Field.CAPACITY: "capacity"}


class Category(enum.StrEnum):
    """What rule an update breaks (see the module docstring)."""

    ENTRY_DELETED = "entry-deleted"  # a reservation, verdict or home entry
    ENTRY_OVERWRITTEN = "entry-overwritten"  # a write under an existing key, or inside a verdict or home
    MARK_REMOVED = "mark-removed"  # a lifecycle mark's key would be gone
    RETIRED_KEY = "retired-key"  # a decision key in a reservation's map (written or deleted)
    ADMIN_WRITE = "admin-write"  # a write or delete in resources or meta: admins only
    RELAY_ONLY = "relay-only"  # a write or delete in receipts: relays only
    INVALID_VALUE = "invalid-value"  # a bad resource id, name or capacity, even from an admin
    UNKNOWN_ROOT = "unknown-root"  # a root the layout does not have
    NOT_A_MAP_ENTRY = "not-a-map-entry"  # list content (no key) in a layout root
    MISSING_DEPENDENCY = "missing-dependency"  # names, deletes or skips items the relay has not seen
    TOO_LARGE = "too-large"  # a value or key past its limit (FIELD_CHARS, MAX_ENTRY_BYTES, ...)
    NOT_PLAIN = "not-plain"  # a reservation field holding a nested type, bytes or text content


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule an update breaks: where, and the item or deleted range that does it.

    ``root`` is the root map's name, ``key`` the root entry's key (a reservation id, a verdict
    key, a resource id), ``field`` the key inside the entry when a rule looks at it (a mark, a
    decision key, ``name``, ``capacity``); each is "" when there is none or it is not known, and
    names and keys are cut to 128 characters. Never a value: no patient data.
    """

    category: Category
    root: str = ""
    key: str = ""
    field: str = ""
    client: int = 0
    clock: int = 0


class UpdatePolicy:
    """Per calendar: the places of its items, and the layout rules (see the module docstring).

    Memory is one run of 25 bytes per run of a writer's items in one place (a booking takes
    two), a row per root entry, and the items written under lifecycle marks.
    """

    def __init__(self, index: PlaceIndex | None = None) -> None:
        self.index = index if index is not None else PlaceIndex()
        # The last update the pre-check passed and what it read, until the index changes: the
        # relay checks an update, then observes the change it made, often the same bytes.
        self._plain: tuple[bytes, PlainUpdate] | None = None

    @classmethod
    def from_update(cls, update: bytes) -> UpdatePolicy:
        """A policy over everything in ``update``, e.g. a replica's full state after loading.

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update.
        """
        return cls(PlaceIndex(update))

    def observe(self, update: bytes) -> None:
        """Record a change the document has integrated (every one, from any source, in order;
        always through this method, not the index's, which would leave the policy's cache stale).

        Raises:
            MalformedMessage: ``update`` is not a Yjs v1 update; rebuild from the full state.
        """
        plan = self._read_plain(update)
        self._plain = None
        if plan is not None:
            self.index.record(plan)
        else:
            self.index.observe(update)

    def might_violate(self, update: bytes) -> bool:
        """A cheap pre-check: False means ``update`` breaks no rule (a plain booking, edit,
        cancel or new verdict: see :mod:`engine.plain_updates`), True means "run the full check".
        :meth:`violations` runs it first by itself."""
        return self._read_plain(update) is None

    def violations(self, update: bytes, *, first_only: bool = False) -> list[Violation]:
        """Every rule applying ``update`` would break (items first, then deletions, then marks),
        at most one per category and place; only the first if ``first_only``.

        Raises:
            MalformedMessage: ``update`` cannot be read exactly as Yrs reads it; refuse it.
        """
        if self._read_plain(update) is not None:
            return []
        return self.judge(update, first_only=first_only)

    def entries_in(self, root: int) -> int:
        """How many keys the root map with code ``root`` holds (one of the roots whose entries
        are written once and never deleted, e.g. reservations): what ``len()`` of that map says,
        without asking the document (a pycrdt transaction per call, on every update's quota check)."""
        return len(self.index.keys.get(root, ()))

    def new_entries(self, update: bytes, root: int) -> int:
        """How many entries ``update`` would add to the root map with code ``root`` (for quotas).

        Raises:
            MalformedMessage: as :meth:`violations`.
        """
        plan = self._read_plain(update)
        entries = plan.entries if plan is not None else self.index.place(update)[0].entries
        known = self.index.keys.get(root, {})
        return len({key for code, key in entries if code == root and key is not None and key not in known})

    def _read_plain(self, update: bytes) -> PlainUpdate | None:
        cached = self._plain
        if cached is not None and (cached[0] is update or cached[0] == update):
            return cached[1]
        plan = read_plain(self.index, update)
        self._plain = None if plan is None else (update, plan)
        return plan

    def judge(self, update: bytes, *, first_only: bool = False) -> list[Violation]:
        """:meth:`violations` without the pre-check (for tests and benchmarks)."""
        placement, deletes = self.index.place(update)
        review = _Review(self.index, placement, update, first_only)
        try:
            for client, clock in placement.gaps:
                review.add(Category.MISSING_DEPENDENCY, -1, "", client, clock)
            clean = review.clean
            for struct, start, code in placement.items:
                if code not in clean:
                    review.judge_item(struct, start, code)
                else:
                    review.check_size(struct, start, code)
            for client, clock, length in deletes:
                review.judge_deletion(client, clock, clock + length)
            review.judge_marks(deletes)
        except _Enough:
            pass
        return list(review.found.values())


class _Enough(Exception):
    """The first violation was found and only the first was asked for."""


class _Review:
    """The violations of one update (:meth:`UpdatePolicy.violations`)."""

    def __init__(self, index: PlaceIndex, placement: Placement, data: bytes, first_only: bool) -> None:
        self.index = index
        self.placement = placement
        self.data = data
        self.first_only = first_only
        self.found: dict[tuple[Category, str, str, str], Violation] = {}
        self.new_keys: set[tuple[int, bytes]] = set()  # (root, key) of root entries this update writes
        # (entry << 6 | mark) -> the update's items written under that mark
        self.touched: dict[int, list[MarkUnit]] = {}
        self.triggers: dict[int, tuple[int, int]] = {}  # (entry << 6 | mark) -> first item or deletion there
        self.born_deleted: set[tuple[int, int]] = set()  # (client, start) of new mark items with deleted content
        # Place codes where any write is fine (a reservation's request keys): judged once.
        self.clean: set[int] = set()

    def add(self, category: Category, code: int, field: str, client: int, clock: int) -> None:
        """Report ``category`` at the place ``code`` (-1: none known)."""
        root = key = ""
        if code >= 0:
            entry = code >> 8
            root = _shown(self.index.root_name(self.index.root_of(entry, self.placement), self.placement))
            raw = self.index.key_of(entry, self.placement)
            key = "" if raw is None else _shown(raw)
            if not field:
                field = _FIELD_NAMES.get(code & 63, "") if (code >> 6) & 3 != ENTRY else ""
        where = (category, root, key, field)
        if where not in self.found:
            self.found[where] = Violation(category, root, key, field, client, clock)
        if self.first_only:
            raise _Enough

    # ---- new items ---------------------------------------------------------------------------

    def _has_no_place(self, code: int, client: int, clock: int) -> bool:
        """True (and reported if it matters) for an item without a place: a GC range, or MISSING."""
        if code == MISSING:
            self.add(Category.MISSING_DEPENDENCY, -1, "", client, clock)
        return code < 0

    def judge_item(self, struct: Struct, start: int, code: int) -> None:
        client = struct[0]
        if self._has_no_place(code, client, start):
            return
        entry, depth, field = code >> 8, (code >> 6) & 3, code & 63
        root = self.index.root_of(entry, self.placement)
        key = self.index.key_of(entry, self.placement)
        self.check_size(struct, start, code)
        if root == RESERVATIONS and depth != ENTRY and field in (Field.OTHER, Field.KEYLESS) and key is not None:
            self.clean.add(code)  # request keys are free (within their limits: check_size)
            return
        own_key = _shown(struct[11]) if struct[11] is not None and depth == FIELD else ""
        outside = _outside_the_public_layout(root, key)
        if outside is not None:
            self.add(outside, code, own_key if field == Field.OTHER else "", client, start)
            if root == RESOURCES:
                self._check_resource_value(struct, start, code)
            elif root == META and depth == ENTRY and key in _SETTINGS:
                self._check_setting(struct, start, code, _SETTINGS[key])
            return
        if root == RECEIPTS:
            self.add(Category.RELAY_ONLY, code, "", client, start)
            if depth == ENTRY and not isinstance(_single_value(self.data, struct[3], struct[12]), str) \
                    and struct[3] != DELETED:
                self.add(Category.INVALID_VALUE, code, "", client, start)
        if depth == ENTRY:
            assert key is not None  # else it would be outside the layout
            inherits = struct[4] >= 0 or struct[6] >= 0 or start > struct[1]
            if inherits or key in self.index.keys[root] or (root, key) in self.new_keys:
                self.add(Category.ENTRY_OVERWRITTEN, code, "", client, start)
            self.new_keys.add((root, key))
        elif root == RESERVATIONS:
            if field == Field.RETIRED:
                self.add(Category.RETIRED_KEY, code, own_key, client, start)
            elif depth == FIELD and field in MARKS:
                origin = (struct[4], struct[5]) if start == struct[1] else (client, start - 1)
                unit = (client, start, struct[1] + struct[2] - start, origin[0], origin[1], struct[6] >= 0)
                self.touched.setdefault(entry << 6 | field, []).append(unit)
                self.triggers.setdefault(entry << 6 | field, (client, start))
                if struct[3] == DELETED:
                    self.born_deleted.add((client, start))
        elif entry < self.placement.entry_base:  # inside an existing verdict or home
            self.add(Category.ENTRY_OVERWRITTEN, code, "", client, start)

    def check_size(self, struct: Struct, start: int, code: int) -> None:
        """Keys and values within their limits; reservation fields hold plain values only
        (strings, numbers, booleans, null: what terminals and the board write)."""
        ref = struct[3]
        if ref == DELETED or code < 0:
            return
        depth = (code >> 6) & 3
        own_key = struct[11]
        root = self.index.root_of(code >> 8, self.placement)
        if own_key is not None and len(own_key) > (MAX_ENTRY_KEY_BYTES if depth == ENTRY else MAX_KEY_BYTES):
            self.add(Category.TOO_LARGE, code, "key", struct[0], start)
        if root == RESERVATIONS and depth != ENTRY:
            if depth == DEEPER or ref != ANY:
                self.add(Category.NOT_PLAIN, code, "", struct[0], start)
                return
            try:
                value = _single_value(self.data, ref, struct[12])
            except MalformedMessage:  # not UTF-8: Yrs refuses the whole update when it is applied
                return
            if value is _NOT_ONE or isinstance(value, dict | list | bytes):
                self.add(Category.NOT_PLAIN, code, "", struct[0], start)
            elif isinstance(value, str):
                limit = FIELD_CHARS.get(own_key, OTHER_FIELD_CHARS) if own_key is not None else OTHER_FIELD_CHARS
                if len(value) > limit:
                    self.add(Category.TOO_LARGE, code, _shown(own_key) if own_key is not None else "", struct[0], start)
        elif ref in (ANY, STRING):
            try:
                size = _content_bytes(self.data, ref, struct[12])
            except MalformedMessage:  # not UTF-8: Yrs refuses the whole update when it is applied
                return
            if size > MAX_ENTRY_BYTES:
                self.add(Category.TOO_LARGE, code, "", struct[0], start)
        elif ref != TYPE:  # bytes, embeds, formats, sub-documents: no layout root holds them
            self.add(Category.NOT_PLAIN, code, "", struct[0], start)

    def _check_setting(self, struct: Struct, start: int, code: int, read: Callable[[object], object]) -> None:
        """A calendar setting reads as valid (``meta.hold_ttl``: whole seconds, 60 to 30 days;
        ``meta.time_zone``: a zone name; see engine.calendar)."""
        if struct[3] != DELETED and read(_single_value(self.data, struct[3], struct[12])) is None:
            self.add(Category.INVALID_VALUE, code, "", struct[0], start)

    def _check_resource_value(self, struct: Struct, start: int, code: int) -> None:
        """Resource ids match model.RESOURCE_ID, a resource is a map, ``capacity`` is a whole
        number 1-1000, ``name`` a string of at most 128 characters, and opening ``hours`` and
        ``hours_exceptions`` read as :mod:`engine.slots` reads them."""
        ref, content = struct[3], struct[12]
        if ref == DELETED:
            return
        depth, field = (code >> 6) & 3, code & 63
        valid = True
        if depth == ENTRY:
            key = self.index.key_of(code >> 8, self.placement) or b""
            valid = RESOURCE_ID.fullmatch(key.decode(errors="replace")) is not None and _is_map(self.data, ref, content)
        elif depth == FIELD and field == Field.CAPACITY:
            value = _single_value(self.data, ref, content)
            valid = (isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
                     and 1 <= value <= MAX_CAPACITY)
        elif depth == FIELD and field == Field.NAME:
            value = _single_value(self.data, ref, content)
            valid = isinstance(value, str) and len(value) <= MAX_LENGTHS["name"]
        elif depth == FIELD and field == Field.OTHER and struct[11] in _RESOURCE_SETTINGS:
            valid = _RESOURCE_SETTINGS[struct[11]](_single_value(self.data, ref, content)) is not None
        if not valid:
            self.add(Category.INVALID_VALUE, code, "", struct[0], start)

    # ---- deletions -----------------------------------------------------------------------------

    def judge_deletion(self, client: int, clock: int, end: int) -> None:
        known = self.index.seen.get(client, 0)
        if clock < known:
            for start, _end, code in self.index.runs[client].live(clock, min(end, known)):
                self._judge_deleted(code, client, start)
        if end > known:
            lo = max(clock, known)
            new = self.placement.new.get(client)
            hole = _first_uncovered(new, lo, end)
            if hole is not None:  # Yrs would keep it and delete whatever arrives there later
                self.add(Category.MISSING_DEPENDENCY, -1, "", client, hole)

    def _judge_deleted(self, code: int, client: int, clock: int) -> None:
        if self._has_no_place(code, client, clock):
            return
        entry, depth, field = code >> 8, (code >> 6) & 3, code & 63
        root = self.index.root_of(entry)
        outside = _outside_the_public_layout(root, self.index.key_of(entry))
        if outside is not None:
            self.add(outside, code, "", client, clock)
            return
        if root == RECEIPTS:
            self.add(Category.RELAY_ONLY, code, "", client, clock)
        if depth == ENTRY:
            self.add(Category.ENTRY_DELETED, code, "", client, clock)
        elif root == RESERVATIONS:
            if field == Field.RETIRED:
                self.add(Category.RETIRED_KEY, code, "", client, clock)
            elif depth == FIELD and field in MARKS:
                self.touched.setdefault(entry << 6 | field, [])
                self.triggers.setdefault(entry << 6 | field, (client, clock))
        else:
            self.add(Category.ENTRY_OVERWRITTEN, code, "", client, clock)

    # ---- lifecycle marks -------------------------------------------------------------------------

    def judge_marks(self, deletes: list[tuple[int, int, int]]) -> None:
        """Every mark present before the update must still be present after it."""
        if not self.touched:
            return
        runs = self.index.runs
        removed = _ranges_by_client(deletes)

        def deleted_before(client: int, clock: int) -> bool:
            found = runs.get(client)
            return found is not None and found.is_deleted(clock)

        def deleted_after(client: int, clock: int) -> bool:
            return deleted_before(client, clock) or _in_ranges(removed.get(client), clock)

        for chain, new_units in self.touched.items():
            old_units = self.index.marks.get(chain)
            if not old_units:
                continue  # no mark there before (or a reservation this update creates)
            if mark_is_present(old_units, deleted_before) is False:
                continue
            def deleted_now(client: int, clock: int, new_units: list[MarkUnit] = new_units) -> bool:
                return deleted_after(client, clock) or _born_deleted(self.born_deleted, new_units, client, clock)

            after = mark_is_present([*old_units, *new_units], deleted_now)
            if after is not True:
                entry, field = chain >> 6, chain & 63
                self.add(Category.MARK_REMOVED, entry << 8 | FIELD << 6 | field, "", *self.triggers[chain])


def _outside_the_public_layout(root: int, key: bytes | None) -> Category | None:
    """What a write or delete in a root entry is when it is not in the three public roots' entries."""
    if root >= len(LAYOUT_ROOTS):
        return Category.UNKNOWN_ROOT
    if key is None:
        return Category.NOT_A_MAP_ENTRY
    if root in (RESOURCES, META):
        return Category.ADMIN_WRITE
    return None


# ---- helpers -------------------------------------------------------------------------------------


def _shown(raw: bytes) -> str:
    return raw.decode(errors="replace")[:_SHOWN]


def _is_map(data: bytes, ref: int, content: int) -> bool:
    if ref != TYPE:
        return False
    type_ref, _pos = read_var_uint(data, content)
    return type_ref == MAP_TYPE


def _single_value(data: bytes, ref: int, content: int) -> object:
    """The one value of an item's content (a ``_NOT_ONE`` marker if it has another number or kind)."""
    try:
        if ref == STRING:
            return read_var_string(data, content)[0]
        if ref == ANY:
            count, pos = read_var_uint(data, content)
            if count == 1:
                return read_any(data, pos)[0]
    except (IndexError, ValueError, OverflowError, UnicodeDecodeError):  # the scan read it: cannot happen
        raise MalformedMessage("not a Yjs update: unreadable value") from None
    return _NOT_ONE


_NOT_ONE = object()


def _content_bytes(data: bytes, ref: int, content: int) -> int:
    """How many bytes an item's string or ``any`` content takes in the update."""
    try:
        if ref == STRING:
            length, pos = read_var_uint(data, content)
            return length + pos - content
        count, pos = read_var_uint(data, content)
        for _ in range(count):
            pos = skip_any(data, pos)
        return pos - content
    except (IndexError, ValueError, OverflowError, UnicodeDecodeError):  # the scan read it: cannot happen
        raise MalformedMessage("not a Yjs update: unreadable value") from None


def _first_uncovered(runs: ClockRuns | None, start: int, end: int) -> int | None:
    """The first clock of ``[start, end)`` that ``runs`` does not hold, or None."""
    clock = start
    while clock < end:
        i = -1 if runs is None else runs.find(clock)
        if i < 0:
            return clock
        assert runs is not None
        clock = runs.ends[i]
    return None


def _ranges_by_client(deletes: list[tuple[int, int, int]]) -> dict[int, list[tuple[int, int]]]:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for client, clock, length in deletes:
        ranges.setdefault(client, []).append((clock, clock + length))
    return ranges


def _in_ranges(ranges: list[tuple[int, int]] | None, clock: int) -> bool:
    return ranges is not None and any(start <= clock < end for start, end in ranges)


def _born_deleted(born: set[tuple[int, int]], units: list[MarkUnit], client: int, clock: int) -> bool:
    return any(u[0] == client and u[1] <= clock < u[1] + u[2] and (u[0], u[1]) in born for u in units)
