"""What the front desk types and reads: local times, ids as shown, refusals of likely typos, the
lifecycle commands, and output that says only what is true (in-process CLI, no relay reachable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from relays import Relay, free_port, relay_config
from test_terminal_cli import Run, cli_env, run

from accord.terminal import cli

CAL = "clinic-1"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACCORD_STORE", "ACCORD_RELAY", "ACCORD_TOKEN", "ACCORD_CALENDAR", "ACCORD_AS", "ACCORD_TZ"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli.logs, "configure", lambda *_args: None)


class Desk:
    """``accord terminal`` runs against one store, with a relay nobody listens on."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.common = ["--store", str(tmp_path / "desk.sqlite"), "--relay", f"ws://127.0.0.1:{free_port()}",
                       "--calendar", CAL, "--timeout", "0.2"]
        self.capsys = capsys

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, *self.common])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def book(self, *extra: str, start: str = "2099-12-01T09:00", end: str = "2099-12-01T09:30") -> str:
        code, out, err = self.run("book", "--resource", "room-1", "--start", start, "--end", end,
                                  "--patient", "P-0042", *extra)
        assert code == 0, err
        return out.strip()


@pytest.fixture
def desk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Desk:
    return Desk(tmp_path, capsys)


def test_local_times_are_read_and_shown_in_the_chosen_zone(desk: Desk) -> None:
    rid = desk.book("--tz", "Europe/Berlin")  # 09:00 in Berlin in December is 08:00 UTC
    code, out, _ = desk.run("show", rid, "--json")
    assert json.loads(out)["start"] == "2099-12-01T08:00:00Z"
    _, berlin, _ = desk.run("list", "--tz", "Europe/Berlin")
    assert "TIME (Europe/Berlin)" in berlin and "2099-12-01 09:00-09:30" in berlin
    _, utc, _ = desk.run("list", "--utc")
    assert "TIME (UTC)" in utc and "2099-12-01 08:00-08:30" in utc
    # --date is a local day: a booking at 23:30 Berlin time is on the 1st there, the 1st in UTC too,
    # but one at 00:30 on the 2nd in Berlin is 23:30 on the 1st in UTC.
    late = desk.book("--tz", "Europe/Berlin", start="2099-12-02T00:30", end="2099-12-02T01:00")
    _, day_berlin, _ = desk.run("list", "--tz", "Europe/Berlin", "--date", "2099-12-01", "--json")
    _, day_utc, _ = desk.run("list", "--utc", "--date", "2099-12-01", "--json")
    assert late not in {r["id"] for r in json.loads(day_berlin)["reservations"]}
    assert late in {r["id"] for r in json.loads(day_utc)["reservations"]}
    # Times with an offset mean what they say, whatever the zone.
    offset = desk.book("--tz", "Asia/Tokyo", start="2099-12-03T09:00+01:00", end="2099-12-03T09:30+01:00")
    assert json.loads(desk.run("show", offset, "--json")[1])["start"] == "2099-12-03T08:00:00Z"
    # The calendar's own zone (an admin setting; this relay is open) is the default.
    assert desk.run("time-zone", "America/New_York")[0] == 0
    _, shown, _ = desk.run("list")
    assert "TIME (America/New_York)" in shown and "2099-12-01 03:00-03:30" in shown
    code, _, err = desk.run("list", "--tz", "Mars/Olympus")
    assert code == 2 and "unknown time zone" in err


def test_ids_are_typed_as_list_shows_them_and_ambiguity_lists_candidates(desk: Desk) -> None:
    first = desk.book()
    second = desk.book(start="2099-12-01T10:00", end="2099-12-01T10:30")
    _, listed, _ = desk.run("list")
    assert first[-8:] in listed and second[-8:] in listed
    for typed in (first[-8:], first[-8:][:5], first):
        code, out, err = desk.run("show", typed, "--json")
        assert code == 0 and json.loads(out)["id"] == first, err
    code, _, err = desk.run("show", first[:8])  # the timestamp both ids begin with
    assert code == 1 and "no reservation" in err


def test_likely_typos_are_refused_not_saved(desk: Desk) -> None:
    code, _, err = desk.run("book", "--resource", "room-1", "--start", "2020-12-01T09:00", "--end",
                            "2020-12-01T09:30", "--patient", "P-1")
    assert code == 2 and "in the past" in err and "--allow-past" in err
    code, _, err = desk.run("book", "--resource", "room-1", "--start", "2099-12-01T09:00", "--end",
                            "2099-12-01T09:30", "--patient", "Jane Doe")
    assert code == 2 and "looks like a name" in err
    assert err.count("accord terminal") == 2 and "error: book: argument --patient" in err  # one prefix, and --help
    _, listed, notes = desk.run("list")
    assert "no reservations" in listed and "check the name" in notes  # nothing was saved
    assert desk.book("--allow-past", start="2020-12-01T09:00", end="2020-12-01T09:30")


async def test_noshow_fulfil_and_entered_in_error(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL, ACCORD_STORE=str(tmp_path / "desk.sqlite"))
        ids = []
        for hour in (10, 11, 12):
            booked = await run("book", "--resource", "room-1", "--start", f"2099-12-01T{hour}:00", "--end",
                               f"2099-12-01T{hour}:30", "--patient", "P-1", "--wait", env=env)
            assert booked.code == 0 and "booked by the home relay home" in booked.err, booked.err
            ids.append(booked.out.strip())
        came, missed, duplicate = ids
        assert (await run("fulfil", came[-8:], env=env)).code == 0
        assert (await run("noshow", missed[-8:], env=env)).code == 0
        assert (await run("entered-in-error", duplicate[-8:], "--reason", "typed twice", env=env)).code == 0
        seen = await relay.calendar(CAL)
        assert [str(seen.get(rid).status) for rid in ids] == ["fulfilled", "noshow", "entered-in-error"]
        refused = await run("noshow", came[-8:], env=env)
        assert refused.code == 1 and "fulfilled" in refused.err  # the model's transition table says why not


def test_book_says_what_is_true_of_it(desk: Desk) -> None:
    code, out, err = desk.run("book", "--resource", "room-1", "--start", "2099-12-01T09:00", "--end",
                              "2099-12-01T09:30", "--patient", "P-7")
    assert code == 0 and len(out.strip()) == 36  # stdout: the id, for scripts
    assert "saved on this device only; not confirmed" in err and "pending" in err


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--peer", "localhost:8765"], "not a relay URL"),
    (["--hold-ttl", "-5"], "positive number of seconds"),
    (["--idle-unload", "0"], "positive number of seconds"),
    (["--max-connections", "-1"], "at least 1"),
])
def test_relay_refuses_likely_typos_in_its_options(argv: list[str], fragment: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from accord.relay.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--id", "r1", "--db", ":memory:", *argv])
    assert exited.value.code == 2 and fragment in capsys.readouterr().err


def home_with_a_read_only_token(tmp_path: Path) -> Relay:
    """A home relay with two tokens: ``wall-secret`` (read-only, the wall screen's) and
    ``desk-secret`` (a terminal's)."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("wall-secret read-only clinic-*\ndesk-secret terminal clinic-*\n")
    return Relay(relay_config(tmp_path, "home", tokens_path=tokens, home_globs=["clinic-*"]))


async def book_with_the_read_only_token(env: dict[str, str]) -> Run:
    """A booking the relay refuses: made with the read-only token."""
    return await run("book", "--resource", "room-1", "--start", "2099-12-01T09:00", "--end", "2099-12-01T09:30",
                     "--patient", "P-1", "--token", "wall-secret", env=env)


async def test_a_write_the_relay_refuses_is_held_not_sent_later_under_another_token(tmp_path: Path) -> None:
    async with home_with_a_read_only_token(tmp_path) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL, ACCORD_STORE=str(tmp_path / "desk.sqlite"))
        refused = await book_with_the_read_only_token(env=env)
        assert refused.code == 4 and "read-only" in refused.err and "not sent again" in refused.err, refused.err
        first = refused.out.strip() or None
        # The next command has a write token: it must not send the refused booking on its own.
        second = await run("book", "--resource", "room-2", "--start", "2099-12-01T10:00", "--end",
                           "2099-12-01T10:30", "--patient", "P-2", "--token", "desk-secret", env=env)
        assert "refused" in second.err and "retry" in second.err, second.err
        status = await run("status", "--token", "desk-secret", "--json", env=env)
        [calendar] = json.loads(status.out)["calendars"]
        assert "held" in calendar["refused"] and calendar["pending"] == 2
        assert len((await relay.calendar(CAL)).reservations) == 0  # nothing went out
        # The user asks: retry sends both with the desk token.
        retried = await run("retry", "--token", "desk-secret", env=env)
        assert retried.code == 0, retried.err
        held = await relay.calendar(CAL)
        assert len(held.reservations) == 2 and (first is None or first in held.reservations)


async def test_discard_drops_what_the_relay_refused_and_pulls_the_calendar_again(tmp_path: Path) -> None:
    async with home_with_a_read_only_token(tmp_path) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL)
        desk = await run("book", "--resource", "room-1", "--start", "2099-12-01T08:00", "--end", "2099-12-01T08:30",
                         "--patient", "P-0", "--token", "desk-secret", "--store", str(tmp_path / "other.sqlite"),
                         "--wait", env=env)
        assert desk.code == 0, desk.err
        mine = {**env, "ACCORD_STORE": str(tmp_path / "desk.sqlite")}
        assert (await run("list", "--token", "wall-secret", env=mine)).code == 0  # pulls the desk's booking
        refused = await book_with_the_read_only_token(env=mine)
        assert refused.code == 4
        dropped = await run("discard", "--token", "desk-secret", "--json", env=mine)
        assert dropped.code == 0 and json.loads(dropped.out)["discarded"] == 1, dropped.err
        listed = await run("list", "--token", "desk-secret", "--json", env=mine)
        ids = [r["id"] for r in json.loads(listed.out)["reservations"]]
        assert ids == [desk.out.strip()]  # the relay's booking is back, the refused one is gone
        assert len((await relay.calendar(CAL)).reservations) == 1


def test_watch_names_the_fields_that_changed_never_their_values() -> None:
    from datetime import UTC, datetime

    from accord.engine.calendar import Calendar
    from accord.terminal.commands import changed_fields

    calendar = Calendar(CAL, actor="desk")
    now = datetime(2099, 11, 1, tzinfo=UTC)
    made = calendar.book(resource="room-1", start="2099-12-01T09:00Z", end="2099-12-01T09:30Z", patient="P-1", now=now)
    assert changed_fields(None, made) == ["new"]
    moved = calendar.reschedule(made.id, start="2099-12-01T10:00Z", end="2099-12-01T10:30Z", now=now)
    assert {"start", "end"} <= set(changed_fields(made, moved)) and "patient" not in changed_fields(made, moved)
    noted = calendar.edit(made.id, note="bring x-rays", now=now)
    assert changed_fields(moved, noted) == ["note"]


async def test_discard_lifts_the_hold_only_once_the_refused_changes_are_gone(tmp_path: Path) -> None:
    """The link may connect while ``discard`` runs (the CLI does not wait for it first) and syncs
    every calendar that is not held, from its replica as it is at that moment. Lifting the hold
    before the replica was emptied let the refused change go out under the discarding token
    (tests/test_terminal_desk.py's discard test failed about one run in twenty under load)."""
    from accord.engine.protocol import EMPTY_STATE_VECTOR
    from accord.terminal.client import Terminal

    async with home_with_a_read_only_token(tmp_path) as relay:
        env = cli_env(ACCORD_RELAY=relay.url, ACCORD_CALENDAR=CAL, ACCORD_STORE=str(tmp_path / "desk.sqlite"))
        refused = await book_with_the_read_only_token(env=env)
        assert refused.code == 4
        async with Terminal(relay=relay.url, store=tmp_path / "desk.sqlite", token="desk-secret", name="desk") as t:
            assert t.held(CAL)
            ledger = t._store._require_ledger()
            forget = ledger.forget_local
            seen: list[tuple[bool, bytes | None]] = []

            async def watched(name: str, at: str) -> None:
                await forget(name, at)  # type: ignore[arg-type]
                # what a link connecting right now would open and send for the calendar
                seen.append((CAL in t.link_calendars(), t.link_diff(CAL, EMPTY_STATE_VECTOR)))

            ledger.forget_local = watched  # type: ignore[method-assign]
            assert await t.discard(CAL) == 1
        [(opened, diff)] = seen
        assert opened  # it syncs again once discarded ...
        assert diff is None or b"P-1" not in diff  # ... but the refused booking is not in what it sends
    async with home_with_a_read_only_token(tmp_path) as relay:
        assert len((await relay.calendar(CAL)).reservations) == 0
