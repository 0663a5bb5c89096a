"""An in-memory :class:`~engine.storage.Storage` for tests and ephemeral relays (not durable)."""

from __future__ import annotations

from collections.abc import Iterable

from ..audit import GENESIS, AuditRecord, AuditRow, chain
from ..model import CalendarId
from ..protocol import encode_state_vector
from .state_vectors import advance, update_spans


class MemoryStorage:
    """Keeps the log in dicts; ``append`` is "durable" for the life of the process only."""

    def __init__(self) -> None:
        self._rows: dict[CalendarId, list[tuple[int, bytes]]] = {}
        self._meta: dict[str, str] = {}
        self._states: dict[CalendarId, dict[int, int]] = {}
        self._seq = 0
        self._audit: dict[str, list[AuditRow]] = {}
        self._audit_keys: dict[str, set[str]] = {}
        self.commits = 0

    async def append(self, calendar: CalendarId, update: bytes) -> int:
        return (await self.append_many([(calendar, update)]))[0]

    async def append_many(self, items: list[tuple[CalendarId, bytes]], *,
                          audit: list[AuditRecord] | None = None) -> list[int]:
        for record in audit or ():
            rows = self._audit.setdefault(record.calendar, [])
            keys = self._audit_keys.setdefault(record.calendar, set())
            if record.key in keys:
                continue
            keys.add(record.key)
            rows += chain(record.calendar, (rows[-1].n, rows[-1].hash) if rows else (0, GENESIS), [record])
        seqs = []
        for calendar, update in items:
            self._seq += 1
            self._rows.setdefault(calendar, []).append((self._seq, bytes(update)))
            advance(self._states.setdefault(calendar, {}), update_spans(update))
            seqs.append(self._seq)
        self.commits += 1
        return seqs

    async def load(self, calendar: CalendarId) -> list[bytes]:
        return [data for _, data in self._rows.get(calendar, [])]

    async def log_length(self, calendar: CalendarId) -> tuple[int, int]:
        rows = self._rows.get(calendar, [])
        return len(rows), (rows[-1][0] if rows else 0)

    async def compact(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        rows = self._rows.get(calendar, [])
        kept = [(seq, data) for seq, data in rows if seq > upto_seq]
        self._rows[calendar] = [(upto_seq, bytes(snapshot)), *kept]
        advance(self._states.setdefault(calendar, {}), update_spans(snapshot))

    async def state_vectors(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        return {name: encode_state_vector(self._states[name]) for name in calendars if name in self._states}

    async def state_vector_page(self, after: str, limit: int) -> list[tuple[CalendarId, bytes]]:
        names = sorted(name for name in self._states if name > after)[:limit]
        return [(name, encode_state_vector(self._states[name])) for name in names]

    async def calendars(self) -> list[CalendarId]:
        return sorted(name for name, rows in self._rows.items() if rows)

    async def audit_log(self, calendar: CalendarId) -> list[AuditRow]:
        return list(self._audit.get(calendar, []))

    async def audit_calendars(self) -> list[CalendarId]:
        return sorted(CalendarId(name) for name, rows in self._audit.items() if rows)

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    async def close(self) -> None:
        return None
