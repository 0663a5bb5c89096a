"""A connection's writer merges queued runs of one calendar's updates and keeps message order."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from wire import NOW

from accord.engine.model import CalendarId
from accord.engine.protocol import Ack, SyncUpdate, decode_framed
from accord.engine.replica import Replica
from accord.engine.sync import PeerSync
from accord.relay.auth import OPEN_GRANT
from accord.relay.connection import Connection, _Update
from accord.relay.metrics import Metrics


def updates(calendar: str, count: int) -> tuple[Replica, list[bytes]]:
    source = Replica(calendar, actor="desk")
    for i in range(count):
        source.calendar.book(resource="room-1", start=f"2026-12-01T{8 + i:02d}:00Z", end=f"2026-12-01T{8 + i:02d}:30Z",
                             patient="p", now=NOW)
    return source, [c.update for c in source.take_changes()]


def test_runs_of_one_calendars_updates_are_merged_in_order() -> None:
    relay: Any = SimpleNamespace(metrics=Metrics())
    sync = PeerSync()
    connection = Connection(relay, websocket=None, kind="terminal", grant=OPEN_GRANT, sync=sync)  # type: ignore[arg-type]
    a_source, a = updates("cal-a", 3)
    b_source, b = updates("cal-b", 1)
    ack = sync.ack("cal-a", a_source.state_vector())

    def item(cal: str, update: bytes) -> _Update:
        return _Update(CalendarId(cal), update, sync.update(cal, update))

    batch: list[bytes | _Update] = [item("cal-a", a[0]), item("cal-a", a[1]), ack, item("cal-b", b[0]), item("cal-a", a[2])]
    messages = [decode_framed(m) for m in connection._coalesce(batch)]
    assert [(name, type(message)) for name, message in messages] == [
        ("cal-a", SyncUpdate), ("cal-a", Ack), ("cal-b", SyncUpdate), ("cal-a", SyncUpdate)]
    receiver_a, receiver_b = Replica("cal-a"), Replica("cal-b")
    for name, message in messages:
        if isinstance(message, SyncUpdate):
            (receiver_a if name == "cal-a" else receiver_b).apply(message.update)
    assert receiver_a.calendar.to_py() == a_source.calendar.to_py()
    assert receiver_b.calendar.to_py() == b_source.calendar.to_py()


def test_a_lone_update_is_sent_as_framed_without_merging() -> None:
    relay: Any = SimpleNamespace(metrics=Metrics())
    sync = PeerSync("cal-a")
    connection = Connection(relay, websocket=None, kind="yjs", grant=OPEN_GRANT, sync=sync)  # type: ignore[arg-type]
    _, (only,) = updates("cal-a", 1)
    framed = sync.update("cal-a", only)
    assert connection._coalesce([_Update(CalendarId("cal-a"), only, framed)]) == [framed]
