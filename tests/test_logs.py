"""Log lines: ``--log-format json|text``, RFC 3339 times with offset, no patient data or tokens."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from relays import RelayProcess
from wire import WireClient

from accord.logs import JsonFormatter, KeyValueFormatter

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}([+-]\d\d:\d\d|Z)")
PATIENT = "P-ZEBRA-73519"  # distinctive: any occurrence in a log line is a leak
TOKEN = "tok-ORCHID-9f2c41d7e0"
PEEK_TOKEN = "tok-WALLBOARD-55ab1c"


def record(message: str = "peer connected", exc: bool = False, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("accord.test").makeRecord("accord.test", logging.INFO, __file__, 1, message, (), None,
                                                       extra=extra)
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            made.exc_info = sys.exc_info()
    return made


def assert_rfc3339_with_offset(text: str) -> None:
    assert RFC3339.fullmatch(text), text
    assert datetime.fromisoformat(text).utcoffset() is not None


def test_json_lines_carry_time_level_logger_message_and_extra_fields() -> None:
    line = json.loads(JsonFormatter().format(record(peer="ws://b:8765", calendar="clinic-1", count=3, level="x")))
    assert_rfc3339_with_offset(line["time"])
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "accord.test", "peer connected")
    assert (line["peer"], line["calendar"], line["count"]) == ("ws://b:8765", "clinic-1", 3)
    assert line["extra.level"] == "x"  # an extra named like a standard key does not replace it


def test_json_lines_hold_exceptions_and_values_json_cannot() -> None:
    text = JsonFormatter().format(record(exc=True, path=Path("/var/lib/accord"), when=date(2026, 12, 1)))
    assert "\n" not in text  # one line, even with a traceback
    line = json.loads(text)
    assert "ValueError: boom" in line["exception"]
    assert (line["path"], line["when"]) == ("/var/lib/accord", "2026-12-01")


def test_text_lines_start_with_an_rfc3339_time_with_offset() -> None:
    text = KeyValueFormatter().format(record(calendar="clinic-1"))
    stamp, rest = text.split(" ", 1)
    assert_rfc3339_with_offset(stamp)
    assert rest == "INFO accord.test: peer connected calendar=clinic-1"


def leaks(text: str) -> list[str]:
    return [line for line in text.splitlines() if PATIENT in line or TOKEN in line or PEEK_TOKEN in line]


@pytest.mark.slow
async def test_relay_and_terminal_json_logs_parse_and_hold_no_patient_data_or_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{TOKEN} terminal clinic-*\n{PEEK_TOKEN} read-only clinic-*\n")
    relay = RelayProcess(tmp_path, "relay-json", "--tokens", str(tokens), "--home", "clinic-*",
                         "--log-format", "json", "--log-level", "DEBUG")
    day = (datetime.now().astimezone() + timedelta(days=2)).date()
    try:
        await relay.start()
        # A stock y-websocket client passes its token in the URL: the relay must not log that either.
        async with WireClient(relay.url, token=PEEK_TOKEN, calendar="clinic-1") as board:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "accord", "terminal", "book", "--store", str(tmp_path / "desk.sqlite"),
                "--relay", relay.url, "--token", TOKEN, "--calendar", "clinic-1", "--as", "desk-1", "--utc",
                "--resource", "room-1", "--start", f"{day}T09:00", "--end", f"{day}T09:30", "--patient", PATIENT,
                "--note", f"for {PATIENT}", "--wait", "--json", "--log-format", "json", "--log-level", "DEBUG",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")})
            async with asyncio.timeout(60):
                out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            await board.wait_for(lambda: PATIENT in json.dumps(board.replica("clinic-1").calendar.to_py()))
    finally:
        await relay.stop()
        relay.cleanup()
    relay_log = relay.log_path.read_text()
    terminal_log = err.decode()
    assert "booking decided" in relay_log and "connection opened" in relay_log  # it logged what happened...
    assert '"level": "DEBUG"' in relay_log + terminal_log
    assert PATIENT in out.decode()  # ...and the patient really passed through both (the command's own output)
    for name, text in (("relay", relay_log), ("terminal", terminal_log)):
        assert not leaks(text), f"{name} log leaks: {leaks(text)}"
        lines = text.splitlines()
        assert lines, name
        for line in lines:
            entry = json.loads(line)  # every line is JSON (the terminal's notes too, under --json)
            if "level" in entry:
                assert_rfc3339_with_offset(entry["time"])
    assert any("level" in json.loads(line) for line in terminal_log.splitlines())
