"""``accord store check|compact`` through the CLI dispatcher (and once as a real process)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from accord.cli import main
from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import open_storage

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
CALENDARS = (CalendarId("clinic-1"), CalendarId("clinic-2"))


def build_store(path: Path | str, bookings: int = 5) -> dict[str, dict[str, Any]]:
    """A store with one row per change for two calendars; returns each calendar's document."""
    documents = {}
    updates: list[tuple[CalendarId, bytes]] = []
    for name in CALENDARS:
        replica = Replica(name, actor="desk", client_id=1)
        for i in range(bookings):
            start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(hours=i)
            made = replica.calendar.book(resource="room-1", start=start, end=start + timedelta(minutes=30),
                                         patient=f"P-{i}", now=NOW)
            replica.calendar.edit(made.id, note="checked", now=NOW)
        updates += [(name, change.update) for change in replica.take_changes()]
        documents[name] = replica.calendar.to_py()

    async def write() -> None:
        store = await open_storage(path)
        for name, update in updates:
            await store.append(name, update)
        await store.close()

    asyncio.run(write())
    return documents


def stored(path: Path | str) -> dict[str, tuple[int, dict[str, Any]]]:
    """Each calendar's row count and the document its rows load into."""

    async def read() -> dict[str, tuple[int, dict[str, Any]]]:
        store = await open_storage(path)
        try:
            out = {}
            for name in await store.calendars():
                replica = Replica(name, actor="reader", client_id=7)
                replica.load(await store.load(name))
                out[name] = ((await store.log_length(name))[0], replica.calendar.to_py())
            return out
        finally:
            await store.close()

    return asyncio.run(read())


def corrupt_row(path: Path, seq: int) -> None:
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT data FROM updates WHERE seq = ?", (seq,)).fetchone()
        conn.execute("UPDATE updates SET data = ? WHERE seq = ?", (bytes(b ^ 0xFF for b in data[:8]) + data[8:], seq))
    conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_of_a_healthy_store_exits_0_and_lists_calendars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.sqlite"
    build_store(path)
    assert main(["store", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "clinic-1: 10 rows" in out and "5 reservations" in out
    assert out.strip().endswith("ok")


def test_check_json_reports_ok_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.sqlite"
    build_store(path)
    assert main(["store", "check", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["problems"] == []
    assert report["calendars"]["clinic-2"]["rows"] == 10
    assert report["calendars"]["clinic-2"]["reservations"] == 5


def test_check_of_a_corrupt_row_exits_1_names_the_row_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.sqlite"
    build_store(path)
    corrupt_row(path, 3)
    before = digest(path)
    assert main(["store", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "calendar 'clinic-1': stored update row 3 is corrupt" in out
    assert "nothing was changed" in out
    assert digest(path) == before


def test_compact_merges_each_log_into_one_row_and_keeps_the_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "relay.sqlite"
    documents = build_store(path)
    assert {name: rows for name, (rows, _) in stored(path).items()} == {"clinic-1": 10, "clinic-2": 10}
    assert main(["store", "compact", str(path)]) == 0
    assert "clinic-1: 10 -> 1 rows" in capsys.readouterr().out
    after = stored(path)
    assert {name: rows for name, (rows, _) in after.items()} == {"clinic-1": 1, "clinic-2": 1}
    assert {name: document for name, (_, document) in after.items()} == documents
    assert main(["store", "check", str(path)]) == 0


def test_compact_refuses_to_merge_over_a_corrupt_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.sqlite"
    build_store(path)
    corrupt_row(path, 2)
    before = digest(path)
    assert main(["store", "compact", str(path)]) == 1
    assert "row 2 is corrupt" in capsys.readouterr().err
    assert digest(path) == before


def test_check_of_a_missing_file_exits_1_without_creating_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.sqlite"
    assert main(["store", "check", str(path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not path.exists()


def test_check_of_a_foreign_file_exits_1_and_leaves_it_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"not a database at all" * 50)
    before = digest(path)
    assert main(["store", "check", str(path)]) == 1
    assert "is it an accord database" in capsys.readouterr().err
    assert digest(path) == before


def test_store_without_an_action_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["store"])
    assert info.value.code == 2


def test_accord_store_check_runs_as_a_command(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    build_store(path, bookings=2)
    accord = Path(sys.executable).parent / "accord"
    healthy = subprocess.run([str(accord), "store", "check", str(path)], capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    assert "clinic-1: 4 rows" in healthy.stdout
    corrupt_row(path, 1)
    damaged = subprocess.run([str(accord), "store", "check", str(path)], capture_output=True, text=True, timeout=60)
    assert damaged.returncode == 1
    assert "row 1 is corrupt" in damaged.stdout


def test_check_refuses_an_empty_file_and_leaves_it_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert main(["store", "check", str(empty)]) == 1
    assert empty.read_bytes() == b""


def test_store_commands_take_a_postgresql_url(postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    documents = build_store(postgres_url)
    assert main(["store", "check", postgres_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    counts = report["calendars"]["clinic-1"]
    assert report["ok"] is True and (counts["rows"], counts["reservations"], counts["audit_rows"]) == (10, 5, 0)
    assert main(["store", "compact", postgres_url]) == 0
    assert stored(postgres_url) == {name: (1, doc) for name, doc in documents.items()}
    assert main(["store", "history", postgres_url, "clinic-1"]) == 0
    assert "no audit entries" in capsys.readouterr().out
    assert main(["store", "export", postgres_url, "--fhir", str(tmp_path / "out.ndjson")]) == 0
    assert '"resourceType":"Appointment"' in (tmp_path / "out.ndjson").read_text()
    assert main(["store", "backup", postgres_url, str(tmp_path / "copy.sqlite")]) == 2
    assert "pg_dump" in capsys.readouterr().err
