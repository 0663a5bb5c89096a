"""FHIR search parameters and the error every FHIR answer can become (:class:`Problem`)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from datetime import datetime, timedelta

from accord.engine.errors import InvalidReservation
from accord.engine.model import Reservation, parse_time


class Problem(Exception):
    """An error answer: HTTP status, issue code, diagnostics, the field it concerns."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.expression = status, code, expression


def among(values: set[str], *reads: Callable[[Reservation], str]) -> Callable[[Reservation], bool]:
    """A test: one of ``reads`` of a reservation is in ``values``."""
    return lambda r: any(read(r) in values for read in reads)


def whole(text: str, field: str, lo: int, hi: int) -> int:
    """``text`` as a whole number in ``[lo, hi]``, else a 400 naming ``field``."""
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise Problem(400, "invalid", f"{field}: a whole number from {lo} to {hi}", field)
    return int(text)


def instant(text: str, field: str) -> datetime:
    """A FHIR date (midnight UTC) or instant, else a 400 naming ``field``."""
    value = text.strip()
    if len(value) == 10:
        value += "T00:00:00Z"
    try:
        return parse_time(value)
    except InvalidReservation as exc:
        raise Problem(400, "invalid", f"{field}: {exc}", field) from None


def prefixed(text: str, field: str) -> tuple[str, datetime]:
    """A date search value's comparison prefix (``eq`` if none) and time."""
    prefix = text[:2] if text[:2] in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap") else "eq"
    return prefix, instant(text[2:] if text[:2] == prefix else text, field)


def time_test(text: str, field: str, span: Callable[[Reservation], tuple[datetime, datetime]]
               ) -> Callable[[Reservation], bool]:
    """A test for one ``date``/``_lastUpdated`` search value; ``span`` reads the compared
    interval (``date``: the shown slot overlaps the bound, as FHIR's period semantics say)."""
    prefix, when = prefixed(text, field)
    day = len(text.removeprefix(prefix)) == 10
    upper = when + timedelta(days=1) if day else when
    tests: dict[str, Callable[[datetime, datetime], bool]] = {
        "ge": lambda s, e: e > when if field == "date" else s >= when,
        "gt": lambda s, e: e > upper if field == "date" else s > upper,
        "lt": lambda s, e: s < when,
        "le": lambda s, e: s < upper if day else s <= when,
        "eq": lambda s, e: s < upper and e > when if day else s <= when < max(e, s + timedelta(seconds=1)),
    }
    if prefix not in tests:
        raise Problem(400, "not-supported", f"{field}: prefix {prefix!r} is not supported (use ge, gt, le, lt, eq)",
                      field)
    test = tests[prefix]
    return lambda r: test(*span(r))


def page_url(base: str, kind: str, query: list[tuple[str, str]], count: int, offset: int) -> str:
    """A paging link: the same search at ``offset``."""
    return f"{base}/{kind}?" + urllib.parse.urlencode([*query, ("_count", str(count)), ("_offset", str(offset))])
