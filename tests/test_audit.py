"""The audit trail: attributed entries on every relay, a tamper-evident chain, kept through
compaction and restarts, and no patient value anywhere in it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from relays import relay_config as _relay_config
from wire import NOW, WireClient

from accord.engine.audit import Op, document_entries
from accord.engine.model import Status
from accord.relay.server import Relay, RelayConfig
from accord.store_cli import check_store
from accord.store_cli import main as store_main
from accord.terminal.client import Terminal
from accord.terminal.link import Backoff

CAL = "clinic-1"
PATIENT = "P-SECRET-4711"
NOTE = "NOTE-SECRET-allergy"
TOKENS = ("desk2-secret terminal clinic-* name=desk-2\n"
          "desk1-secret terminal clinic-* name=desk-1\n"
          "nurse-secret terminal clinic-* name=nurse-3\n"
          "peer-secret peer * name=partner\n")


def relay_config(tmp_path: Path, relay_id: str, **kw: object) -> RelayConfig:
    """A test relay with the audit trail on (it is off by default: see --audit)."""
    return _relay_config(tmp_path, relay_id, **{"audit": True, **kw})


async def trail_of(relay: Relay, rid: str, count: int) -> list[dict[str, object]]:
    """The stored entries of ``rid`` once the relay's document holds ``count`` and they are committed."""
    calendar = await relay.calendar(CAL)

    def enough() -> bool:
        return sum(f"\"res\":\"{rid}\"" in text for text in document_entries(calendar.receipts).values()) >= count

    await relay.wait_for(enough, 10)
    await relay.pipeline.drain()
    return [entry.to_json() for entry in await relay.audit(CAL, rid)]


async def test_booking_reschedule_and_cancel_on_two_relays_show_three_attributed_entries_on_both(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(TOKENS)
    r1_config = relay_config(tmp_path, "relay-1", tokens_path=tokens, home_globs=["clinic-*"])
    async with Relay(r1_config) as r1:
        r2_config = relay_config(tmp_path, "relay-2", tokens_path=tokens, peers=[r1.url], peer_token="peer-secret")
        async with Relay(r2_config) as r2:
            async with WireClient(r2.url, token="desk2-secret", actor="front-desk") as desk2:
                await desk2.open(CAL)
                await desk2.wait_synced(CAL)
                rid = await desk2.book(CAL, hour=9, patient=PATIENT, note=NOTE)
                await desk2.wait_acked(CAL)
            await trail_of(r1, rid, 1)
            async with WireClient(r1.url, token="desk1-secret", actor="ward-desk") as desk1:
                await desk1.open(CAL)
                await desk1.wait_synced(CAL)
                calendar = desk1.replica(CAL).calendar
                start = NOW.replace(hour=11)
                calendar.reschedule(rid, start=start, end=start + timedelta(minutes=15), now=NOW)
                await desk1.push(CAL)
                await desk1.wait_acked(CAL)
            async with Terminal(relay=r2.url, store=tmp_path / "nurse.sqlite", token="nurse-secret", name="nurse-pc",
                                backoff=Backoff(initial_s=0.05, max_s=0.2)) as nurse:
                await nurse.synced(calendars=[CAL])
                await trail_of(r2, rid, 2)  # the reschedule reached relay-2
                await nurse.synced(calendars=[CAL])
                cancelled = await nurse.cancel(CAL, rid, reason="patient called")
                assert cancelled.status is Status.CANCELLED
                await nurse.synced(calendars=[CAL])
            on_r1 = await trail_of(r1, rid, 3)
            on_r2 = await trail_of(r2, rid, 3)
    for trail in (on_r1, on_r2):
        assert [(e["relay"], e["by"], e["role"], e["actor"], e["op"]) for e in trail] == [
            ("relay-2", "desk-2", "terminal", "front-desk", Op.CREATE),
            ("relay-1", "desk-1", "terminal", "ward-desk", Op.UPDATE),
            ("relay-2", "nurse-3", "terminal", "nurse-pc", Op.UPDATE),
        ]
        create, reschedule, cancel = trail
        assert create["status_before"] is None and "patient" in create["fields"]  # the name, not the value
        assert {"start", "end"} <= set(reschedule["fields"])  # type: ignore[arg-type]
        assert "cancelled_at" in cancel["fields"] and cancel["status_after"] == "cancelled"  # type: ignore[operator]
        assert cancel["status_before"] in ("pending", "booked")
    assert {e["key"] for e in on_r1} == {e["key"] for e in on_r2}
    for path in (r1_config.db_path, r2_config.db_path):
        with sqlite3.connect(path) as conn:
            stored = " ".join(entry for (entry,) in conn.execute("SELECT entry || via FROM audit"))
        assert PATIENT not in stored and NOTE not in stored and "patient called" not in stored
        report = await check_store(Path(path))
        assert report["ok"], report["problems"]
    ours = [record for record in caplog.records if record.name.startswith("accord")]
    assert ours
    logged = " ".join(f"{record.getMessage()} {record.__dict__}" for record in ours)
    assert PATIENT not in logged and NOTE not in logged


async def book_and_edit(relay: Relay, edits: int) -> str:
    async with WireClient(relay.url, actor="desk") as desk:
        await desk.open(CAL)
        await desk.wait_synced(CAL)
        rid = await desk.book(CAL, patient=PATIENT)
        calendar = desk.replica(CAL).calendar
        for i in range(edits):
            calendar.edit(rid, note=f"{NOTE}-{i}", now=NOW)
            await desk.push(CAL)
        await desk.wait_acked(CAL)
    return rid


async def test_the_trail_survives_compaction_and_restart_and_the_chain_goes_on(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "relay-1", compact_rows=3)
    async with Relay(config) as relay:
        rid = await book_and_edit(relay, 6)
        await relay.pipeline.drain()
        assert relay.calendars.loaded[CAL].rows_in_log < 7  # compacted
        before = await relay.audit(CAL, rid)
    assert [e.op for e in before] == [Op.CREATE] + [Op.UPDATE] * 6
    assert all("note" in e.fields and "patient" not in e.fields for e in before[1:])  # only what changed
    async with Relay(config) as relay:
        assert [e.key for e in await relay.audit(CAL, rid)] == [e.key for e in before]
        await book_and_edit(relay, 1)
        await relay.pipeline.drain()
        after = await relay.audit(CAL)
    assert len(after) == len(before) + 2 and [e.key for e in after[:len(before)]] == [e.key for e in before]
    assert await asyncio.to_thread(store_main, ["compact", str(config.db_path)]) == 0
    report = await check_store(Path(config.db_path))
    assert report["ok"], report["problems"]
    assert report["calendars"][CAL]["audit_rows"] == len(after)  # type: ignore[index]


async def test_a_tampered_or_removed_audit_row_fails_store_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = relay_config(tmp_path, "relay-1")
    async with Relay(config) as relay:
        await book_and_edit(relay, 2)
        await relay.pipeline.drain()
    path = str(config.db_path)
    assert await asyncio.to_thread(store_main, ["check", path]) == 0
    clean = tmp_path / "clean.sqlite"
    with sqlite3.connect(path) as conn, sqlite3.connect(clean) as copy:
        conn.backup(copy)
    with sqlite3.connect(path) as conn:  # someone rewrites who did it
        conn.execute("UPDATE audit SET entry = replace(entry, '\"by\":\"open\"', '\"by\":\"someone\"') WHERE n = 2")
    capsys.readouterr()
    assert await asyncio.to_thread(store_main, ["check", path]) == 1
    assert "audit row 2 was altered" in capsys.readouterr().out
    with sqlite3.connect(clean) as conn:  # someone removes the last row (no broken link is left)
        conn.execute("DELETE FROM audit WHERE n = (SELECT max(n) FROM audit)")
    assert await asyncio.to_thread(store_main, ["check", str(clean)]) == 1
    assert "missing from the audit log" in capsys.readouterr().out


async def test_history_prints_who_where_when_what_without_values(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = relay_config(tmp_path, "relay-1")
    async with Relay(config) as relay:
        rid = await book_and_edit(relay, 1)
        await relay.pipeline.drain()
    capsys.readouterr()
    assert await asyncio.to_thread(store_main, ["history", str(config.db_path), CAL, rid]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "relay-1 open (admin) actor=desk create" in lines[0]
    assert "fields=" in lines[1] and "note" in lines[1]
    assert PATIENT not in "".join(lines) and NOTE not in "".join(lines)
    assert await asyncio.to_thread(store_main, ["history", str(config.db_path), CAL, "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


async def test_a_client_cannot_overwrite_an_audit_entry(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "relay-1")) as relay:
        rid = await book_and_edit(relay, 0)
        async with WireClient(relay.url, actor="rogue") as rogue:
            await rogue.open(CAL)
            await rogue.wait_synced(CAL)
            receipts = rogue.replica(CAL).calendar.receipts
            await rogue.wait_for(lambda: len(document_entries(receipts)) == 1)
            key = next(iter(document_entries(receipts)))
            receipts[key] = '{"v":1}'
            await rogue.push(CAL)
            async with asyncio.timeout(10):
                await rogue.closed.wait()
            assert rogue.close_code == 4403
        assert len(await relay.audit(CAL, rid)) == 1


async def test_a_terminal_moving_to_another_relay_carries_the_entries_marked_as_its_word(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "relay-1")) as r1, Relay(relay_config(tmp_path, "relay-2")) as r2:
        async with WireClient(r1.url, actor="desk") as desk:  # the two relays are not peered
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            rid = await desk.book(CAL, patient=PATIENT)
            await desk.wait_acked(CAL)
            held = desk.replica(CAL)
            await desk.wait_for(lambda: len(document_entries(held.calendar.receipts)) == 1)  # the entry came back
        async with WireClient(r2.url, actor="desk") as moved:
            moved.replicas[CAL] = held
            await moved.open(CAL)
            await moved.wait_synced(CAL)
            await r2.wait_committed(CAL, held.state_vector())  # accepted, not refused as relay-only
            assert not moved.closed.is_set()
        await r2.pipeline.drain()
        carried = await r2.audit(CAL, rid)
        original = await r1.audit(CAL, rid)
    assert [(e.key, e.relay, e.via) for e in carried] == [(original[0].key, "relay-1", "client:open")]
    assert original[0].via == ""
    report = await check_store(Path(tmp_path / "relay-2.sqlite"))
    assert report["ok"], report["problems"]


async def test_a_relay_side_edit_for_a_token_is_recorded_as_that_tokens(tmp_path: Path) -> None:
    from accord.relay.auth import Grant, Role

    async with Relay(relay_config(tmp_path, "relay-1")) as relay:
        start = NOW.replace(hour=14)
        booked = await relay.edit(CAL, lambda cal: cal.book(resource="room-1", start=start, end=start + timedelta(minutes=20),
                                                            patient=PATIENT, now=NOW),
                                  by=Grant(Role.TERMINAL, ("clinic-*",), "fhir-app"))
        await relay.edit(CAL, lambda cal: cal.edit(booked.id, note=NOTE, now=NOW))  # no token: not recorded
        [entry] = await relay.audit(CAL, booked.id)
    assert (entry.by, entry.role, entry.relay, entry.op) == ("fhir-app", "terminal", "relay-1", Op.CREATE)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_both_stores_chain_audit_rows_in_the_update_commit_and_skip_repeats(tmp_path: Path, kind: str) -> None:
    from accord.engine.audit import AuditRecord, verify_chain
    from accord.engine.model import CalendarId
    from accord.engine.storage import MemoryStorage, SqliteStorage

    cal = CalendarId(CAL)
    store = MemoryStorage() if kind == "memory" else await SqliteStorage.open(tmp_path / "s.sqlite")
    try:
        first = [AuditRecord(CAL, "audit/r/1", '{"a":1}'), AuditRecord(CAL, "audit/r/1", '{"a":1}')]
        await store.append_many([(cal, b"\x00\x00")], audit=first)
        await store.append_many([(cal, b"\x00\x00")], audit=[AuditRecord(CAL, "audit/r/2", '{"a":2}', "client:x")])
        rows = await store.audit_log(cal)
        assert [(r.n, r.key, r.via) for r in rows] == [(1, "audit/r/1", ""), (2, "audit/r/2", "client:x")]
        assert verify_chain(CAL, rows) == [] and rows[1].prev == rows[0].hash
        assert await store.audit_calendars() == [cal]
    finally:
        await store.close()
    if kind == "sqlite":  # reopened: the chain goes on from the stored tail
        store = await SqliteStorage.open(tmp_path / "s.sqlite")
        try:
            await store.append_many([(cal, b"\x00\x00")], audit=[AuditRecord(CAL, "audit/r/3", '{"a":3}')])
            rows = await store.audit_log(cal)
            assert [r.n for r in rows] == [1, 2, 3] and verify_chain(CAL, rows) == []
        finally:
            await store.close()


async def test_a_relay_started_with_no_audit_records_no_trail(tmp_path: Path) -> None:
    from relays import Relay, relay_config
    from wire import WireClient

    async with Relay(relay_config(tmp_path, "r1", audit=False)) as relay:
        async with WireClient(relay.url, actor="desk") as desk:
            await desk.open("clinic-1")
            await desk.book("clinic-1")
            await desk.wait_acked("clinic-1")
            assert not [key for key in desk.replica("clinic-1").calendar.receipts if key.startswith("audit/")]
        assert await relay.audit("clinic-1") == []
