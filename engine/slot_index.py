"""The home's index of booked slots: per resource, the booked intervals sorted by start.

The reservations overlapping a request are found by bisecting ``[start - longest, end)``, so
one lookup costs O(log n + overlaps); :func:`max_depth` then tells how many overlap at once
(capacity is the maximum overlap depth). Times are epoch seconds; intervals are half-open.
"""

from __future__ import annotations

from bisect import bisect_left, insort


class ResourceSlots:
    """Booked intervals of one resource as ``(start_s, end_s, reservation id)``, sorted."""

    __slots__ = ("entries", "longest_s")

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, str]] = []
        self.longest_s = 0

    def add(self, start: int, end: int, rid: str) -> None:
        insort(self.entries, (start, end, rid))
        self.longest_s = max(self.longest_s, end - start)  # never shrinks: a safe window bound

    def remove(self, start: int, end: int, rid: str) -> None:
        i = bisect_left(self.entries, (start, end, rid))
        if i < len(self.entries) and self.entries[i] == (start, end, rid):
            del self.entries[i]

    def overlapping(self, start: int, end: int, *, exclude: str) -> list[tuple[int, int, str]]:
        """Intervals sharing an instant with ``[start, end)``, except ``exclude``'s own."""
        entries = self.entries
        lo = bisect_left(entries, (start - self.longest_s,))
        hi = bisect_left(entries, (end,))
        return [item for item in entries[lo:hi] if item[1] > start and item[2] != exclude]


def max_depth(intervals: list[tuple[int, int, str]], start: int, end: int) -> int:
    """The most of ``intervals`` overlapping at any one instant of ``[start, end)``."""
    events = []
    for item_start, item_end, _rid in intervals:
        events.append((max(item_start, start), 1))
        events.append((min(item_end, end), -1))
    events.sort()  # at equal times ends (-1) come first: intervals are half-open
    depth = deepest = 0
    for _time, step in events:
        depth += step
        deepest = max(deepest, depth)
    return deepest
