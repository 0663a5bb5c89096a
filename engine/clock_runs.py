"""Sets of Yjs item IDs as clock runs: one client's disjoint ``[start, end)`` ranges, each with a code.

A Yjs item ID is (client, clock), and one client's items take consecutive clocks, so a set of
items is best kept per client as sorted runs of clocks. :class:`ClockRuns` holds one client's
runs in flat arrays (25 bytes a run), each run with an integer code (what the items are: for
:class:`engine.update_policy.UpdatePolicy` the place in the document) and a deleted flag, and
answers which run holds a clock with a binary search. Runs only grow at the end in the usual
case (clocks only grow); out-of-order adds and deletions split runs as needed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right


class ClockRuns:
    """Disjoint, sorted clock ranges of one Yjs client, each with a small code and a deleted flag."""

    __slots__ = ("codes", "deleted", "ends", "starts")

    def __init__(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.codes = array("q")
        self.deleted = bytearray()

    def find(self, clock: int) -> int:
        """Index of the run holding ``clock``, or -1."""
        i = bisect_right(self.starts, clock) - 1
        return i if i >= 0 and clock < self.ends[i] else -1

    def covers(self, start: int, end: int) -> bool:
        """True if every clock of ``[start, end)`` is in some run."""
        while start < end:
            i = self.find(start)
            if i < 0:
                return False
            start = self.ends[i]
        return True

    def add(self, start: int, end: int, code: int, deleted: bool = False) -> None:
        """Record ``[start, end)`` under ``code`` (already deleted if ``deleted``); parts already
        recorded are kept as they are."""
        starts, ends = self.starts, self.ends
        flag = 1 if deleted else 0
        if not starts or start >= ends[-1]:  # the usual case: clocks only grow
            if starts and start == ends[-1] and self.codes[-1] == code and self.deleted[-1] == flag:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
                self.codes.append(code)
                self.deleted.append(flag)
            return
        i = bisect_right(starts, start) - 1
        cur = start
        if i >= 0 and ends[i] > cur:
            cur = ends[i]
        i += 1
        while cur < end:
            if i < len(starts) and starts[i] <= cur:
                cur = max(cur, ends[i])
                i += 1
                continue
            stop = min(starts[i], end) if i < len(starts) else end
            self._insert(i, cur, stop, code, flag)
            i += 1
            cur = stop

    def delete(self, start: int, end: int) -> None:
        """Mark the recorded parts of ``[start, end)`` deleted, splitting runs at the edges."""
        starts, ends, deleted = self.starts, self.ends, self.deleted
        i = bisect_right(starts, start) - 1
        if i < 0 or ends[i] <= start:
            i += 1
        while i < len(starts) and starts[i] < end:
            run_start, run_end = starts[i], ends[i]
            if deleted[i]:
                i += 1
            elif run_start < start:  # keep the head live, go on with the tail
                ends[i] = start
                self._insert(i + 1, start, run_end, self.codes[i], 0)
                i += 1
            elif run_end > end:  # delete the head, keep the tail live
                ends[i] = end
                deleted[i] = 1
                self._insert(i + 1, end, run_end, self.codes[i], 0)
                return
            else:
                deleted[i] = 1
                i += 1

    def is_deleted(self, clock: int) -> bool:
        """True if ``clock`` is recorded and deleted."""
        i = self.find(clock)
        return i >= 0 and bool(self.deleted[i])

    def live(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """The live recorded parts of ``[start, end)``, as ``(start, end, code)``."""
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, start) - 1
        if i < 0 or ends[i] <= start:
            i += 1
        found = []
        while i < len(starts) and starts[i] < end:
            if not self.deleted[i]:
                found.append((max(starts[i], start), min(ends[i], end), self.codes[i]))
            i += 1
        return found

    def set_code(self, clock: int, code: int) -> None:
        """Give the run holding ``clock`` (which must be recorded) another code."""
        self.codes[self.find(clock)] = code

    def compact(self) -> None:
        """Merge adjacent runs with the same code and deleted flag (after :meth:`set_code`)."""
        starts, ends, codes, deleted = self.starts, self.ends, self.codes, self.deleted
        keep = 0
        for i in range(1, len(starts)):
            if starts[i] == ends[keep] and codes[i] == codes[keep] and deleted[i] == deleted[keep]:
                ends[keep] = ends[i]
                continue
            keep += 1
            starts[keep], ends[keep], codes[keep], deleted[keep] = starts[i], ends[i], codes[i], deleted[i]
        if starts:
            del starts[keep + 1 :], ends[keep + 1 :], codes[keep + 1 :], deleted[keep + 1 :]

    def first_live(self, start: int, end: int) -> tuple[int, int] | None:
        """(clock, key code) of the first live recorded clock in ``[start, end)``, or None."""
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, start) - 1
        if i < 0 or ends[i] <= start:
            i += 1
        while i < len(starts) and starts[i] < end:
            if not self.deleted[i]:
                return max(starts[i], start), self.codes[i]
            i += 1
        return None

    def __len__(self) -> int:
        return len(self.starts)

    def _insert(self, i: int, start: int, end: int, code: int, deleted: int) -> None:
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.codes.insert(i, code)
        self.deleted.insert(i, deleted)
