"""Terminals against real relays on 127.0.0.1: push, pull, ACKs, reconnects, refusals, decisions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from relays import Relay, RelayConfig, free_port, relay_config

from accord.engine.errors import ReservationNotFound
from accord.engine.model import Reservation, Status
from accord.terminal.client import ChangeKind, ChangeNotice, SyncState, Terminal
from accord.terminal.errors import RelayRefused
from accord.terminal.link import Backoff, LinkState

CAL = "clinic-1"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FAST = Backoff(initial_s=0.05, max_s=0.2)


def config_on(tmp_path: Path, relay_id: str, port: int, **kw: object) -> RelayConfig:
    """A test relay config on a fixed port (so a terminal can be pointed at it before it runs)."""
    return dataclasses.replace(relay_config(tmp_path, relay_id, **kw), port=port)


def terminal(relay: str, tmp_path: Path, name: str, **kw: object) -> Terminal:
    return Terminal(relay=relay, store=tmp_path / f"{name}.sqlite", name=name, backoff=FAST, **kw)  # type: ignore[arg-type]


async def book(t: Terminal, minutes: int = 0, resource: str = "room-1") -> str:
    start = START + timedelta(minutes=minutes)
    reservation = await t.book(CAL, resource=resource, start=start, end=start + timedelta(minutes=30), patient="P-0042")
    return reservation.id


async def next_notice(stream: object, kind: ChangeKind, timeout: float = 5.0) -> ChangeNotice:
    async with asyncio.timeout(timeout):
        async for notice in stream:  # type: ignore[attr-defined]
            if notice.kind is kind:
                return notice  # type: ignore[no-any-return]
    raise AssertionError("change stream ended")


async def eventually(t: Terminal, read: Callable[[], Awaitable[Reservation]], status: Status,
                     timeout: float = 10) -> Reservation:
    """Wait (re-reading on every change notice) until the reservation exists with ``status``."""
    stream = t.changes()
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(ReservationNotFound):
                found = await read()
                if found.status is status:
                    stream.close()
                    return found
            await anext(stream)


async def test_booking_reaches_another_terminal_without_polling(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        async with terminal(relay.url, tmp_path, "desk-1") as one, terminal(relay.url, tmp_path, "desk-2") as two:
            await two.open(CAL)
            await two.synced(timeout=5)
            stream = two.changes()
            rid = await book(one)
            notice = await next_notice(stream, ChangeKind.REMOTE)
            assert (notice.calendar, notice.reservation_ids) == (CAL, (rid,))
            assert await two.wait_for(lambda: two.peek(CAL, rid), timeout=5)
            seen = await two.get(CAL, rid)
            assert (seen.created_by, seen.status) == ("desk-1", Status.BOOKED)
            assert two.sync_state(CAL, rid) is SyncState.STORED
            await two.cancel(CAL, rid, reason="duplicate")
            assert (await eventually(one, lambda: one.get(CAL, rid), Status.CANCELLED)).reason == "duplicate"
            await two.synced(timeout=5)
            await one.wait_for(lambda: one.snapshot(CAL) == two.snapshot(CAL), timeout=5)
            with pytest.raises(TimeoutError):
                await one.wait_for(lambda: one.peek(CAL, "no-such-id"), timeout=0.05)


async def test_pending_count_drops_to_zero_after_ack_and_stays_zero_after_restart(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        async with terminal(relay.url, tmp_path, "desk-1") as t:
            await t.synced(timeout=5)
            stream = t.changes()
            rid = await book(t)
            assert (await next_notice(stream, ChangeKind.STORED)).reservation_ids == (rid,)
            await t.synced(timeout=5)
            status = t.status()
            assert (status.pending, status.link) == (0, LinkState.ONLINE)
            assert status.last_ack_at is not None
            assert t.sync_state(CAL, rid) is SyncState.STORED
    async with Terminal(store=tmp_path / "desk-1.sqlite") as t:  # offline now: the acknowledgement was persisted
        assert t.status().pending == 0
        assert t.status().last_ack_at is not None
        assert t.sync_state(CAL, rid) is SyncState.STORED


async def test_offline_booking_is_synced_once_the_relay_starts(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with terminal(url, tmp_path, "desk-1") as one:
        rid = await book(one)
        assert await one.wait_connected(5) is LinkState.OFFLINE
        assert one.status().pending == 1
        async with Relay(config_on(tmp_path, "r1", port)) as relay, terminal(relay.url, tmp_path, "desk-2") as two:
            await one.synced(timeout=10)  # the link reconnected by itself
            assert one.status().pending == 0
            await two.open(CAL)
            await two.synced(timeout=5)
            assert (await two.get(CAL, rid)).created_by == "desk-1"


async def test_offline_changes_survive_a_terminal_restart_and_go_out_later(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with terminal(url, tmp_path, "desk-1") as t:
        rid = await book(t)
        await t.edit(CAL, rid, note="bring referral")
    async with Relay(config_on(tmp_path, "r1", port)) as relay:
        async with terminal(url, tmp_path, "desk-1") as t:  # a new process: new Yjs client id, same store
            assert t.status().pending == 2
            await t.synced(timeout=10)
            assert t.status().pending == 0
        async with terminal(relay.url, tmp_path, "desk-2") as other:
            await other.open(CAL)
            await other.synced(timeout=5)
            assert (await other.get(CAL, rid)).note == "bring referral"


async def test_remote_updates_are_stored_so_an_offline_restart_still_shows_them(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        async with terminal(relay.url, tmp_path, "desk-1") as one:
            rid = await book(one)
            await one.synced(timeout=5)
        async with terminal(relay.url, tmp_path, "desk-2") as two:
            await two.open(CAL)
            await two.synced(timeout=5)
    async with Terminal(store=tmp_path / "desk-2.sqlite") as two:  # relay gone
        assert [r.id for r in await two.reservations(CAL)] == [rid]
        assert two.status().pending == 0  # what came from the relay is never pending here


async def test_terminal_reconnects_after_relay_restart(tmp_path: Path) -> None:
    port = free_port()
    config = config_on(tmp_path, "r1", port)
    async with terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk-1") as t:
        async with Relay(config):
            await t.open(CAL)
            await t.synced(timeout=5)
        await t.wait_link_change(LinkState.ONLINE, timeout=5)
        rid = await book(t)  # relay down: saved locally
        assert t.status().pending == 1
        async with Relay(config) as relay, terminal(relay.url, tmp_path, "desk-2") as other:
            await t.synced(timeout=10)
            await other.open(CAL)
            await other.synced(timeout=5)
            assert [r.id for r in await other.reservations(CAL)] == [rid]


async def test_wrong_token_is_refused_and_reported(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\n")
    async with Relay(relay_config(tmp_path, "r1", tokens_path=tokens)) as relay:
        async with terminal(relay.url, tmp_path, "bad", token="nope") as t:
            await book(t)
            with pytest.raises(RelayRefused, match="refused") as caught:
                await t.synced(timeout=5)
            assert caught.value.code == 4401
            assert t.status().link in (LinkState.REFUSED, LinkState.CONNECTING)
            assert t.status().pending == 1
        async with terminal(relay.url, tmp_path, "bad", token="desk-secret") as t:  # same store, right token
            await t.synced(timeout=5)
            assert t.status().pending == 0
            with pytest.raises(RelayRefused, match="other-1"):  # outside the token's globs: refused per calendar
                await t.synced(timeout=5, calendars=["other-1"])


async def test_home_relay_decides_and_the_loser_sees_rejected(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with terminal(url, tmp_path, "desk-1") as one, terminal(url, tmp_path, "desk-2") as two:
        first, second = await book(one), await book(two)  # both offline, same slot
        assert one.sync_state(CAL, first) is SyncState.LOCAL
        async with Relay(config_on(tmp_path, "home", port, home_globs=["clinic-*"])):
            await one.synced(timeout=10)
            decided_first = await one.decision(CAL, first, timeout=10)
            await two.synced(timeout=10)
            decided_second = await two.decision(CAL, second, timeout=10)
            assert sorted([decided_first.status, decided_second.status]) == [Status.BOOKED, Status.REJECTED]
            assert one.sync_state(CAL, first) is SyncState.DECIDED
            loser = second if decided_second.status is Status.REJECTED else first
            winner = first if loser == second else second
            seen_by_one = await eventually(one, lambda: one.get(CAL, loser), Status.REJECTED)  # the other desk's booking
            assert seen_by_one.conflict_with == winner


async def test_two_terminals_sharing_one_store_do_not_lose_each_others_pending_changes(tmp_path: Path) -> None:
    """Like `accord terminal watch` running while `accord terminal book` runs on the same store file."""
    store = tmp_path / "desk.sqlite"
    async with Relay(relay_config(tmp_path, "r1")) as relay:
        async with Terminal(relay=relay.url, store=store, name="watcher", backoff=FAST) as watcher:
            await watcher.open(CAL)
            await watcher.synced(timeout=5)
            async with Terminal(store=store, name="desk") as offline_writer:  # no relay: stays pending
                offline_id = await book(offline_writer, 0)
            await book(watcher, 60)  # the watcher's own write is acknowledged and its ledger saved
            await watcher.synced(timeout=5)
            assert watcher.status().pending == 0  # it never loaded the other process's write
        async with Terminal(store=store, name="desk") as reopened:
            assert reopened.status().pending == 1  # the other process's pending change survived the merge
            assert reopened.sync_state(CAL, offline_id) is SyncState.LOCAL
        async with Terminal(relay=relay.url, store=store, name="desk", backoff=FAST) as online:
            await online.synced(timeout=5)
            assert online.status().pending == 0


async def test_a_calendar_never_synced_shows_bookings_pending_until_a_relay_says_it_has_no_home(
        tmp_path: Path) -> None:
    port = free_port()
    async with terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk") as t:  # relay not up yet
        rid = await book(t)
        assert (await t.get(CAL, rid)).status is Status.PENDING  # a home might decide it: not booked yet
    async with Relay(config_on(tmp_path, "plain", port)):  # this relay is home to nothing
        async with terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk") as t:
            await t.synced(timeout=10)
            assert (await t.get(CAL, rid)).status is Status.BOOKED  # a plain calendar: booked at once
    async with terminal(f"ws://127.0.0.1:{free_port()}", tmp_path, "desk") as t:  # offline again
        assert (await t.get(CAL, rid)).status is Status.BOOKED  # it remembers having synced


class HeldCommits:
    """A relay store whose commits wait until released (wraps a real SQLite store)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def append_many(self, items: list[tuple[str, bytes]], **kwargs: object) -> list[int]:
        await self.release.wait()
        return await self.inner.append_many(items, **kwargs)  # type: ignore[attr-defined, no-any-return]


async def test_a_relay_restored_from_an_older_copy_is_noticed_and_status_stays_truthful(tmp_path: Path) -> None:
    import shutil

    from accord.engine.storage import SqliteStorage
    from accord.terminal.errors import SyncTimeout

    port = free_port()
    config = config_on(tmp_path, "a", port)
    backup = tmp_path / "backup.sqlite"
    async with Relay(config):
        async with terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk") as t:
            await t.open(CAL)
            await t.synced(timeout=5)
    shutil.copy(config.db_path, backup)  # before the booking
    async with Relay(config):
        async with terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk") as t:
            rid = await book(t)
            await t.synced(timeout=5)
            assert t.status().pending == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.db_path}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, config.db_path)  # the relay's disk is restored from the older copy
    held = HeldCommits(await SqliteStorage.open(config.db_path))
    async with Relay(config, storage=held), terminal(f"ws://127.0.0.1:{port}", tmp_path, "desk") as t:  # type: ignore[arg-type]
        await t.wait_connected(timeout=5)
        await t.wait_for(lambda: t.status().pending > 0, timeout=5)  # noticed: the relay lacks the booking
        with pytest.raises(SyncTimeout):
            await t.synced(timeout=0.5)  # and synced() does not claim otherwise
        held.release.set()
        await t.synced(timeout=5)
        assert t.status().pending == 0
    async with Relay(config) as relay:
        assert (await relay.calendar(CAL)).get(rid).id == rid  # stored on the restored relay
