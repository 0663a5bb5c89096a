"""Home failover in a relay cluster on PostgreSQL: every process is started with the same
``--home``; the one holding the home lease decides. When it is SIGKILLed or frozen (SIGSTOP)
another takes over within the target, decides every pending booking, and nothing is double
booked, lost or reversed; a deposed holder's late decisions are refused by the store."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from netcut import CuttableProxy
from relays import Relay, RelayProcess, relay_config, running
from wire import NOW, WireClient, wait_for_any

from accord.engine.decisions import Decider
from accord.engine.model import CalendarId, Status
from accord.engine.replica import Replica
from accord.engine.storage import open_storage
from accord.relay.cluster import member_key

CAL = "clinic-1"
TAKEOVER_TARGET_S = 5.0


def status(client: WireClient, reservation_id: str) -> Status | None:
    calendar = client.replica(CAL).calendar
    if reservation_id not in calendar.reservations:
        return None
    return calendar.get(reservation_id).status


def all_decided(client: WireClient, ids: Iterable[str]) -> bool:
    """True once a home decided every one of ``ids`` (without a home record, requests count as
    plain bookings: not decisions)."""
    return client.replica(CAL).calendar.home is not None and all(
        status(client, r) in (Status.BOOKED, Status.REJECTED) for r in ids)


@dataclass
class History:
    """Every status each watcher saw for each reservation: a decision, once seen, never changes."""

    seen: dict[tuple[str, str], Status] = field(default_factory=dict)
    reversed: list[str] = field(default_factory=list)

    def record(self, clients: list[WireClient], ids: Iterable[str]) -> None:
        for client in clients:
            for rid in ids:
                now = status(client, rid)
                before = self.seen.get((client.actor, rid))
                if before in (Status.BOOKED, Status.REJECTED) and now != before:
                    self.reversed.append(f"{rid} at {client.actor}: {before} -> {now}")
                if now is not None:
                    self.seen[(client.actor, rid)] = now


def assert_invariants(client: WireClient, acked: list[str], resource_ids: Iterable[str]) -> None:
    """Every acknowledged booking present, every one decided, no slot of a capacity-1 resource
    booked twice."""
    calendar = client.replica(CAL).calendar
    missing = [r for r in acked if r not in calendar.reservations]
    assert not missing, f"acknowledged bookings missing: {missing}"
    assert all_decided(client, acked), [(r, status(client, r)) for r in acked if not all_decided(client, [r])]
    booked = [calendar.get(r) for r in calendar.reservations if calendar.get(r).status is Status.BOOKED]
    for resource in resource_ids:
        slots = sorted((b.start, b.end, b.id) for b in booked if b.resource == resource)
        for (_s1, end1, id1), (start2, _e2, id2) in itertools.pairwise(slots):
            assert start2 >= end1, f"{id1} and {id2} are both booked on {resource} and overlap"


def metrics_of(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[RelayProcess]]:
    """Three ``accord relay`` processes on one database, all started with ``--home clinic-*``."""
    async with running([RelayProcess(tmp_path, f"pg-{n}", "--home", "clinic-*", db=postgres_url)
                        for n in "abc"]) as relays:
        yield relays


async def first_holder(relays: list[RelayProcess]) -> RelayProcess:
    """Book once (on the first process) and return the process that decided it: the holder."""
    async with WireClient(relays[0].url, actor="setup") as setup:
        await setup.open(CAL)
        first = await setup.book(CAL, resource="room-0")
        await setup.wait_for(lambda: all_decided(setup, [first]), timeout=15)
        home = setup.replica(CAL).calendar.home
    return next(relay for relay in relays if relay.relay_id == home)


async def book_clashing(clients: list[WireClient], count: int, hour: int) -> list[str]:
    """``count`` requests from each client for the same slots of room-x (capacity 1)."""
    ids = []
    for i in range(count):
        for client in clients:
            ids.append(await client.book(CAL, resource="room-x", hour=hour + i // 4, minute=15 * (i % 4)))
    return ids


async def decided_bookings(clients: list[WireClient], count: int, hour: int, history: History) -> list[str]:
    """Open the calendar on every client, book clashing slots, and wait until all are decided."""
    for client in clients:
        await client.open(CAL)
        await client.wait_synced(CAL)
    ids = await book_clashing(clients, count, hour)
    await wait_for_any(clients, lambda: all(all_decided(c, ids) for c in clients), timeout=15,
                       each=lambda: history.record(clients, ids))
    return ids


async def fault(relay: RelayProcess, sig: int) -> None:
    """SIGKILL ``relay`` (and wait for its exit) or send it ``sig`` (SIGSTOP: it freezes)."""
    if sig == signal.SIGKILL:
        await relay.kill(sig)
    else:
        assert relay.proc is not None
        relay.proc.send_signal(sig)


async def wait_taken_over(clients: list[WireClient], ids: list[str], deposed: str, history: History) -> None:
    """Until every client holds a decision on each of ``ids`` under a home other than ``deposed``,
    recording what they see on the way."""
    await wait_for_any(clients, lambda: all(all_decided(c, ids) and c.replica(CAL).calendar.home != deposed
                                            for c in clients),
                       timeout=20, each=lambda: history.record(clients, ids))


async def fail_over(cluster: list[RelayProcess], sig: int) -> tuple[float, list[WireClient], RelayProcess, list[str]]:
    """Book clashing slots on the two standby processes, send ``sig`` to the holder in the middle,
    and return how long it took until another process decided every request."""
    holder = await first_holder(cluster)
    standbys = [relay for relay in cluster if relay is not holder]
    history = History()
    async with WireClient(standbys[0].url, actor="desk-b") as tb, WireClient(standbys[1].url, actor="desk-c") as tc:
        clients = [tb, tc]
        before = await decided_bookings(clients, 4, 9, history)
        during = await book_clashing(clients, 4, hour=11)
        await fault(holder, sig)
        killed = time.monotonic()
        after = await book_clashing(clients, 4, hour=13)
        ids = [*before, *during, *after]
        for client in clients:
            await client.wait_acked(CAL)
        await wait_taken_over(clients, ids, holder.relay_id, history)
        took = time.monotonic() - killed
        assert not history.reversed, history.reversed
        for client in clients:
            assert_invariants(client, ids, ["room-x"])
        assert [status(tb, r) for r in ids] == [status(tc, r) for r in ids]
    return took, clients, holder, ids


@pytest.mark.slow
async def test_sigkill_of_the_lease_holder_another_process_decides_every_pending_booking_within_target(
        cluster: list[RelayProcess]) -> None:
    took, _clients, holder, ids = await fail_over(cluster, signal.SIGKILL)
    assert took < TAKEOVER_TARGET_S, f"takeover took {took:.2f} s"
    survivor = next(relay for relay in cluster if relay is not holder)
    async with WireClient(survivor.url, actor="late") as late:  # from the store, not only from memory
        await late.open(CAL)
        await late.wait_synced(CAL)
        assert_invariants(late, ids, ["room-x"])
    text = "\n".join(metrics_of(relay.port) for relay in cluster if relay is not holder)
    assert text.count('accord_lease_held{lease="home"} 1') == 1
    assert 'accord_lease_takeovers_total{lease="home"} 1' in text


@pytest.mark.slow
async def test_a_frozen_holder_is_replaced_steps_down_when_it_wakes_and_its_late_verdicts_do_not_count(
        cluster: list[RelayProcess]) -> None:
    took, _clients, holder, ids = await fail_over(cluster, signal.SIGSTOP)
    assert took < TAKEOVER_TARGET_S, f"takeover took {took:.2f} s"
    assert holder.proc is not None
    holder.proc.send_signal(signal.SIGCONT)
    others = [relay for relay in cluster if relay is not holder]
    async with WireClient(holder.url, actor="woken") as woken:  # the old holder serves what the new one decided
        await woken.open(CAL)
        await woken.wait_for(lambda: all_decided(woken, ids) and woken.replica(CAL).calendar.home != holder.relay_id,
                             timeout=15)
        assert_invariants(woken, ids, ["room-x"])
        async with WireClient(others[0].url, actor="check") as check:
            await check.open(CAL)
            await check.wait_synced(CAL)
            await check.wait_for(lambda: all_decided(check, ids))
            assert [status(woken, r) for r in ids] == [status(check, r) for r in ids]
    text = await asyncio.to_thread(metrics_of, holder.port)
    assert 'accord_lease_held{lease="home"} 0' in text
    assert 'accord_lease_step_downs_total{lease="home"} 1' in text
    assert "accord_home_calendars_deciding 0" in text


async def test_a_deposed_holders_decision_is_refused_by_the_store_and_never_seen(tmp_path: Path,
                                                                                  postgres_url: str) -> None:
    store = await open_storage(postgres_url)
    async with Relay(relay_config(tmp_path, "r-a", home_globs=["clinic-*"]), storage=store) as ra, \
            WireClient(ra.url, actor="desk") as desk:
        failover = ra.failover
        assert failover is not None
        await ra.wait_for(lambda: failover.lease.valid())
        await desk.open(CAL)
        first = await desk.book(CAL, hour=9)
        await desk.wait_for(lambda: all_decided(desk, [first]))
        assert status(desk, first) is Status.BOOKED
        # Another process took the lease over meanwhile (as a frozen holder's successor does): the
        # epoch moved on in the store while this process still believes it holds the lease.
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute("UPDATE accord.leases SET epoch = epoch + 1 WHERE name = 'home'")
        finally:
            await admin.close()
        late = await desk.book(CAL, hour=9)  # clashes with the first: a late verdict would reject it
        await ra.wait_for(lambda: ra.metrics.fenced_writes >= 1)
        assert status(desk, late) is Status.PENDING
        # It gave the lease up, took it again under a new epoch, and decided under that one,
        # under a new home record too: it adopts the stored verdict (serial 1), not the refused
        # one (serial 2), which would count nowhere if it ever got out.
        await desk.wait_for(lambda: status(desk, late) is Status.REJECTED)
        assert failover.lease.stats.acquired == 2 and failover.lease.stats.epoch == 3
        assert status(desk, first) is Status.BOOKED
        record = desk.replica(CAL).calendar.home_record
        assert record is not None and (record.relay_id, record.epoch, record.adopts) == ("r-a", 2, 1)


def pg_address(postgres_url: str) -> tuple[str, int, str]:
    """(host, port, database) of a ``postgresql://user@host:port/database`` URL."""
    base, _, database = postgres_url.rpartition("/")
    host, _, port = base.rpartition("@")[2].partition(":")
    return host, int(port), database


def through(proxy: CuttableProxy, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"


@pytest.fixture
async def cuttable_cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[tuple[RelayProcess, CuttableProxy]]]:
    """Three ``accord relay`` processes, all ``--home clinic-*``, each reaching PostgreSQL
    through a proxy of its own that a test can cut."""
    host, port, database = pg_address(postgres_url)
    async with AsyncExitStack() as stack:
        proxies = [await stack.enter_async_context(CuttableProxy(host, port)) for _ in range(3)]
        relays = [RelayProcess(tmp_path, f"pg-{n}", "--home", "clinic-*", db=through(proxy, database))
                  for n, proxy in zip("abc", proxies, strict=True)]
        async with running(relays):
            yield list(zip(relays, proxies, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_chaos_holders_killed_frozen_and_cut_off_at_random_nothing_double_booked_lost_or_undecided(
        cuttable_cluster: list[tuple[RelayProcess, CuttableProxy]], seed: int) -> None:
    """Rounds of clashing bookings from terminals on the standby processes while the current
    holder is SIGKILLed (then restarted), frozen (then woken) or cut off from the database (then
    reconnected), chosen by ``seed``."""
    chaos = random.Random(seed)
    cluster = [relay for relay, _proxy in cuttable_cluster]
    proxy_of = {relay.relay_id: proxy for relay, proxy in cuttable_cluster}
    holder = await first_holder(cluster)
    history = History()
    acked: list[str] = []
    for round_no in range(3):
        standbys = [relay for relay in cluster if relay is not holder]
        async with WireClient(standbys[0].url, actor=f"b{round_no}") as tb, \
                WireClient(standbys[1].url, actor=f"c{round_no}") as tc:
            clients = [tb, tc]
            for client in clients:
                await client.open(CAL)
                await client.wait_synced(CAL)
            ids = await book_clashing(clients, chaos.randint(1, 4), hour=8 + 2 * round_no)
            how = chaos.choice(["kill", "stop", "cut"])
            if how == "cut":
                proxy_of[holder.relay_id].cut()
            else:
                await fault(holder, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
            ids += await book_clashing(clients, chaos.randint(1, 4), hour=9 + 2 * round_no)
            for client in clients:
                await client.wait_acked(CAL)
            acked += ids
            await wait_taken_over(clients, acked, holder.relay_id, history)
            new_home = tb.replica(CAL).calendar.home
        if how == "kill":
            await holder.start()
        elif how == "stop":
            holder.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        else:
            proxy_of[holder.relay_id].restore()
        holder = next(relay for relay in cluster if relay.relay_id == new_home)
    assert not history.reversed, history.reversed
    views = []
    for relay in cluster:  # every process, the restarted, woken and reconnected ones too
        async with WireClient(relay.url, actor=f"final-{relay.relay_id}") as final:
            await final.open(CAL)
            await final.wait_for(lambda final=final: all_decided(final, acked), timeout=20)
            assert_invariants(final, acked, ["room-x"])
            views.append([status(final, r) for r in acked])
    assert views[0] == views[1] == views[2]


async def test_a_calendar_homed_before_the_shared_key_is_handed_over_keeping_its_decisions(
        tmp_path: Path, postgres_url: str) -> None:
    """A cluster from before the home lease had one --home process signing with its own key
    (relay_key:<id> in the store): the lease holder hands its calendars over with that key."""
    store = await open_storage(postgres_url)
    old_key = await member_key(store, "old-a")
    replica = Replica(CalendarId(CAL), actor="old-a")
    kept = replica.calendar.book(resource="room-1", start=NOW.replace(hour=9), end=NOW.replace(hour=9, minute=15),
                                 patient="P-1", now=NOW)
    decider = Decider(replica.calendar, "old-a", old_key)
    assert [d.outcome for d in decider.decide_all_pending(NOW)] == ["booked"]
    for change in replica.take_changes():
        await store.append(CalendarId(CAL), change.update)
    async with Relay(relay_config(tmp_path, "new-b", home_globs=["clinic-*"]), storage=store) as rb, \
            WireClient(rb.url, actor="desk") as desk:
        await desk.open(CAL)
        await desk.wait_for(lambda: desk.replica(CAL).calendar.home == "new-b")
        assert status(desk, kept.id) is Status.BOOKED
        clash = await desk.book(CAL, hour=9)
        await desk.wait_for(lambda: status(desk, clash) is Status.REJECTED)
        assert desk.replica(CAL).calendar.home_record.epoch == 2  # type: ignore[union-attr]


@pytest.mark.slow
async def test_a_cluster_peered_with_a_sqlite_relay_holds_one_link_and_keeps_it_when_its_holder_dies(
        tmp_path: Path, postgres_url: str) -> None:
    """The two-channel scenario with a cluster on one side: channel 2 is a plain SQLite relay;
    channel 1 two processes on PostgreSQL, both told --peer to it. One link at a time; bookings
    cross both ways and are decided by the cluster's home; SIGKILL of the link's holder moves it."""
    async with Relay(relay_config(tmp_path, "channel-2")) as other:
        def peers() -> list[str]:
            return sorted(c.peer_id or "?" for c in other.connections if c.is_peer)

        processes = [RelayProcess(tmp_path, f"pg-{n}", "--home", "clinic-*", "--peer", other.url, db=postgres_url)
                     for n in "ab"]
        async with running(processes) as cluster, WireClient(other.url, actor="desk-2") as far:
            await other.wait_for(lambda: len(peers()) == 1, timeout_s=15)
            holder = next(relay for relay in cluster if relay.relay_id == peers()[0])
            survivor = next(relay for relay in cluster if relay is not holder)
            await far.open(CAL)
            async with WireClient(survivor.url, actor="desk-1") as near:
                await near.open(CAL)
                await near.wait_synced(CAL)
                from_far, from_near = await far.book(CAL, hour=9), await near.book(CAL, hour=10)
                for client in (far, near):
                    await client.wait_for(lambda client=client: all_decided(client, [from_far, from_near]), timeout=15)
                assert len(peers()) == 1  # still one link: the other process holds none
                await holder.kill(signal.SIGKILL)
                await other.wait_for(lambda: peers() == [survivor.relay_id], timeout_s=15)
                later = await far.book(CAL, hour=11)
                clash = await near.book(CAL, hour=11)
                for client in (far, near):
                    await client.wait_for(lambda client=client: all_decided(client, [later, clash]), timeout=15)
                assert sorted(str(status(far, r)) for r in (later, clash)) == ["booked", "rejected"]
                assert [status(far, r) for r in (later, clash)] == [status(near, r) for r in (later, clash)]
            text = await asyncio.to_thread(metrics_of, survivor.port)
            assert 'accord_lease_held{lease="peering"} 1' in text


@pytest.mark.slow
async def test_a_holder_cut_off_from_the_database_is_replaced_and_steps_down(tmp_path: Path, postgres_url: str) -> None:
    """A network partition between the holder and PostgreSQL (a proxy that stops carrying bytes,
    connections left open): its lease session goes quiet, the server ends it after the lease
    time, another process takes over; the cut-off one stopped deciding before that."""
    host, port, database = pg_address(postgres_url)
    async with CuttableProxy(host, port) as proxy:
        cut_off = RelayProcess(tmp_path, "pg-a", "--home", "clinic-*", db=through(proxy, database))
        others = [RelayProcess(tmp_path, f"pg-{n}", "--home", "clinic-*", db=postgres_url) for n in "bc"]
        async with running([cut_off]):
            assert (await first_holder([cut_off])) is cut_off
            async with running(others), WireClient(others[0].url, actor="desk-b") as tb, \
                    WireClient(others[1].url, actor="desk-c") as tc:
                clients, history = [tb, tc], History()
                ids = await decided_bookings(clients, 3, 9, history)
                proxy.cut()
                cut = time.monotonic()
                ids += await book_clashing(clients, 3, hour=11)
                await wait_taken_over(clients, ids, cut_off.relay_id, history)
                took = time.monotonic() - cut
                assert took < TAKEOVER_TARGET_S, f"takeover took {took:.2f} s"
                text = await asyncio.to_thread(metrics_of, cut_off.port)  # its HTTP side runs on
                assert 'accord_lease_held{lease="home"} 0' in text
                assert "accord_home_calendars_deciding 0" in text
                proxy.restore()
                async with WireClient(cut_off.url, actor="healed") as healed:
                    await healed.open(CAL)
                    await healed.wait_for(lambda: all_decided(healed, ids)
                                          and healed.replica(CAL).calendar.home != cut_off.relay_id, timeout=20)
                    history.record([healed, *clients], ids)
                    assert_invariants(healed, ids, ["room-x"])
                    assert [status(healed, r) for r in ids] == [status(tb, r) for r in ids]
                assert not history.reversed, history.reversed


async def test_a_takeover_loads_only_the_calendars_with_rows_past_the_last_holders_decisions(
        tmp_path: Path, postgres_url: str) -> None:
    stores = [await open_storage(postgres_url) for _ in range(2)]
    async with Relay(relay_config(tmp_path, "r-c"), storage=stores[1]) as rc, WireClient(rc.url, actor="desk") as desk:
        names = ["clinic-1", "clinic-2", "clinic-3"]
        async with Relay(relay_config(tmp_path, "r-a", home_globs=["clinic-*"]), storage=stores[0]) as ra:
            failover_a = ra.failover
            assert failover_a is not None
            await ra.wait_for(lambda: failover_a.lease.valid())
            for name in names[:2]:
                await desk.open(name)
                first = await desk.book(name, hour=9)
                await desk.wait_for(lambda name=name, first=first: desk.replica(name).calendar.home == "r-a"
                                    and desk.replica(name).calendar.get(first).status is Status.BOOKED)
            await ra.wait_for(lambda: set(names[:2]) <= set(failover_a.marked))
        # No holder now: requests stored meanwhile wait for the next one.
        await desk.open(names[2])
        waiting = [await desk.book(names[0], hour=9), await desk.book(names[2], hour=9)]
        await desk.wait_acked(names[0])
        await desk.wait_acked(names[2])
        async with Relay(relay_config(tmp_path, "r-b", home_globs=["clinic-*"]),
                         storage=await open_storage(postgres_url)) as rb:
            failover_b = rb.failover
            assert failover_b is not None
            await rb.wait_for(lambda: failover_b.takeovers_done == 1)
            for name, rid, outcome in ((names[0], waiting[0], Status.REJECTED), (names[2], waiting[1], Status.BOOKED)):
                await desk.wait_for(lambda name=name, rid=rid, outcome=outcome: desk.replica(name).calendar.home
                                    == "r-b" and desk.replica(name).calendar.get(rid).status is outcome)
            assert sorted(rb.calendars.loaded) == [names[0], names[2]]  # clinic-2 stays in the store
            assert desk.replica(names[1]).calendar.home == "r-a"


async def test_a_takeover_writes_one_small_record_whatever_the_calendars_history(tmp_path: Path,
                                                                                 postgres_url: str) -> None:
    """The new holder adopts the previous holder's decisions with its record instead of signing
    each again: what it stores does not grow with the calendar (200 decisions signed again would
    be ~90 kB), every earlier decision stays, and the next request is decided against them."""
    stores = [await open_storage(postgres_url) for _ in range(2)]
    async with AsyncExitStack() as first, AsyncExitStack() as second:
        ra = await first.enter_async_context(Relay(relay_config(tmp_path, "r-a", home_globs=["clinic-*"]),
                                                   storage=stores[0]))
        failover_a = ra.failover
        assert failover_a is not None
        await ra.wait_for(lambda: failover_a.lease.valid())
        rb = await second.enter_async_context(Relay(relay_config(tmp_path, "r-b", home_globs=["clinic-*"]),
                                                    storage=stores[1]))
        desk = await second.enter_async_context(WireClient(rb.url, actor="desk"))
        await desk.open(CAL)
        ids = [await desk.book(CAL, resource=f"room-{i}") for i in range(200)]
        await desk.wait_for(lambda: all_decided(desk, ids) and desk.replica(CAL).calendar.home == "r-a", timeout=30)
        head = (await stores[1].heads([CalendarId(CAL)]))[CalendarId(CAL)]
        # The standby checked the arriving verdicts' signatures ahead: nothing left for its takeover.
        standby = rb.calendars.loaded[CalendarId(CAL)].replica.calendar
        await rb.wait_for(lambda: not standby.unchecked_verdicts(), timeout_s=10)
        assert "accord_home_verdicts_checked_ahead_total 200" in await asyncio.to_thread(metrics_of, rb.port)
        await first.aclose()  # r-a stops and releases the lease: r-b takes over at once
        failover_b = rb.failover
        assert failover_b is not None
        await desk.wait_for(lambda: desk.replica(CAL).calendar.home == "r-b" and failover_b.home.is_deciding(CAL),
                            timeout=15)
        written = await stores[1].rows_after(CalendarId(CAL), head)
        assert written and sum(len(row.data) for row in written) < 2048, [len(row.data) for row in written]
        assert all(status(desk, rid) is Status.BOOKED for rid in ids)
        clash = await desk.book(CAL, resource="room-7")
        await desk.wait_for(lambda: status(desk, clash) is Status.REJECTED)
        record = desk.replica(CAL).calendar.home_record
        assert record is not None and record.epoch == 2 and record.adopts == 200
