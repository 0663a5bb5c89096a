"""``accord terminal``: exit codes, messages and end-to-end runs in separate processes against real relays."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from relays import Relay, free_port, relay_config

from accord.terminal import cli
from accord.terminal.client import Terminal

CAL = "clinic-1"
PATIENT = "PAT-ADA-LOVELACE-1815"  # a distinctive reference, to prove it never reaches the logs
NOTE = "allergic to latex"
ACCORD_BIN = Path(sys.executable).with_name("accord")
ACCORD = [str(ACCORD_BIN)] if ACCORD_BIN.exists() else [sys.executable, "-m", "accord"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACCORD_STORE", "ACCORD_RELAY", "ACCORD_TOKEN", "ACCORD_CALENDAR", "ACCORD_AS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCORD_TZ", "UTC")  # the times these tests read back are UTC, whatever this machine's zone
    monkeypatch.setattr(cli.logs, "configure", lambda *_args: None)  # in-process runs keep pytest's log handlers


def book_args(store: Path, relay: str, start: str = "2099-12-01T09:00Z", end: str = "2099-12-01T09:30Z") -> list[str]:
    return ["book", "--store", str(store), "--relay", relay, "--calendar", CAL, "--as", "desk-1", "--resource", "room-1",
            "--start", start, "--end", end, "--patient", PATIENT, "--note", NOTE]


# ---- in-process: usage and offline behaviour -------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["book", "--calendar", CAL, "--resource", "room-1"], "required: --start, --end, --patient"),
        (["frobnicate"], "invalid choice"),
        (["list", "--calendar", CAL, "--date", "2026-13-01"], "not a date"),
        (["sync", "--timeout", "-1"], "more than 0"),
        (["list", "--calendar", CAL, "--relay", "http://example.org"], "ws://"),
        (["list", "--calendar", "../etc"], "calendar name"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv: list[str], fragment: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([*argv, "--store", str(tmp_path / "t.sqlite")] if argv else argv)
    err = capsys.readouterr().err
    assert code == (1 if "calendar name" in fragment else 2)
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_calendar_and_empty_edit_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relay = f"ws://127.0.0.1:{free_port()}"
    assert cli.main(["list", "--store", str(tmp_path / "t.sqlite"), "--relay", relay]) == 2
    assert "give --calendar NAME or set ACCORD_CALENDAR" in capsys.readouterr().err
    assert cli.main(["edit", "abcd", "--calendar", CAL, "--store", str(tmp_path / "t.sqlite"), "--relay", relay]) == 2
    assert "--note" in capsys.readouterr().err


def test_errors_are_json_on_stderr_under_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["show", "deadbeef", "--calendar", CAL, "--store", str(tmp_path / "t.sqlite"),
                     "--relay", f"ws://127.0.0.1:{free_port()}", "--json"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    lines = [json.loads(line) for line in captured.err.splitlines()]
    assert lines[-1]["exit"] == 1 and "no reservation 'deadbeef'" in lines[-1]["error"]


def test_help_explains_every_option_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["book", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--store", "--relay", "--token", "--calendar", "--as", "--timeout", "--json", "--log-level",
                   "--resource", "--start", "--end", "--patient", "--service", "--note", "--wait",
                   "ACCORD_STORE", "ACCORD_RELAY", "ACCORD_TOKEN", "ACCORD_CALENDAR", "ACCORD_AS", "example"):
        assert option in text, option
    assert cli.main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


def test_offline_book_is_saved_locally_and_sync_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store, relay = tmp_path / "desk.sqlite", f"ws://127.0.0.1:{free_port()}"
    assert cli.main(book_args(store, relay)) == 0
    captured = capsys.readouterr()
    rid = captured.out.strip()
    assert len(rid) == 36 and "saved locally" in captured.err and "sync later" in captured.err
    monkeypatch.setenv("ACCORD_STORE", str(store))  # options also come from the environment
    monkeypatch.setenv("ACCORD_RELAY", relay)
    monkeypatch.setenv("ACCORD_CALENDAR", CAL)
    assert cli.main(["list"]) == 0
    captured = capsys.readouterr()
    assert rid[-8:] in captured.out and "saved locally" in captured.out and "room-1" in captured.out
    assert "unreachable" in captured.err
    assert cli.main(["show", rid[-8:], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["sync"], shown["note"]) == (rid, "local", NOTE)
    assert cli.main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["pending"], status["link"]) == (1, "offline")
    assert cli.main(["sync", "--timeout", "2"]) == 3
    assert "unreachable" in capsys.readouterr().err
    assert cli.main(["book", "--resource", "room-1", "--start", "2099-12-01T10:00Z", "--end", "2099-12-01T10:30Z",
                     "--patient", "P-1", "--wait"]) == 3  # saved, but no decision without the relay


def test_conflicts_listing_shows_overlapping_bookings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, relay = tmp_path / "desk.sqlite", f"ws://127.0.0.1:{free_port()}"
    assert cli.main(book_args(store, relay)) == 0
    assert cli.main(book_args(store, relay, start="2099-12-01T09:15Z", end="2099-12-01T09:45Z")) == 0
    assert cli.main(book_args(store, relay, start="2099-12-01T09:45Z", end="2099-12-01T10:00Z")) == 0
    capsys.readouterr()
    assert cli.main(["list", "--conflicts", "--json", "--store", str(store), "--relay", relay, "--calendar", CAL]) == 0
    [conflict] = json.loads(capsys.readouterr().out)["conflicts"]
    assert conflict["resource"] == "room-1"
    assert (conflict["start"], conflict["end"]) == ("2099-12-01T09:00:00Z", "2099-12-01T09:45:00Z")
    assert len(conflict["reservations"]) == 2
    assert cli.main(["list", "--conflicts", "--store", str(store), "--relay", relay, "--calendar", CAL]) == 0
    assert "2 bookings overlap, capacity 1" in capsys.readouterr().out


# ---- separate processes against real relays ---------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    return {**env, "PYTHONUNBUFFERED": "1", "ACCORD_TZ": "UTC", **extra}


async def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Run:
    proc = await asyncio.create_subprocess_exec(*ACCORD, "terminal", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env or cli_env())
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def test_cli_terminals_in_separate_processes_share_bookings(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL)
        desk1 = ["--store", str(tmp_path / "desk-1.sqlite"), "--as", "desk-1"]
        desk2 = ["--store", str(tmp_path / "desk-2.sqlite"), "--as", "desk-2"]
        booked = await run("book", *desk1, "--resource", "room-1", "--start", "2099-12-01T09:00Z",
                           "--end", "2099-12-01T09:30Z", "--patient", PATIENT, "--note", NOTE,
                           "--log-level", "DEBUG", env=env)
        assert booked.code == 0, booked.err
        rid = booked.out.strip()
        assert PATIENT not in booked.err and NOTE not in booked.err  # DEBUG logs carry ids and counts only
        listed = await run("list", *desk2, "--json", env=env)
        assert listed.code == 0, listed.err
        [item] = json.loads(listed.out)["reservations"]
        assert (item["id"], item["created_by"], item["sync"]) == (rid, "desk-1", "stored")
        cancelled = await run("cancel", rid[-8:], "--reason", "duplicate", *desk2, env=env)
        assert cancelled.code == 0 and "cancelled" in cancelled.out, cancelled.err
        shown = await run("show", rid, "--json", *desk1, env=env)
        assert json.loads(shown.out)["status"] == "cancelled"
        synced = await run("sync", "--json", *desk1, env=env)
        assert synced.code == 0 and json.loads(synced.out)["pending"] == 0


async def test_cli_offline_booking_goes_out_with_the_next_sync(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(ACCORD_RELAY=f"ws://127.0.0.1:{port}", ACCORD_CALENDAR=CAL)
    booked = await run("book", "--store", str(tmp_path / "desk-1.sqlite"), "--resource", "room-1",
                       "--start", "2099-12-01T09:00Z", "--end", "2099-12-01T09:30Z", "--patient", "P-1", env=env)
    assert booked.code == 0 and "saved locally" in booked.err
    config = dataclasses.replace(relay_config(tmp_path, "r1"), port=port)
    async with Relay(config):
        synced = await run("sync", "--store", str(tmp_path / "desk-1.sqlite"), env=env)
        assert synced.code == 0, synced.err
        shown = await run("show", booked.out.strip(), "--json", "--store", str(tmp_path / "desk-2.sqlite"), env=env)
        assert shown.code == 0 and json.loads(shown.out)["sync"] == "stored", shown.err


async def test_cli_wrong_token_exits_4_and_rejected_booking_exits_5(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\n")
    async with Relay(relay_config(tmp_path, "home", tokens_path=tokens, home_globs=["clinic-*"])) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL, ACCORD_TOKEN="desk-secret")
        await relay.edit(CAL, lambda c: c.put_resource("room-1"))  # provisioned: the home takes it
        refused = await run("sync", "--token", "wrong", "--store", str(tmp_path / "x.sqlite"), env=env)
        assert refused.code == 4 and "refused" in refused.err and "--token" in refused.err
        slot = ["--resource", "room-1", "--start", "2099-12-01T09:00Z", "--end", "2099-12-01T09:30Z", "--patient", "P-1"]
        first = await run("book", *slot, "--wait", "--json", "--store", str(tmp_path / "desk-1.sqlite"), env=env)
        assert first.code == 0, first.err
        assert (json.loads(first.out)["status"], json.loads(first.out)["sync"]) == ("booked", "decided")
        second = await run("book", *slot, "--wait", "--store", str(tmp_path / "desk-2.sqlite"), env=env)
        assert second.code == 5 and "rejected" in second.err, second.err
        assert first.out and json.loads(first.out)["id"] in second.err  # names the booking it conflicts with


@contextlib.contextmanager
def sigint_for_children(inherited: str) -> Iterator[None]:
    """Start children with SIGINT at its default action, as a shell runs a foreground command, or
    ignored, as a non-interactive shell runs a background job (``make test &``): exec keeps an
    ignored signal and resets a caught one to its default."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN if inherited == "ignored" else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


async def read_until(stream: asyncio.StreamReader, fragment: bytes) -> bytes:
    """Read lines up to the first containing ``fragment``; fail (rather than spin) if the stream ends first."""
    seen = b""
    while fragment not in (line := await stream.readline()):
        assert line, f"the stream ended before {fragment!r}; it said: {seen.decode()}"
        seen += line
    return line


@pytest.mark.parametrize("inherited_sigint", ["default", "ignored"])
async def test_cli_watch_prints_changes_as_they_arrive_and_exits_130_on_ctrl_c(tmp_path: Path, inherited_sigint: str) -> None:
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        with sigint_for_children(inherited_sigint):
            proc = await asyncio.create_subprocess_exec(
                *ACCORD, "terminal", "watch", "--json", "--calendar", CAL, "--relay", relay.url,
                "--store", str(tmp_path / "watch.sqlite"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=cli_env(),
            )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(20):
                # The watch prints its first note once it handles SIGINT itself: from then on the
                # signal below stops it, whatever SIGINT disposition it was started with.
                await read_until(proc.stderr, b"connected")
                async with Terminal(relay=relay.url, store=tmp_path / "desk.sqlite", name="desk-1") as desk:
                    reservation = await desk.book(CAL, resource="room-1", start="2099-12-01T09:00Z",
                                                  end="2099-12-01T09:30Z", patient="P-7")
                    await desk.synced(timeout=5)
                line = json.loads(await proc.stdout.readline())
                assert (line["kind"], line["id"], line["reservation"]["patient"]) == ("remote", reservation.id, "P-7")
                proc.send_signal(signal.SIGINT)
                assert await proc.wait() == 130
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_cli_watch_exits_0_on_sigterm_also_while_the_relay_is_unreachable(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *ACCORD, "terminal", "watch", "--calendar", CAL, "--relay", f"ws://127.0.0.1:{free_port()}",
        "--store", str(tmp_path / "watch.sqlite"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            await read_until(proc.stderr, b"unreachable")  # the first note: SIGTERM is handled from then on
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0  # a service manager stopping the watch: a clean exit
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_resource_needs_an_admin_token_and_sets_the_capacity(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\nadmin-secret admin clinic-*\n")
    async with Relay(relay_config(tmp_path, "home", tokens_path=tokens, home_globs=["clinic-*"])) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL)
        desk = await run("resource", "room-1", "--capacity", "2", "--token", "desk-secret",
                         "--store", str(tmp_path / "desk.sqlite"), env=env)
        assert desk.code == 4 and "admin token" in desk.err, desk.err
        assert (await relay.calendar(CAL)).capacity("room-1") == 1
        bad = await run("resource", "room-1", "--capacity", "0", "--store", str(tmp_path / "admin.sqlite"), env=env)
        assert bad.code == 2 and "1 to 1000" in bad.err
        admin = await run("resource", "room-1", "--name", "Room 1", "--capacity", "2", "--token", "admin-secret",
                          "--json", "--store", str(tmp_path / "admin.sqlite"), env=env)
        assert admin.code == 0, admin.err
        assert json.loads(admin.out) == {"calendar": CAL, "id": "room-1", "name": "Room 1", "capacity": 2}
        assert (await relay.calendar(CAL)).capacity("room-1") == 2
        listed = await run("resources", "--json", "--token", "desk-secret", "--store", str(tmp_path / "desk2.sqlite"),
                           env=env)
        assert json.loads(listed.out)["resources"] == [{"id": "room-1", "name": "Room 1", "capacity": 2}]


async def test_cli_hold_ttl_is_an_admin_setting_the_relay_validates(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\nadmin-secret admin clinic-*\n")
    async with Relay(relay_config(tmp_path, "home", tokens_path=tokens, home_globs=["clinic-*"])) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL)
        desk = await run("hold-ttl", "900", "--token", "desk-secret", "--store", str(tmp_path / "desk.sqlite"), env=env)
        assert desk.code == 4 and "admin token" in desk.err, desk.err
        bad = await run("hold-ttl", "5", "--store", str(tmp_path / "admin.sqlite"), env=env)
        assert bad.code == 2 and "60 to 2592000" in bad.err
        admin = await run("hold-ttl", "900", "--token", "admin-secret", "--json",
                          "--store", str(tmp_path / "admin.sqlite"), env=env)
        assert admin.code == 0, admin.err
        assert json.loads(admin.out) == {"calendar": CAL, "hold_ttl_s": 900}
        assert (await relay.calendar(CAL)).hold_ttl == timedelta(seconds=900)
        shown = await run("hold-ttl", "--token", "desk-secret", "--store", str(tmp_path / "desk2.sqlite"), env=env)
        assert shown.code == 0 and "900" in shown.out
        off = await run("hold-ttl", "off", "--token", "admin-secret", "--store", str(tmp_path / "admin.sqlite"), env=env)
        assert off.code == 0 and (await relay.calendar(CAL)).hold_ttl is None
