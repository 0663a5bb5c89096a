"""``--loop``: a relay runs on uvloop or on the standard library's asyncio, and relays on either
kind peer, store and decide alike."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from relays import RelayProcess, running
from wire import WireClient

from accord import event_loop
from accord.cli import main
from accord.engine.model import Status

CAL = "clinic-1"


def listening_loop(relay: RelayProcess) -> str:
    found = re.search(r"relay listening .*loop=(\w+)", relay.log_path.read_text())
    assert found, relay.log_path.read_text()[-2000:]
    return found.group(1)


@pytest.mark.slow
async def test_relays_on_uvloop_and_asyncio_peer_and_decide(tmp_path: Path) -> None:
    home = RelayProcess(tmp_path, "home", "--home", "clinic-*", "--loop", "uvloop")
    async with running([home]):
        desk = RelayProcess(tmp_path, "desk", "--peer", home.url)  # the default loop: asyncio
        async with running([desk]):
            assert (listening_loop(home), listening_loop(desk)) == ("uvloop", "asyncio")
            async with WireClient(desk.url, actor="t-desk") as booker, WireClient(home.url, actor="t-home") as watcher:
                await booker.open(CAL)
                await watcher.open(CAL)
                first = await booker.book(CAL, resource="room-1", hour=9)
                clash = await booker.book(CAL, resource="room-1", hour=9)
                await booker.wait_acked(CAL)

                def statuses(client: WireClient) -> list[Status | None]:
                    calendar = client.replica(CAL).calendar
                    return [calendar.get(r).status if r in calendar.reservations else None for r in (first, clash)]

                # The home decides in the order the two reach it (both may come in one batch): one of them.
                decided = {Status.BOOKED, Status.REJECTED}
                await booker.wait_for(lambda: set(statuses(booker)) == decided)
                await watcher.wait_for(lambda: statuses(watcher) == statuses(booker))


def test_auto_takes_uvloop_when_installed() -> None:
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert event_loop.resolve("auto") == expected
    assert event_loop.resolve("asyncio") == "asyncio"
    with pytest.raises(ValueError, match="unknown event loop"):
        event_loop.resolve("trio")


def test_asking_for_uvloop_where_it_is_missing_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert event_loop.resolve("auto") == "asyncio"
    code = main(["relay", "--id", "a", "--port", "0", "--db", str(tmp_path / "a.sqlite"), "--loop", "uvloop"])
    assert code == 2
    assert "uvloop is not installed" in capsys.readouterr().err
    assert not (tmp_path / "a.sqlite").exists()  # refused before anything was opened


def test_the_runner_runs_on_the_loop_it_was_given() -> None:
    async def which() -> str:
        return event_loop.running_loop_name()

    assert event_loop.run(which(), "asyncio") == "asyncio"
    if importlib.util.find_spec("uvloop"):
        assert event_loop.run(which(), "uvloop") == "uvloop"
