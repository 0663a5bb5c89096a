"""Which item of a map key is its value: the order Yjs gives the items written under one key.

A map key's items form a list in Yjs order; the last one is the value, and every other one is
deleted as the next one arrives. :func:`last_item` finds that last item from the items and
their origins alone, without integrating anything, which is how
:class:`engine.update_policy.UpdatePolicy` tells whether a lifecycle mark is still present
after an update that writes or deletes items under it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .place_codes import MarkUnit

NO_ITEM = (-1, -1)


def mark_is_present(units: Iterable[MarkUnit], is_deleted: Callable[[int, int], bool]) -> bool | None:
    """Whether a map key whose items are ``units`` has a value: True, False, or None if the
    order of its items cannot be told (see :func:`last_item`)."""
    last = last_item(units)
    return last if last is None else last != NO_ITEM and not is_deleted(*last)


def last_item(units: Iterable[MarkUnit]) -> tuple[int, int] | None:
    """The ID of the item that is a map key's value, given all the key's items; ``(-1, -1)`` if
    there are none, None if their order cannot be told (a right origin, or an origin elsewhere).

    A map key's items form a list in Yjs order; the last one is the value and every other one is
    deleted as the next arrives. Without right origins (a map write never has one) that order
    is the origin tree walked depth first, each item's children after it from the lowest client
    id to the highest (Yrs ``Item::resolve_conflict``: an item goes right of a sibling with a
    lower client id, left of one with a higher id, and left of an earlier item of its own
    client), so the last item is found by following, from the root, the child with the highest
    client id (the lowest clock on a tie).
    """
    children: dict[tuple[int, int] | None, list[tuple[int, int]]] = {}
    ids: set[tuple[int, int]] = set()
    for client, clock, length, origin_client, origin_clock, has_right in units:
        if has_right:
            return None
        for k in range(clock, clock + length):
            parent = (origin_client, origin_clock) if k == clock else (client, k - 1)
            children.setdefault(parent if parent[0] >= 0 else None, []).append((client, k))
            ids.add((client, k))
    if any(parent is not None and parent not in ids for parent in children):
        return None
    last: tuple[int, int] | None = None
    for _ in range(len(ids)):  # a tree of len(ids) nodes is that deep at most
        kids = children.get(last)
        if not kids:
            break
        last = max(kids, key=lambda unit: (unit[0], -unit[1]))
    return NO_ITEM if last is None else last

