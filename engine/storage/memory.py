"""An in-memory :class:`~engine.storage.Storage` for tests and ephemeral relays (not durable)."""

from __future__ import annotations

from ..model import CalendarId


class MemoryStorage:
    """Keeps the log in dicts; ``append`` is "durable" for the life of the process only."""

    def __init__(self) -> None:
        self._rows: dict[CalendarId, list[tuple[int, bytes]]] = {}
        self._meta: dict[str, str] = {}
        self._seq = 0
        self.commits = 0

    async def append(self, calendar: CalendarId, update: bytes) -> int:
        return (await self.append_many([(calendar, update)]))[0]

    async def append_many(self, items: list[tuple[CalendarId, bytes]]) -> list[int]:
        seqs = []
        for calendar, update in items:
            self._seq += 1
            self._rows.setdefault(calendar, []).append((self._seq, bytes(update)))
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

    async def calendars(self) -> list[CalendarId]:
        return sorted(name for name, rows in self._rows.items() if rows)

    async def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    async def close(self) -> None:
        return None
