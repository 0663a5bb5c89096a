"""No double booking across relays and offline terminals: the home relay decides in arrival order."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

import pytest
from homes import decide
from relays import Relay, relay_config
from wire import NOW, WireClient, wait_for_any

from accord.engine.authority import RelayKey
from accord.engine.model import Decision, Reservation, Slot, Status, parse_time
from accord.engine.replica import Replica
from accord.relay.config import utc_now

CAL = "clinic-1"


def book_offline(client: WireClient, resource: str = "room-1", hour: int = 9, minutes: int = 30) -> str:
    start = NOW.replace(hour=hour, minute=0)
    return client.replica(CAL).calendar.book(resource=resource, start=start, end=start + timedelta(minutes=minutes),
                                             patient="P-ref", now=NOW).id


def decided(client: WireClient, ids: list[str]) -> bool:
    calendar = client.replica(CAL).calendar
    return all(i in calendar.reservations and calendar.get(i).status is not Status.PENDING for i in ids)


async def test_two_offline_terminals_booking_one_slot_end_with_one_booked_one_rejected(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home:
        async with Relay(relay_config(tmp_path, "other", peers=[home.url])) as other:
            t1, t2 = WireClient(home.url, actor="desk"), WireClient(other.url, actor="app")
            first, second = book_offline(t1), book_offline(t2)  # both offline: each believes it has the slot
            async with t1, t2:
                await t1.open(CAL)
                await t2.open(CAL)
                ids = [first, second]
                await t1.wait_for(lambda: decided(t1, ids))
                await t2.wait_for(lambda: decided(t2, ids))
                for client in (t1, t2):
                    views = {i: client.replica(CAL).calendar.get(i) for i in ids}
                    statuses = sorted(v.status for v in views.values())
                    assert statuses == [Status.BOOKED, Status.REJECTED]
                    loser = next(v for v in views.values() if v.status is Status.REJECTED)
                    winner = next(v for v in views.values() if v.status is Status.BOOKED)
                    assert loser.conflict_with == winner.id and loser.reason == "conflict"
                assert t1.replica(CAL).calendar.to_py() == t2.replica(CAL).calendar.to_py()


async def test_capacity_two_books_two_of_three_overlapping(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home:
        async with WireClient(home.url, actor="admin") as admin:
            await admin.open(CAL)
            await admin.wait_synced(CAL)
            admin.replica(CAL).calendar.put_resource("room-1", name="Room 1", capacity=2)
            await admin.push(CAL)
            await admin.wait_acked(CAL)
            clients = [WireClient(home.url, actor=f"t{i}") for i in range(3)]
            ids = [book_offline(c) for c in clients]
            for client in clients:
                await client.__aenter__()
                await client.open(CAL)
            try:
                await admin.wait_for(lambda: decided(admin, ids))
                statuses = sorted(admin.replica(CAL).calendar.get(i).status for i in ids)
                assert statuses == [Status.BOOKED, Status.BOOKED, Status.REJECTED]
            finally:
                for client in clients:
                    await client.__aexit__(None, None, None)


async def test_forged_decision_from_a_terminal_is_dropped(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home:
        async with WireClient(home.url, actor="honest") as honest, WireClient(home.url, actor="forger") as forger:
            await honest.open(CAL)
            await forger.open(CAL)
            await home.edit(CAL, lambda c: c.put_resource("front-desk"))  # provisioned: the home takes it
            await forger.wait_for(lambda: forger.replica(CAL).calendar.home == "home")
            await honest.wait_for(lambda: honest.replica(CAL).calendar.home == "home")
            rid = await honest.book(CAL)
            await honest.wait_for(lambda: decided(honest, [rid]))
            await forger.wait_for(lambda: decided(forger, [rid]))
            victim = book_offline(forger, hour=9)  # same slot: will be rejected
            await forger.push(CAL)
            await forger.wait_for(lambda: decided(forger, [victim]))
            assert forger.replica(CAL).calendar.get(victim).status is Status.REJECTED
            entry = forger.replica(CAL).calendar.reservations[victim]
            entry["decision"] = "booked"  # forge: overwrite the home's decision
            entry["booked_start"] = entry["start"]
            await forger.push(CAL)
            await forger.wait_for(lambda: forger.closed.is_set())
            assert forger.close_code == 4403
            marker = await honest.book(CAL, resource="room-9")
            await honest.wait_acked(CAL)
            assert marker in honest.replica(CAL).calendar.reservations
            assert honest.replica(CAL).calendar.get(victim).status is Status.REJECTED
            handle = home.calendars.loaded[CAL]
            assert handle.replica.calendar.get(victim).status is Status.REJECTED
            assert 'accord_updates_dropped_total{reason="retired_key"}' in home.render_metrics()


async def test_cancel_racing_a_decision_ends_cancelled_everywhere(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home:
        async with Relay(relay_config(tmp_path, "other", peers=[home.url])) as other:
            async with WireClient(other.url, actor="app") as app, WireClient(home.url, actor="desk") as desk:
                await app.open(CAL)
                await desk.open(CAL)
                rid = book_offline(app)
                app.replica(CAL).calendar.cancel(rid, reason="patient called", now=NOW)  # cancel before any decision
                await app.push(CAL)
                await desk.wait_for(lambda: rid in desk.replica(CAL).calendar.reservations)
                for client in (app, desk):
                    await client.wait_for(lambda c=client: c.replica(CAL).calendar.get(rid).status is Status.CANCELLED)
                await app.wait_acked(CAL)
                assert app.replica(CAL).calendar.get(rid).status is Status.CANCELLED
                assert desk.replica(CAL).calendar.get(rid).status is Status.CANCELLED


async def test_bookings_stay_pending_while_home_is_unreachable_then_get_decided(tmp_path: Path) -> None:
    home_config = relay_config(tmp_path, "home", home_globs=["clinic-*"])
    home = await Relay(home_config).__aenter__()
    port = home.port
    try:
        async with Relay(relay_config(tmp_path, "other", peers=[home.url])) as other:
            async with WireClient(other.url, actor="app") as app:
                await app.open(CAL)
                first = await app.book(CAL)
                calendar = app.replica(CAL).calendar
                await app.wait_for(lambda: calendar.home == "home" and calendar.get(first).decided_by == "home")
                await home.__aexit__(None, None, None)
                pending = await app.book(CAL, hour=10)
                await app.wait_acked(CAL)  # stored on the other relay, undecided
                assert app.replica(CAL).calendar.get(pending).status is Status.PENDING
                home_config.port = port
                home = await Relay(home_config).__aenter__()
                await app.wait_for(lambda: decided(app, [pending]), timeout=20)
                assert app.replica(CAL).calendar.get(pending).status is Status.BOOKED
    finally:
        await home.__aexit__(None, None, None)


def overbooked(replica: Replica) -> list[tuple[str, list[str]]]:
    """Instants where more booked reservations overlap on a resource than its capacity."""
    booked: dict[str, list[Reservation]] = {}
    for item in replica.calendar.list():
        if item.status in (Status.BOOKED, Status.CHECKED_IN):
            booked.setdefault(item.slot.resource, []).append(item)
    problems = []
    for resource, items in booked.items():
        capacity = replica.calendar.capacity(resource)
        for item in items:
            at = item.slot.start
            holders = [o.id for o in items if o.slot.start <= at < o.slot.end]
            if len(holders) > capacity:
                problems.append((resource, holders))
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_chaos_three_relays_six_terminals_never_overbook(tmp_path: Path, seed: int) -> None:
    """Random overlapping bookings, cancels and reschedules; links cut; relays restarted; terminals
    offline. Invariant at every observation: no overbooking on any replica. After healing:
    identical replicas, nothing pending, every rejection names an overlapping booked reservation."""
    rng = random.Random(seed)
    configs = [relay_config(tmp_path, "r0", home_globs=["clinic-*"])]
    relays = [await Relay(configs[0]).__aenter__()]
    for i in (1, 2):
        configs.append(relay_config(tmp_path, f"r{i}", peers=[relays[i - 1].url]))
        relays.append(await Relay(configs[i]).__aenter__())
    ports = [r.port for r in relays]
    clients = [WireClient(relays[i % 3].url, actor=f"t{i}") for i in range(6)]
    online = [False] * 6
    made: list[str] = []

    async def connect(i: int) -> None:
        clients[i].url = relays[i % 3].url
        fresh = WireClient(clients[i].url, actor=f"t{i}")
        fresh.replicas = clients[i].replicas  # the terminal keeps its data across reconnects
        clients[i] = fresh
        await fresh.__aenter__()
        await fresh.open(CAL)
        online[i] = True

    def check_invariant() -> None:
        for client in clients:
            if CAL in client.replicas:
                assert not overbooked(client.replica(CAL)), f"seed {seed}: overbooked on {client.actor}"
        for relay in relays:
            handle = relay.calendars.loaded.get(CAL)
            if handle is not None:
                assert not overbooked(handle.replica), f"seed {seed}: overbooked on relay {relay.config.relay_id}"

    # Two hostile writers: a client with a write token on r1 and a partner relay peering with r2.
    # They forge "booked" verdicts with their own keys and copy genuine ones under other reservations.
    hostile = [WireClient(relays[1].url, actor="mallory"), WireClient(relays[2].url, actor="rogue-relay", role="peer")]
    rogue_key = RelayKey.generate()

    async def reconnect(k: int) -> WireClient:
        attacker = hostile[k]
        if attacker.closed.is_set() or attacker.ws is None:  # refused, or its relay restarted under it
            fresh = WireClient(relays[1 + k].url, actor=attacker.actor, role=attacker.role)
            fresh.replicas = attacker.replicas
            hostile[k] = attacker = fresh
            await attacker.__aenter__()
            await attacker.open(CAL)
        return attacker

    async def attack(k: int) -> int:
        attacker = await reconnect(k)
        calendar = attacker.replica(CAL).calendar
        targets = [rid for rid in calendar.reservations if rid in made]
        if not targets or calendar.home_record is None:
            return 0
        victim = rng.choice(targets)
        if rng.random() < 0.5:
            decide(calendar, victim, Decision.BOOKED, relay_id="r0", key=rogue_key, reason=f"{rng.getrandbits(64):x}")
        else:
            genuine = [key for key in calendar.verdicts if not key.startswith(victim)]
            if genuine:
                source = rng.choice(genuine)
                # Under a fresh key: two writers racing to one predictable key would make honest
                # relays refuse each other (a known limit of set-once map entries; see
                # docs/home-authority.md).
                with calendar.doc.transaction():
                    calendar.verdicts[f"{victim}/{source.split('/')[-2]}/{rng.getrandbits(64):x}"] = calendar.verdicts[source]
        try:
            await attacker.push(CAL)
        except Exception:
            pass  # its relay restarted under it: it reconnects next time
        return 1

    try:
        for i in range(6):
            await connect(i)
        await relays[0].edit(CAL, lambda c: c.put_resource("front-desk"))  # provisioned: the home takes it
        for client in clients:  # terminals are provisioned online once: they learn who decides
            await client.wait_for(lambda c=client: c.replica(CAL).calendar.home == "r0")
        for attacker in hostile:
            await attacker.__aenter__()
            await attacker.open(CAL)
        for _step in range(60):
            i = rng.randrange(6)
            if rng.random() < 0.2:
                await attack(rng.randrange(2))  # early on it may hold nothing to attack yet
            action = rng.random()
            calendar = clients[i].replica(CAL).calendar
            if action < 0.55:
                hour, minute = rng.randrange(8, 11), rng.choice([0, 15, 30, 45])
                start = NOW.replace(hour=hour, minute=minute)
                made.append(calendar.book(resource=f"room-{rng.randrange(3)}", start=start,
                                          end=start + timedelta(minutes=rng.choice([15, 30, 60])), patient="P", now=NOW).id)
            elif action < 0.65 and made:
                rid = rng.choice(made)
                if rid in calendar.reservations and calendar.get(rid).status in (Status.PENDING, Status.BOOKED):
                    calendar.cancel(rid, now=NOW)
            elif action < 0.75 and made:
                rid = rng.choice(made)
                if rid in calendar.reservations and calendar.get(rid).status in (Status.PENDING, Status.BOOKED,
                                                                                 Status.REJECTED):
                    start = NOW.replace(hour=rng.randrange(8, 11))
                    calendar.reschedule(rid, start=start, end=start + timedelta(minutes=30), now=NOW)
            elif action < 0.85:
                if online[i]:
                    await clients[i].__aexit__(None, None, None)
                    online[i] = False
                else:
                    await connect(i)
            elif action < 0.92:
                victim = rng.randrange(3)
                await relays[victim].__aexit__(None, None, None)
                configs[victim].port = ports[victim]
                relays[victim] = await Relay(configs[victim]).__aenter__()
                for j in range(6):
                    if j % 3 == victim:
                        online[j] = False
            if online[i]:
                try:
                    await clients[i].push(CAL)
                except Exception:
                    online[i] = False
            check_invariant()
            await asyncio.sleep(0)
        # Heal: everyone online, wait until all replicas agree and nothing is pending.
        for i in range(6):
            if not online[i] or clients[i].closed.is_set():
                await connect(i)
            await clients[i].push(CAL)
        attacks = 0
        for k in (0, 1):  # the attackers go on once they hold every booking (and its decision)
            attacker = await reconnect(k)
            held = attacker.replica(CAL).calendar
            await attacker.wait_for(lambda held=held: all(r in held.reservations for r in made), timeout=30)
            for _ in range(5):
                attacks += await attack(k)
        assert attacks == 10

        def healed() -> bool:
            states = [c.replica(CAL).calendar.to_py() for c in clients]
            if any(s != states[0] for s in states):
                return False
            return all(r.status is not Status.PENDING for r in clients[0].replica(CAL).calendar.list())

        await wait_for_any(clients, healed, 30, each=check_invariant)
        check_invariant()
        calendar = clients[0].replica(CAL).calendar
        assert set(made) <= set(calendar.reservations.keys()), f"seed {seed}: a booking was lost"
        for item in calendar.list():
            if item.status is Status.REJECTED and item.reason == "conflict":
                other = calendar.get(item.conflict_with)  # booked when it won; maybe cancelled (released) since
                assert other.status not in (Status.PENDING, Status.REJECTED), f"seed {seed}: {item.id}"
                # It held an overlapping slot when it won: maybe not its slot now (it may have been
                # rescheduled since; a decision is never revisited).
                held = [Slot(v.booked[0], parse_time(v.booked[1]), parse_time(v.booked[2]))
                        for _, v in calendar.genuine_verdicts() if v.reservation == other.id and v.booked]
                assert any(slot.overlaps(item.requested) for slot in held), f"seed {seed}: {item.id}"
    finally:
        for k, client in enumerate(clients):
            if online[k]:
                await client.__aexit__(None, None, None)
        for attacker in hostile:
            if attacker.ws is not None and not attacker.closed.is_set():
                await attacker.__aexit__(None, None, None)
        for relay in reversed(relays):
            await relay.__aexit__(None, None, None)


async def test_hold_ttl_counts_from_the_first_relays_receipt_not_from_terminal_clocks(tmp_path: Path) -> None:
    """A request waits at a relay cut off from the home: once it reaches the home after its hold
    TTL it is rejected ``expired``, however far ahead the terminal's clock ran; a request made on
    a terminal whose clock runs a day behind is booked when it reaches the home at once."""
    skew = [timedelta(0)]  # how far the home's clock runs ahead of the other relay's
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], hold_ttl_s=60),
                     clock=lambda: utc_now() + skew[0]) as home, \
            Relay(relay_config(tmp_path, "other", hold_ttl_s=60)) as other:
        async with WireClient(other.url, actor="app") as app, WireClient(home.url, actor="desk") as desk:
            await app.open(CAL)
            await app.wait_synced(CAL)
            ahead = utc_now() + timedelta(hours=3)  # the app's clock
            waited = app.replica(CAL).calendar.book(resource="room-1", start=ahead + timedelta(days=1),
                                                    end=ahead + timedelta(days=1, minutes=30), patient="P", now=ahead).id
            await app.push(CAL)
            await app.wait_acked(CAL)
            assert any(key.startswith(waited + "/") for key in app.replica(CAL).calendar.receipts)  # echoed back
            skew[0] = timedelta(minutes=2)  # two minutes pass before the relays are linked
            other.add_peer(home.url)
            await app.wait_for(lambda: app.replica(CAL).calendar.home == "home" and decided(app, [waited]))
            reservation = app.replica(CAL).calendar.get(waited)
            assert reservation.status is Status.REJECTED and reservation.reason == "expired"

            await desk.open(CAL)
            behind = book_offline(desk)  # made at wire.NOW, days before the relays' clocks
            await desk.push(CAL)
            await desk.wait_for(lambda: decided(desk, [behind]))
            assert desk.replica(CAL).calendar.get(behind).status is Status.BOOKED


async def test_a_client_writing_a_receipt_is_refused(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], hold_ttl_s=60)) as home:
        async with WireClient(home.url, actor="forger") as forger:
            await forger.open(CAL)
            await forger.wait_synced(CAL)
            rid = book_offline(forger)
            forger.replica(CAL).calendar.receipts[f"{rid}/digest/home"] = "2020-01-01T00:00:00Z"
            await forger.push(CAL)
            await forger.wait_for(lambda: forger.closed.is_set())
            assert forger.close_code == 4403
            assert home.metrics.updates_dropped["relay_only"] == 1
