"""Backups and restore of live stores: ``accord store backup``, check's copy warnings, compact on a
live store, a relay restored from an older backup, a terminal rebuilt from its relay."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from relays import Relay, relay_config
from wire import WireClient

from accord import logs
from accord.cli import main
from accord.engine.backoff import Backoff
from accord.engine.model import CalendarId, Status
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage
from accord.store_cli import backup_store
from accord.terminal import Terminal

CAL = "clinic-1"
DAY = datetime(2026, 12, 1, tzinfo=UTC)


async def stored_ids(path: Path, calendar: str = CAL) -> set[str]:
    """The reservation ids the store file at ``path`` holds for ``calendar``."""
    store = await SqliteStorage.open(path)
    try:
        replica = Replica(calendar, actor="reader", client_id=7)
        replica.load(await store.load(CalendarId(calendar)))
        return set(replica.calendar.reservations.keys())
    finally:
        await store.close()


async def cli(*argv: str) -> int:
    """``accord ...`` in a thread (it runs its own event loop), so the relay here keeps serving."""
    return await asyncio.to_thread(main, list(argv))


class Writers:
    """Clients that book one reservation after another, each waiting for the relay's
    acknowledgement (durable commit) before the next; ``acked`` lists what was acknowledged."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.count = count
        self.acked: list[str] = []
        self.stop = asyncio.Event()
        self.progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Writers:
        self._tasks = [asyncio.create_task(self._write(i)) for i in range(self.count)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)

    async def _write(self, index: int) -> None:
        async with WireClient(self.url, actor=f"writer-{index}") as client:
            await client.open(CAL)
            await client.wait_synced(CAL)
            n = 0
            while not self.stop.is_set():
                rid = await client.book(CAL, resource=f"room-{index}", hour=n % 24, minute=(n // 24) % 60)
                await client.wait_acked(CAL)
                self.acked.append(rid)
                self.progress.set()
                n += 1

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.progress.clear()
                await self.progress.wait()


async def test_backup_under_write_load_restores_a_checked_store_with_every_acknowledged_update(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "relay", compact_rows=40)  # the relay compacts during the test too
    backups = [tmp_path / f"backup-{i}.sqlite" for i in range(3)]
    async with Relay(config) as relay, Writers(relay.url, 4) as writers:
        for backup in backups:
            await writers.wait_for(lambda: len(writers.acked) >= 30 + 30 * backups.index(backup))  # noqa: B023
            before = list(writers.acked)  # acknowledged (stored) before the backup starts
            assert await cli("store", "backup", str(config.db_path), str(backup)) == 0
            during = len(writers.acked) - len(before)
            assert set(before) <= await stored_ids(backup)
        await writers.wait_for(lambda: len(writers.acked) > len(before) + during)  # they still write after it
    for backup in backups:
        assert not Path(f"{backup}-wal").exists()  # standalone: the one file is the whole store
        assert await cli("store", "check", str(backup), "--json") == 0
    restored = relay_config(tmp_path, "relay")
    restored.db_path = backups[-1]
    async with Relay(restored) as relay:  # a relay starts on the backup as it is
        assert set(before) <= set((await relay.calendar(CAL)).reservations.keys())


async def test_a_plain_copy_of_a_live_store_lacks_its_wal_and_check_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = relay_config(tmp_path, "relay")
    copy, backup = tmp_path / "copy.sqlite", tmp_path / "backup.sqlite"
    async with Relay(config) as relay, Writers(relay.url, 1) as writers:
        await writers.wait_for(lambda: len(writers.acked) >= 5)
        acked = set(writers.acked)
        shutil.copy(config.db_path, copy)  # what an operator's cp does: the main file, not its -wal
        assert await cli("store", "check", str(config.db_path)) == 0
        assert f"warning: {Path(config.db_path).name}-wal is beside it" in capsys.readouterr().out
        assert await cli("store", "backup", str(config.db_path), str(backup)) == 0
    assert acked - await stored_ids(copy), "the copy was expected to lack commits still in the WAL"
    assert await cli("store", "check", str(copy)) == 0  # every check passes on it...
    out = capsys.readouterr().out
    assert "warning: copy.sqlite is in WAL mode and has no copy.sqlite-wal beside it" in out  # ...but it is flagged
    assert "accord store backup" in out
    assert await cli("store", "check", str(backup)) == 0
    assert "warning" not in capsys.readouterr().out
    assert acked <= await stored_ids(backup)


async def test_backup_refuses_to_overwrite_and_keeps_a_failed_copy_out_of_dest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = relay_config(tmp_path, "relay")
    async with Relay(config) as relay, WireClient(relay.url) as client:
        await client.open(CAL)
        await client.book(CAL)
        await client.wait_acked(CAL)
        dest = tmp_path / "dest.sqlite"
        dest.write_bytes(b"an older backup")
        assert await cli("store", "backup", str(config.db_path), str(dest)) == 1
        assert "exists" in capsys.readouterr().err and dest.read_bytes() == b"an older backup"
        assert await cli("store", "backup", str(config.db_path), str(dest), "--force") == 0
        assert await stored_ids(dest)
        assert await cli("store", "backup", str(config.db_path), str(config.db_path), "--force") == 1
        assert "the store itself" in capsys.readouterr().err
    foreign = tmp_path / "notes.sqlite"
    foreign.write_bytes(b"not a database" * 100)
    assert await cli("store", "backup", str(foreign), str(tmp_path / "out.sqlite")) == 1
    assert not list(tmp_path.glob("*out.sqlite*"))  # nothing half-written is left behind


async def seed(path: Path, rows: int) -> None:
    """Store ``rows`` bookings of CAL, one row each, as a relay would have after as many writes."""
    replica = Replica(CAL, actor="seed", client_id=3)
    for i in range(rows):
        start = DAY + timedelta(minutes=i)
        replica.calendar.book(resource="room-seed", start=start, end=start + timedelta(minutes=1), patient="P-0",
                              now=DAY - timedelta(days=1))
    store = await SqliteStorage.open(path)
    try:
        await store.append_many([(CalendarId(CAL), change.update) for change in replica.take_changes()])
    finally:
        await store.close()


async def test_compact_on_a_live_store_keeps_everything_the_relay_acknowledged(tmp_path: Path) -> None:
    # A long log makes the first compaction slow enough (reading and merging 2000 rows) that
    # writers commit rows while it runs; the relay's own compaction, which would paper over a
    # loss by writing its full state, stays off (it is safe with the same argument: each
    # compaction replaces only rows it read, in one transaction).
    config = relay_config(tmp_path, "relay", compact_rows=10**6)
    await seed(Path(config.db_path), 2000)
    async with Relay(config) as relay:
        async with Writers(relay.url, 4) as writers:
            for round_ in range(1, 6):
                await writers.wait_for(lambda: len(writers.acked) >= 20 * round_)  # noqa: B023
                before = len(writers.acked)
                assert await cli("store", "compact", str(config.db_path)) == 0
                if round_ == 1:
                    assert len(writers.acked) > before  # writes were committed while it compacted
        acked = set(writers.acked)
        assert acked <= set((await relay.calendar(CAL)).reservations.keys())
    assert len(acked) >= 100
    assert acked <= await stored_ids(Path(config.db_path))
    assert await cli("store", "check", str(config.db_path)) == 0


def at(hour: int) -> tuple[datetime, datetime]:
    start = DAY + timedelta(hours=hour)
    return start, start + timedelta(minutes=30)


async def decided_at_home(home: Relay, reservation_id: str) -> None:
    """Wait until ``home`` booked the reservation: its verdict is stored (the home applies its
    verdicts only once they are)."""
    calendar = await home.calendar(CAL)
    await home.wait_for(lambda: reservation_id in calendar.reservations
                        and calendar.get(reservation_id).status is Status.BOOKED, timeout_s=20)


def fast_terminal(url: str, store: Path, name: str) -> Terminal:
    return Terminal(relay=url, store=store, name=name, backoff=Backoff(initial_s=0.05, max_s=0.3))


async def test_a_relay_restored_from_an_older_backup_gets_back_all_terminals_and_peers_hold(tmp_path: Path) -> None:
    home_config = relay_config(tmp_path, "home", home_globs=["clinic-*"])
    backup = tmp_path / "home-backup.sqlite"
    async with Relay(home_config) as home:
        home_config.port = home.port  # restarted on the same address, as the service would be
        async with Relay(relay_config(tmp_path, "partner", peers=[home.url])) as partner, \
                fast_terminal(home.url, tmp_path / "desk.sqlite", "desk") as desk, \
                fast_terminal(partner.url, tmp_path / "app.sqlite", "app") as app:
            for terminal in (desk, app):
                await terminal.open(CAL)
            early = await desk.book(CAL, resource="room-1", start=at(8)[0], end=at(8)[1], patient="P-1")
            await decided_at_home(home, early.id)  # (the desk's own view may still lack the home record)
            assert await backup_store(Path(home_config.db_path), backup)  # while the home runs
            # After the backup: writes on both channels, decided and stored by the home.
            late = await desk.book(CAL, resource="room-1", start=at(9)[0], end=at(9)[1], patient="P-2")
            remote = await app.book(CAL, resource="room-2", start=at(9)[0], end=at(9)[1], patient="P-3")
            await desk.cancel(CAL, early.id, reason="patient called")
            for terminal, rid in ((desk, late.id), (app, remote.id)):
                assert (await terminal.decision(CAL, rid, timeout=20)).status is Status.BOOKED
            await desk.synced(timeout=20)
            await app.synced(timeout=20)
            await home.stop()  # the home's disk is lost; the operator restores last night's backup
            for suffix in ("", "-wal", "-shm"):
                Path(f"{home_config.db_path}{suffix}").unlink(missing_ok=True)
            assert await cli("store", "backup", str(backup), str(home_config.db_path)) == 0
            assert not {late.id, remote.id} & await stored_ids(Path(home_config.db_path))  # it is older
            async with Relay(home_config) as restored:  # terminals and the partner reconnect on their own
                held = {"desk": desk.link_state_vector(CalendarId(CAL)), "app": app.link_state_vector(CalendarId(CAL)),
                        "partner": (await partner.calendar(CAL)).doc.get_state()}
                for state_vector in held.values():
                    await restored.wait_committed(CAL, state_vector, timeout_s=20)
                calendar = await restored.calendar(CAL)
                assert calendar.get(early.id).status is Status.CANCELLED
                assert calendar.get(late.id).status is Status.BOOKED
                assert calendar.get(remote.id).status is Status.BOOKED
    assert {early.id, late.id, remote.id} <= await stored_ids(Path(home_config.db_path))


async def test_a_home_restored_from_a_backup_older_than_a_calendar_takes_it_back_from_terminals_and_peers(
    tmp_path: Path,
) -> None:
    """Last night's backup predates the calendar: the restored home loads it empty, and the first
    write that reaches it is a terminal resending what the home had stored, the home's own record
    with it (the partner relay is down meanwhile). Had the home written its record again first (a
    second Yjs item under the same signed key), the partner's copy of the original would look
    like an overwrite to it, and be refused over and over once the partner is back."""
    home_config = relay_config(tmp_path, "home", home_globs=["clinic-*"])
    partner_config = relay_config(tmp_path, "partner")
    backup = tmp_path / "home-backup.sqlite"
    async with Relay(home_config) as home:
        home_config.port = home.port
        partner_config.peers = [home.url]
        assert await backup_store(Path(home_config.db_path), backup)  # before the calendar existed
        async with fast_terminal(home.url, tmp_path / "desk.sqlite", "desk") as desk:
            async with Relay(partner_config) as partner:
                partner_config.port = partner.port
                async with fast_terminal(partner.url, tmp_path / "app.sqlite", "app") as app:
                    for terminal in (desk, app):
                        await terminal.open(CAL)
                    made = [await desk.book(CAL, resource="room-1", start=at(8)[0], end=at(8)[1], patient="P-1"),
                            await app.book(CAL, resource="room-2", start=at(8)[0], end=at(8)[1], patient="P-2")]
                    for reservation in made:
                        await decided_at_home(home, reservation.id)
                    for terminal in (desk, app):
                        await terminal.synced(timeout=20)
                    await partner.wait_committed(CAL, (await home.calendar(CAL)).doc.get_state(), timeout_s=20)
                    partner_held = (await partner.calendar(CAL)).doc.get_state()
            await home.stop()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{home_config.db_path}{suffix}").unlink(missing_ok=True)
            assert await cli("store", "backup", str(backup), str(home_config.db_path)) == 0
            assert await stored_ids(Path(home_config.db_path)) == set()
            async with Relay(home_config) as restored:
                await restored.wait_committed(CAL, desk.link_state_vector(CalendarId(CAL)), timeout_s=20)
                async with Relay(partner_config):  # back: it syncs with the restored home
                    await restored.wait_committed(CAL, partner_held, timeout_s=20)
                for reservation in made:
                    await decided_at_home(restored, reservation.id)
                calendar = await restored.calendar(CAL)
                assert [record.relay_id for record in calendar.home_chain()] == ["home"]
                # No second copy of the record: the replica's own client writes it when the
                # relay takes a calendar on a client's first write.
                assert calendar.doc.client_id not in decode_state_vector(calendar.doc.get_state())


async def test_a_terminal_rebuilds_its_store_from_its_relay_and_loses_only_unsynced_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "configure", lambda *_args: None)  # the CLI runs in-process: keep pytest's handlers
    store = tmp_path / "desk.sqlite"
    async with Relay(relay_config(tmp_path, "relay")) as relay:
        async with fast_terminal(relay.url, store, "desk") as desk:
            await desk.open(CAL)
            synced = await desk.book(CAL, resource="room-1", start=at(8)[0], end=at(8)[1], patient="P-1")
            await desk.synced(timeout=10)
        async with Terminal(relay=None, store=store, name="desk") as offline:  # a write that never reached it
            await offline.open(CAL)
            unsynced = await offline.book(CAL, resource="room-1", start=at(9)[0], end=at(9)[1], patient="P-2")
        for suffix in ("", "-wal", "-shm"):  # the terminal's disk is lost
            Path(f"{store}{suffix}").unlink(missing_ok=True)
        common = ["--store", str(store), "--relay", relay.url, "--calendar", CAL, "--utc"]
        assert await cli("terminal", "sync", *common) == 0
        assert await cli("terminal", "list", *common, "--json") == 0
    listed = capsys.readouterr().out
    assert synced.id in listed
    assert unsynced.id not in listed
