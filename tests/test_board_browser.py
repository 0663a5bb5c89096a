"""The live front-desk board in a real headless Chromium, against real relays on 127.0.0.1.

Each page runs in its own browser context (no shared IndexedDB, no BroadcastChannel), so what
one page sees from another came through the relays. Python clients (tests/wire.py) read and
write the same calendars over the terminal protocol.

Needs Chromium (Debian: ``apt-get install -y chromium``) and the pinned ``playwright`` Python
package; Playwright's own browser download is never used. Without them the tests are skipped
with the reason, unless ``ACCORD_REQUIRE_BROWSER=1``, which turns the skip into a failure.
``ACCORD_BOARD_SCREENSHOT=docs/board.png`` makes the populated-board test save its screenshot there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from homes import decide, take_home
from relays import Relay, RelayConfig, relay_config
from wire import WireClient

from accord.engine.authority import HOME_TAG, VERDICT_TAG, HomeRecord, RelayKey, Verdict, request_digest
from accord.engine.calendar import Calendar
from accord.engine.model import Decision
from accord.relay.home import load_relay_key

CAL = "clinic-1"
DAY = "2026-11-25"
NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
DASH = "\N{EN DASH}"  # the board writes time spans as 09:00, en dash, 09:30
WAIT_MS = 5000  # every browser-side wait is bounded by this
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
BOOK_KEYS = {"id", "calendar", "resource", "start", "end", "patient", "service", "note",
             "requested_at", "created_by", "created_at", "updated_by", "updated_at"}


def _find_chromium() -> str | None:
    # The headless shell starts contexts several times faster than the full browser; both work.
    candidates = [os.environ.get("ACCORD_CHROMIUM"), "/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium",
                  shutil.which("chromium-headless-shell"), shutil.which("chromium")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _unavailable(reason: str) -> None:
    if os.environ.get("ACCORD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ACCORD_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


# One browser for the module (each test still gets fresh contexts): launching costs a few seconds here.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    chromium = _find_chromium()
    if chromium is None:
        _unavailable("no Chromium binary (apt-get install -y chromium, or set ACCORD_CHROMIUM)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    async with async_playwright() as driver:
        launched = await driver.chromium.launch(
            executable_path=chromium,
            args=["--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
            timeout=20_000,
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _context(browser: Any) -> Any:
    context = await browser.new_context(timezone_id="UTC", locale="en-GB", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    return context


async def _open_board(context: Any, relay: Relay, *, token: str | None = None, wait: str = "synced") -> Any:
    from playwright.async_api import expect

    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    query = f"?day={DAY}" + (f"&token={token}" if token else "")
    await page.goto(f"http://127.0.0.1:{relay.port}/board/{CAL}{query}")
    # A calendar nobody wrote yet is not opened silently: the board offers to start it.
    await page.wait_for_function("""(wait) => !document.getElementById('missing').hidden ||
        document.getElementById('link').dataset.state === wait""", arg=wait, timeout=WAIT_MS)
    if await page.locator("#missing").is_visible():
        await page.click("#create-calendar")
    await expect(page.locator("#link")).to_have_attribute("data-state", wait)
    return page


async def _record_banner(page: Any) -> None:
    """Keep every text the banner shows in window.banners, in order."""
    await page.evaluate("""() => {
        window.banners = []
        const box = document.getElementById('message-text')
        new MutationObserver(() => window.banners.push(box.textContent))
            .observe(box, { childList: true, characterData: true, subtree: true })
    }""")


def _row(page: Any, text: str) -> Any:
    return page.locator("#rows tr", has_text=text)


async def _book_in_page(page: Any, *, patient: str, start: str, end: str, resource: str = "room-1",
                        note: str = "", actor: str | None = None) -> None:
    if actor is not None:
        await page.fill("#actor", actor)
    await page.fill("#book-resource", resource)
    await page.fill("#book-date", DAY)
    await page.fill("#book-start", start)
    await page.fill("#book-end", end)
    await page.fill("#book-patient", patient)
    await page.fill("#book-note", note)
    await page.click("#book-submit")


async def _wire(relay: Relay, actor: str = "desk-py") -> WireClient:
    client = WireClient(relay.url, actor=actor)
    await client.__aenter__()
    await client.open(CAL)
    await client.wait_synced(CAL)
    return client


def _reservation_with(client: WireClient, patient: str) -> dict[str, Any] | None:
    found = [f for f in client.replica(CAL).calendar.all_fields().values() if f.get("patient") == patient]
    return found[0] if found else None


async def test_booking_in_page_a_appears_in_page_b_on_the_peered_relay(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
        page_a = await _open_board(await _context(browser), a)
        page_b = await _open_board(await _context(browser), b)
        await _book_in_page(page_a, patient="P-0001", start="09:00", end="09:30", note="first visit", actor="Ana")
        await expect(page_a.locator("#message")).to_have_attribute("data-kind", "stored")  # no home: stored is the end
        await expect(page_a.locator("#message")).to_contain_text("stored on relay a (no home relay decides this calendar")

        row = _row(page_b, "P-0001")
        await expect(row).to_have_count(1)
        await expect(row).to_have_attribute("data-status", "booked")
        await expect(row).to_contain_text(f"09:00{DASH}09:30")
        await expect(row).to_contain_text("first visit")
        await expect(row).to_contain_text("Ana")

        client = await _wire(b)
        try:
            await client.wait_for(lambda: _reservation_with(client, "P-0001") is not None)
            fields = _reservation_with(client, "P-0001")
            assert fields is not None
            assert set(fields) == BOOK_KEYS  # the engine's shape, and never a decision key
            assert UUID7.fullmatch(fields["id"])
            assert all(TIME.fullmatch(fields[k]) for k in ("start", "end", "created_at", "updated_at"))
            assert (fields["start"], fields["end"]) == (f"{DAY}T09:00:00Z", f"{DAY}T09:30:00Z")
            assert fields["created_by"] == fields["updated_by"] == "Ana"
            assert client.replica(CAL).calendar.get(fields["id"]).status == "booked"
        finally:
            await client.__aexit__(None, None, None)
        assert page_a.errors == [] and page_b.errors == []


async def test_python_client_change_appears_in_both_pages(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
        page_a = await _open_board(await _context(browser), a)
        page_b = await _open_board(await _context(browser), b)
        client = await _wire(a)
        try:
            calendar = client.replica(CAL).calendar
            rid = calendar.book(resource="room-2", start=f"{DAY}T10:00Z", end=f"{DAY}T10:20Z", patient="P-0002",
                                note="from python", now=NOW).id
            await client.push(CAL)
            for page in (page_a, page_b):
                await expect(page.locator(f'#rows tr[data-id="{rid}"]')).to_contain_text(f"10:00{DASH}10:20")
            calendar.reschedule(rid, start=f"{DAY}T11:00Z", end=f"{DAY}T11:45Z", now=NOW)
            started = time.monotonic()
            await client.push(CAL)
            for page in (page_a, page_b):
                row = page.locator(f'#rows tr[data-id="{rid}"]')
                await expect(row).to_contain_text(f"11:00{DASH}11:45")
                assert time.monotonic() - started < 1.0, "a change must appear on the board within a second"
                await expect(row).to_contain_text("desk-py")
        finally:
            await client.__aexit__(None, None, None)


async def test_cancel_in_page_b_reaches_the_python_client(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
        client = await _wire(a)
        try:
            calendar = client.replica(CAL).calendar
            rid = calendar.book(resource="room-1", start=f"{DAY}T13:00Z", end=f"{DAY}T13:30Z", patient="P-0003", now=NOW).id
            await client.push(CAL)
            page_b = await _open_board(await _context(browser), b)
            await page_b.fill("#actor", "Bo")
            await page_b.click(f'#rows tr[data-id="{rid}"] button[data-action="cancel"]')
            await page_b.fill("#cancel-reason", "patient phoned")
            await page_b.click("#cancel-submit")
            await expect(page_b.locator(f'#rows tr[data-id="{rid}"]')).to_have_attribute("data-status", "cancelled")

            await client.wait_for(lambda: calendar.get(rid).status == "cancelled")
            cancelled = calendar.get(rid)
            assert cancelled.reason == "patient phoned" and cancelled.updated_by == "Bo"
            fields = calendar.all_fields()[rid]
            assert TIME.fullmatch(fields["cancelled_at"]) and TIME.fullmatch(fields["updated_at"])
        finally:
            await client.__aexit__(None, None, None)


async def _stored_in_browser(page: Any, patient: str) -> bool:
    """True once the page's IndexedDB copy (read through a fresh document) holds the booking."""
    script = """async (patient) => {
        const { Y, IndexeddbPersistence } = await import('/static/yjs-bundle.min.js')
        const doc = new Y.Doc()
        const stored = new IndexeddbPersistence('accord:' + window.accordBoard.calendar, doc)
        await stored.whenSynced
        const found = Object.values(doc.getMap('reservations').toJSON()).some(f => f.patient === patient)
        await stored.destroy()
        return found
    }"""
    async with asyncio.timeout(WAIT_MS / 1000):
        while not await page.evaluate(script, patient):
            await asyncio.sleep(0.05)
    return True


async def test_offline_booking_in_the_page_reaches_python_client_after_relay_restart(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    config = relay_config(tmp_path, "a")
    relay = Relay(config)
    await relay.start()
    port = relay.port
    try:
        context = await _context(browser)
        page = await _open_board(context, relay)
        await relay.stop()
        await expect(page.locator("#link")).to_have_attribute("data-state", "offline")

        await _book_in_page(page, patient="P-OFF-1", start="08:00", end="08:15", note="booked offline")
        await expect(_row(page, "P-OFF-1")).to_have_count(1)
        await expect(page.locator("#message")).to_contain_text("saved on this device; it is sent when the relay is back")
        await _stored_in_browser(page, "P-OFF-1")

        # A second booking, then the tab is closed: only IndexedDB holds it when the relay comes back.
        await _book_in_page(page, patient="P-OFF-2", start="08:30", end="08:45")
        await _stored_in_browser(page, "P-OFF-2")
        await page.close()
        page = await context.new_page()

        relay = Relay(_same_port(config, port))
        await relay.start()
        assert relay.port == port
        client = await _wire(relay)
        try:
            await page.goto(f"http://127.0.0.1:{port}/board/{CAL}?day={DAY}")
            await expect(page.locator("#link")).to_have_attribute("data-state", "synced")
            await client.wait_for(lambda: all(_reservation_with(client, p) for p in ("P-OFF-1", "P-OFF-2")))
            assert _reservation_with(client, "P-OFF-1")["note"] == "booked offline"  # type: ignore[index]
        finally:
            await client.__aexit__(None, None, None)
    finally:
        await relay.stop()


def _same_port(config: RelayConfig, port: int) -> RelayConfig:
    return dataclasses.replace(config, port=port)


async def test_page_that_stays_open_sends_offline_booking_when_relay_returns(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    config = relay_config(tmp_path, "a")
    relay = Relay(config)
    await relay.start()
    port = relay.port
    try:
        page = await _open_board(await _context(browser), relay)
        await relay.stop()
        await expect(page.locator("#link")).to_have_attribute("data-state", "offline")
        await _book_in_page(page, patient="P-OFF-3", start="07:00", end="07:30")
        await expect(_row(page, "P-OFF-3")).to_have_count(1)

        relay = Relay(_same_port(config, port))
        await relay.start()
        await expect(page.locator("#link")).to_have_attribute("data-state", "synced", timeout=8000)
        client = await _wire(relay)
        try:
            await client.wait_for(lambda: _reservation_with(client, "P-OFF-3") is not None)
        finally:
            await client.__aexit__(None, None, None)
    finally:
        await relay.stop()


async def test_read_only_token_sees_no_edit_controls_and_its_forced_write_is_dropped(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\nwall-secret read-only clinic-*\n")
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        client = WireClient(relay.url, token="desk-secret", actor="desk-py")
        async with client:
            await client.open(CAL)
            calendar = client.replica(CAL).calendar
            rid = calendar.book(resource="room-1", start=f"{DAY}T09:00Z", end=f"{DAY}T09:30Z", patient="P-RO", now=NOW).id
            await client.push(CAL)
            await client.wait_acked(CAL)

            page = await _open_board(await _context(browser), relay, token="wall-secret")
            await expect(_row(page, "P-RO")).to_have_count(1)
            assert "token=" not in page.url  # moved to sessionStorage, out of the address bar
            await expect(page.locator("#access")).to_contain_text("Read-only")
            for hidden in ("#book", "#identity", "#rows button", "th.writer-only"):
                await expect(page.locator(hidden)).to_be_hidden()

            await page.evaluate("""(id) => {
                const { doc } = window.accordBoard
                doc.transact(() => doc.getMap('reservations').get(id).set('note', 'forged by the wallboard'))
            }""", rid)
            await expect(page.locator("#link")).to_have_attribute("data-state", "refused")
            await expect(page.locator("#link")).to_contain_text("4403")

            rid2 = calendar.book(resource="room-1", start=f"{DAY}T10:00Z", end=f"{DAY}T10:30Z", patient="P-RO-2", now=NOW).id
            await client.push(CAL)
            await client.wait_acked(CAL)  # the relay has processed everything before this too
            assert calendar.get(rid).note == ""
            assert relay.calendars.loaded[CAL].replica.calendar.get(rid).note == ""
            assert rid2 in calendar.reservations


async def test_refused_actions_show_a_clear_message(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as relay:
        client = await _wire(relay)
        try:
            calendar = client.replica(CAL).calendar
            calendar.put_resource("room-1", name="Room 1")
            rid = calendar.book(resource="room-1", start=f"{DAY}T09:00Z", end=f"{DAY}T09:30Z", patient="P-R", now=NOW).id
            await client.push(CAL)
            page = await _open_board(await _context(browser), relay)
            await expect(_row(page, "P-R")).to_have_count(1)
            message = page.locator("#message")

            await _book_in_page(page, patient="P-X", start="10:00", end="09:00")
            await expect(message).to_have_attribute("data-kind", "error")
            await expect(message).to_contain_text("end 09:00 is not after start 10:00")  # local times, never stored UTC
            assert not TIME.search(await message.inner_text())
            await expect(page.locator("#undo")).to_be_hidden()

            await _book_in_page(page, patient="P-X", start="10:00", end="10:30", resource="room-9")
            await expect(message).to_contain_text("room-9 is not declared in this calendar; choose one of room-1")
            await expect(_row(page, "P-X")).to_have_count(0)

            # The dialog is open when another desk cancels: the reschedule is checked against the new facts.
            await page.click(f'#rows tr[data-id="{rid}"] button[data-action="reschedule"]')
            calendar.cancel(rid, now=NOW)
            await client.push(CAL)
            await expect(page.locator(f'#rows tr[data-id="{rid}"]')).to_have_attribute("data-status", "cancelled")
            await page.fill("#reschedule-start", "11:00")
            await page.fill("#reschedule-end", "11:30")
            await page.click("#reschedule-submit")
            await expect(page.locator("#reschedule-problem")).to_contain_text(
                f"cannot reschedule reservation {rid} (cancelled): it is cancelled; book a new reservation instead")
            assert calendar.get(rid).start.hour == 9
        finally:
            await client.__aexit__(None, None, None)


def _seed_day(calendar: Calendar, home_id: str, home_key: RelayKey) -> dict[str, str]:
    """A front desk's morning in every status the board shows, decided by genuine verdicts of the
    calendar's home (``home_id``, signing with ``home_key``), plus forgeries that must change nothing.
    Returns patient -> reservation id."""
    def at(hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 11, 25, hour, minute, tzinfo=UTC)

    take_home(calendar, home_id, home_key)
    calendar.put_resource("room-1", name="Room 1")
    calendar.put_resource("room-2", name="Room 2")
    calendar.put_resource("dr-lee", name="Dr Lee")
    ids: dict[str, str] = {}

    def book(patient: str, resource: str, start: datetime, minutes: int, **kw: Any) -> str:
        ids[patient] = calendar.book(resource=resource, start=start, end=start + timedelta(minutes=minutes),
                                     patient=patient, now=NOW, **kw).id
        return ids[patient]

    def verdict(rid: str, outcome: Decision, **kw: Any) -> str:
        return decide(calendar, rid, outcome, relay_id=home_id, key=home_key, **kw)

    first = book("P-1042", "room-1", at(8, 30), 30, service="check-up", note="fasting since midnight")
    verdict(first, Decision.BOOKED)
    calendar.check_in(first, now=NOW)
    genuine = verdict(book("P-2210", "room-1", at(9), 20, service="vaccination"), Decision.BOOKED)
    clash = book("P-3318", "room-1", at(9, 10), 20, service="vaccination", note="asked for the morning")
    verdict(clash, Decision.REJECTED, conflict_with=ids["P-2210"], reason="room-1 is fully booked 09:00-09:20")
    pending = book("P-4521", "dr-lee", at(9, 30), 45, service="consultation", note="interpreter needed (Polish)")
    cancelled = book("P-5007", "room-2", at(10), 30, service="dressing change")
    verdict(cancelled, Decision.BOOKED)
    calendar.cancel(cancelled, now=NOW, reason="patient phoned: feeling better")
    verdict(cancelled, Decision.RELEASED)
    verdict(book("P-6123", "dr-lee", at(11), 30, service="follow-up"), Decision.BOOKED)
    _forge(calendar, pending, genuine)
    return ids


def _forge(calendar: Calendar, victim: str, genuine: str) -> None:
    """What a hostile writer could put in the document to book ``victim`` (``genuine`` is the entry
    key of another reservation's genuine verdict); none of it is a decision, in Python or the page."""
    decide(calendar, victim, Decision.BOOKED, relay_id="relay-a", key=RelayKey.generate())  # an impostor's key
    with calendar.doc.transaction():
        calendar.verdicts[genuine.replace(genuine.split("/", 1)[0], victim, 1)] = calendar.verdicts[genuine]  # a copy
    # A home record whose key is the identity point verifies any signature under WebCrypto alone; libsodium
    # (and so the board) refuses it. Its relay id sorts first, so it would take the calendar if it counted.
    identity = (1).to_bytes(32, "little")
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    forger = HomeRecord(calendar.name, 1, "0-forger", b64(identity), b64(identity))
    base_r = "5866666666666666666666666666666666666666666666666666666666666666"  # R = [1]B, S = 1
    any_signature = bytes.fromhex(base_r) + (1).to_bytes(32, "little")
    forged_home = f"{HOME_TAG}.{b64(forger.payload())}.{b64(any_signature)}"
    calendar.homes[forger.entry_key(forged_home)] = forged_home
    fields = calendar.all_fields()[victim]
    forged = Verdict(calendar.name, victim, request_digest(victim, fields), "booked",
                     (fields["resource"], fields["start"], fields["end"]), "", "", "0-forger", 1, "2026-11-25T07:00:00Z", 9)
    encoded = f"{VERDICT_TAG}.{b64(forged.payload())}.{b64(any_signature)}"
    calendar.verdicts[forged.entry_key(encoded)] = encoded


@contextlib.asynccontextmanager
async def _seeded(tmp_path: Path) -> AsyncIterator[tuple[Relay, dict[str, str]]]:
    """relay-1, where the desk's board opens, linked to relay-2, the calendar's recorded home
    (its own key signs the seeded verdicts; started without --home, so nothing else gets decided).
    Yields relay-1 and the seeded ids (patient -> reservation id)."""
    async with Relay(relay_config(tmp_path, "relay-2")) as home, \
            Relay(relay_config(tmp_path, "relay-1", peers=[home.url])) as relay:
        key = await load_relay_key(home.running.storage)
        ids = await relay.edit(CAL, lambda calendar: _seed_day(Calendar(CAL, calendar.doc, actor="desk-2"), "relay-2", key))
        await relay.wait_for(lambda: any(c.is_peer for c in relay.connections))
        yield relay, ids


async def _statuses_once_verified(page: Any) -> dict[str, str]:
    """Every row's status, read once the page has checked every signature it holds."""
    from playwright.async_api import expect

    await expect(page.locator("#day-table")).to_have_attribute("data-verified", "all")
    return {str(await row.get_attribute("data-id")): str(await row.get_attribute("data-status"))
            for row in await page.locator("#rows tr").all()}


async def test_populated_board_shows_every_status_as_the_engine_derives_it(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with _seeded(tmp_path) as (relay, ids):
        page = await _open_board(await _context(browser), relay)
        await expect(page.locator("#link")).to_contain_text("the home relay (relay-2) is linked")
        await expect(page.locator("#rows tr")).to_have_count(len(ids))
        calendar = await relay.calendar(CAL)
        expected = {rid: str(calendar.get(rid).status) for rid in ids.values()}
        await expect(page.locator(f'#rows tr[data-id="{ids["P-2210"]}"]')).to_have_attribute("data-status", "booked")
        assert await _statuses_once_verified(page) == expected
        assert set(expected.values()) == {"pending", "booked", "rejected", "cancelled", "checked-in"}
        assert expected[ids["P-4521"]] == "pending"  # every forgery above was for this one
        rejected = page.locator(f'#rows tr[data-id="{ids["P-3318"]}"]')
        await expect(rejected).to_contain_text(f"conflicts with P-2210 09:00{DASH}09:20 on room-1")
        # Only allowed moves are offered: a pending booking cannot be checked in yet.
        pending = page.locator(f'#rows tr[data-id="{ids["P-4521"]}"]')
        await expect(pending.locator('button[data-action="check in"]')).to_have_count(0)
        await expect(pending.locator('button[data-action="cancel"]')).to_have_count(1)

        # Moving between days with the picker's buttons, and back.
        await page.click("#next-day")
        await expect(page.locator("#empty")).to_be_visible()
        await page.click("#prev-day")
        await expect(page.locator("#rows tr")).to_have_count(len(ids))

        target = os.environ.get("ACCORD_BOARD_SCREENSHOT")
        shot = Path(target) if target else tmp_path / "board.png"
        await page.fill("#book-resource", "room-2")
        await page.fill("#book-start", "11:30")
        await page.fill("#book-end", "12:00")
        await page.fill("#actor", "Ana (desk 1)")
        await expect(page.locator("#day-table")).to_have_attribute("data-verified", "all")
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        assert page.errors == []


async def test_a_browser_that_cannot_check_signatures_shows_nothing_booked_and_says_why(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with _seeded(tmp_path) as (relay, ids):
        context = await _context(browser)
        # What a page served over plain http from a LAN address gets: no WebCrypto (secure contexts only).
        await context.add_init_script("Object.defineProperty(Crypto.prototype, 'subtle', { get: () => undefined })")
        page = await _open_board(context, relay)
        await expect(page.locator("#rows tr")).to_have_count(len(ids))
        statuses = await _statuses_once_verified(page)
        assert statuses == {ids["P-1042"]: "checked-in", ids["P-5007"]: "cancelled"} | {
            ids[p]: "pending" for p in ("P-2210", "P-3318", "P-4521", "P-6123")}  # the marks still count
        await expect(page.locator("#trust")).to_contain_text("cannot check the home relay's signatures")
        assert page.errors == []


async def test_home_relay_decisions_show_live_and_a_rejected_booking_is_rescheduled(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    home_config = relay_config(tmp_path, "a", home_globs=["clinic-*"])
    async with Relay(home_config) as a, Relay(relay_config(tmp_path, "b", peers=[a.url])) as b:
        page = await _open_board(await _context(browser), b)  # a desk on the relay that is not home
        message = page.locator("#message-text")
        await _book_in_page(page, patient="P-FIRST", start="09:00", end="09:30", actor="Ana")
        first = _row(page, "P-FIRST")
        await expect(first).to_have_attribute("data-status", "booked")  # pending until relay-a's decision arrives
        await expect(page.locator("#message")).to_have_attribute("data-kind", "booked")
        await expect(message).to_have_text("Request for P-FIRST on room-1 at 09:00: booked by the home (relay a).")

        await _record_banner(page)
        await _book_in_page(page, patient="P-SECOND", start="09:15", end="09:45")
        second = _row(page, "P-SECOND")
        await expect(second).to_have_attribute("data-status", "rejected")
        await expect(second).to_contain_text(f"conflicts with P-FIRST 09:00{DASH}09:30 on room-1")
        await expect(second.locator('button[data-action="check in"]')).to_have_count(0)
        # The banner follows the decision: it says rejected, and never said booked on the way.
        await expect(page.locator("#message")).to_have_attribute("data-kind", "rejected")
        await expect(message).to_have_text("Request for P-SECOND on room-1 at 09:15: rejected by the home relay "
                                           f"(conflicts with P-FIRST 09:00{DASH}09:30 on room-1).")
        banners = [text for text in await page.evaluate("window.banners") if "P-SECOND" in text]
        assert banners[0] == "Request for P-SECOND on room-1 at 09:15: saved on this device; not on the relay yet."
        assert not [text for text in banners if re.search(r"\bbook(ed)?\b", text, re.I)], banners

        # Keyboard only: open the reschedule dialog from the row, move it after the first booking, save.
        await second.locator('button[data-action="reschedule"]').focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#reschedule-dialog")).to_be_visible()
        await page.fill("#reschedule-start", "09:30")
        await page.fill("#reschedule-end", "10:00")
        await page.keyboard.press("Enter")  # submits the dialog's form
        await expect(page.locator("#reschedule-dialog")).to_be_hidden()
        await expect(second).to_have_attribute("data-status", "booked")
        await expect(second).to_contain_text(f"09:30{DASH}10:00")

        await first.locator('button[data-action="check in"]').focus()
        await page.keyboard.press("Enter")
        await expect(first).to_have_attribute("data-status", "checked-in")
        await expect(page.locator("#message")).to_contain_text("Checked in P-FIRST")
        assert page.errors == []

        # The page wrote requests and marks only: relay-a's record is the one home record, and
        # every verdict is relay-a's own.
        home = await a.calendar(CAL)
        assert [key.rsplit("/", 1)[0] for key in json.loads(str(home.homes))] == ["1/a"]
        verdicts = json.loads(str(home.verdicts))
        assert len(verdicts) >= 3 and all(home.verifier.verify(k, v, home.home_record) for k, v in verdicts.items())


async def test_sign_in_from_the_calendar_list_opens_the_board_with_the_kept_token(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\n")
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        for name in (CAL, "other-1"):
            await relay.edit(name, lambda calendar: calendar.put_resource("room-1"))
        context = await _context(browser)
        page = await context.new_page()

        await page.goto(f"http://127.0.0.1:{relay.port}/board/{CAL}?day={DAY}")  # no token yet: the board asks
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#login-token", "wrong")
        await page.press("#login-token", "Enter")
        await expect(page.locator("#login-problem")).to_contain_text("not known to this relay")

        await page.goto(f"http://127.0.0.1:{relay.port}/")
        await page.fill("#token", "desk-secret")
        await page.press("#token", "Enter")
        await expect(page.get_by_role("link", name=CAL)).to_be_visible()
        await expect(page.get_by_role("link", name="other-1")).to_have_count(0)
        assert "token=" not in page.url  # kept in sessionStorage instead
        await page.get_by_role("link", name=CAL).click()
        await expect(page.locator("#link")).to_have_attribute("data-state", "synced")
        await expect(page.locator("#book")).to_be_visible()


async def test_badge_says_decisions_wait_while_the_home_is_down_and_pending_requests_decide_when_it_is_back(
        browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    home_config = relay_config(tmp_path, "relay-2", home_globs=["clinic-*"])
    home = Relay(home_config)
    await home.start()
    try:
        async with Relay(relay_config(tmp_path, "relay-1", peers=[home.url])) as desk:
            await home.edit(CAL, lambda calendar: calendar.put_resource("room-1"))
            await desk.wait_for(lambda: CAL in desk.calendars.loaded
                                and desk.calendars.loaded[CAL].replica.calendar.home == "relay-2")
            page = await _open_board(await _context(browser), desk)
            link, message = page.locator("#link"), page.locator("#message-text")
            await expect(link).to_contain_text("Connected to relay-1: changes appear live; the home relay (relay-2) is linked")

            await home.stop()
            await expect(link).to_have_attribute("data-state", "waiting")
            await expect(link).to_contain_text(
                re.compile(r"Connected to relay-1; decisions waiting for the home \(relay-2 unreachable since \d\d:\d\d\)"))
            await _book_in_page(page, patient="P-WAIT", start="09:00", end="09:30")
            row = _row(page, "P-WAIT")
            await expect(row).to_have_attribute("data-status", "pending")
            await expect(message).to_contain_text(
                "Request for P-WAIT on room-1 at 09:00: stored on relay-1; waiting for the home (relay-2) to decide; "
                "the home is unreachable since ")
            assert _stored_on(desk, "P-WAIT")  # what the banner says is so

            home = Relay(dataclasses.replace(home_config, port=home.port))
            await home.start()
            await expect(link).to_have_attribute("data-state", "synced", timeout=8000)
            await expect(link).to_contain_text("the home relay (relay-2) is linked")
            await expect(row).to_have_attribute("data-status", "booked", timeout=8000)
            await expect(message).to_have_text("Request for P-WAIT on room-1 at 09:00: booked by the home (relay-2).")
            assert page.errors == []
    finally:
        await home.stop()


def _stored_on(relay: Relay, patient: str) -> bool:
    """True if the relay's committed copy holds a reservation for ``patient``."""
    handle = relay.calendars.loaded[CAL]
    return any(f.get("patient") == patient for f in handle.replica.calendar.all_fields().values()) and \
        relay.calendars.is_committed(CAL, handle.replica.state_vector())


async def test_the_day_grid_shows_the_free_gap_between_two_bookings_and_a_click_books_it(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as relay:
        client = await _wire(relay)
        try:
            calendar = client.replica(CAL).calendar
            for resource in ("room-1", "room-2"):
                calendar.put_resource(resource)
            for patient, start, end in (("P-A", "09:00", "09:30"), ("P-B", "10:00", "10:30")):
                calendar.book(resource="room-1", start=f"{DAY}T{start}Z", end=f"{DAY}T{end}Z", patient=patient, now=NOW)
            await client.push(CAL)
            page = await _open_board(await _context(browser), relay)
            grid = page.locator("#grid")
            await expect(grid.locator(".booking", has_text="P-A")).to_contain_text(f"09:00{DASH}09:30")
            await expect(grid.locator(".booking", has_text="P-B")).to_have_attribute("data-status", "booked")
            gap = grid.get_by_role("button", name=f"Book room-1 09:30{DASH}10:00 (free)")
            await expect(gap).to_have_count(1)
            for busy in ("09:00", "10:00"):  # no free time is offered over a booking
                await expect(grid.get_by_role("button", name=re.compile(f"^Book room-1 {busy}"))).to_have_count(0)
            await expect(grid.get_by_role("button", name=f"Book room-2 09:00{DASH}09:30 (free)")).to_have_count(1)

            await gap.click()
            for field, value in (("#book-resource", "room-1"), ("#book-date", DAY), ("#book-start", "09:30"),
                                 ("#book-end", "10:00")):
                await expect(page.locator(field)).to_have_value(value)
            await expect(page.locator("#book-patient")).to_be_focused()
            await page.keyboard.type("P-GAP")
            await page.keyboard.press("Enter")

            await client.wait_for(lambda: _reservation_with(client, "P-GAP") is not None)
            fields = _reservation_with(client, "P-GAP")
            assert fields is not None
            assert (fields["resource"], fields["start"], fields["end"]) == ("room-1", f"{DAY}T09:30:00Z", f"{DAY}T10:00:00Z")
            await expect(gap).to_have_count(0)  # taken now
            await expect(grid.locator(".booking", has_text="P-GAP")).to_have_count(1)
            assert page.errors == []
        finally:
            await client.__aexit__(None, None, None)


async def test_the_grid_offers_only_open_time_and_room_left_by_capacity_and_a_click_books_it(
        browser: Any, tmp_path: Path) -> None:
    """Opening hours (with a dated exception) and capacity shape what the grid offers, as the FHIR
    Slot search computes it: closed time is marked and never offered; a room for two still offers
    the half hour it has one booking in."""
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as relay:
        client = await _wire(relay)
        try:
            calendar = client.replica(CAL).calendar
            calendar.put_resource("room-1")
            calendar.put_resource("gym", capacity=2)
            calendar.set_opening_hours("room-1", weekly={"wed": [["09:00", "12:00"], ["13:00", "19:30"]],
                                                           "thu": [["09:00", "17:00"]]},
                                       exceptions={"2026-11-26": []})
            calendar.set_opening_hours("gym", weekly={"wed": [["10:00", "11:00"]]})
            calendar.book(resource="gym", start=f"{DAY}T10:00Z", end=f"{DAY}T10:30Z", patient="P-GYM", now=NOW)
            await client.push(CAL)
            page = await _open_board(await _context(browser), relay)
            grid = page.locator("#grid")
            await expect(grid.locator(".booking", has_text="P-GYM")).to_have_count(1)
            free = grid.get_by_role("button", name=re.compile(r"\(free\)$"))
            names = sorted([await b.get_attribute("aria-label") or "" for b in await free.all()])
            room1 = [n for n in names if n.startswith("Book room-1")]
            assert room1[0] == f"Book room-1 09:00{DASH}09:30 (free)" and len(room1) == 6 + 13  # 09-12, 13-19:30
            assert f"Book room-1 12:00{DASH}12:30 (free)" not in names  # the lunch break is closed
            assert [n for n in names if n.startswith("Book gym")] == [
                f"Book gym 10:00{DASH}10:30 (free)", f"Book gym 10:30{DASH}11:00 (free)"]  # one of two places taken
            await expect(grid.locator(".closed", has_text="closed")).not_to_have_count(0)
            assert await grid.locator(".closed[title^='room-1 closed 12:00']").count() == 1
            await grid.get_by_role("button", name=f"Book gym 10:00{DASH}10:30 (free)").click()
            await expect(page.locator("#book-patient")).to_be_focused()
            await page.keyboard.type("P-GYM-2")
            await page.keyboard.press("Enter")
            await client.wait_for(lambda: _reservation_with(client, "P-GYM-2") is not None)
            await expect(grid.get_by_role("button", name=f"Book gym 10:00{DASH}10:30 (free)")).to_have_count(0)  # full now
            await page.locator("#next-day").click()  # Thursday the 26th: the exception closes room-1 all day
            await expect(grid.get_by_role("button", name=re.compile(r"^Book room-1"))).to_have_count(0)
            assert page.errors == []
        finally:
            await client.__aexit__(None, None, None)


async def test_noshow_fulfilled_entered_in_error_and_undo_from_the_board_reach_the_python_client(
        browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as relay:  # no home: a request counts as booked at once
        client = await _wire(relay)
        try:
            calendar = client.replica(CAL).calendar
            ids = {patient: calendar.book(resource="room-1", start=f"{DAY}T{hour}:00Z", end=f"{DAY}T{hour}:30Z",
                                          patient=patient, now=NOW).id
                   for patient, hour in (("P-NS", "09"), ("P-FU", "10"), ("P-EE", "11"))}
            await client.push(CAL)
            page = await _open_board(await _context(browser), relay)

            async def more(patient: str, action: str) -> None:
                row = page.locator(f'#rows tr[data-id="{ids[patient]}"]')
                await row.locator("summary").click()
                await row.locator(f'button[data-action="{action}"]').click()

            await more("P-NS", "mark no-show")
            await client.wait_for(lambda: calendar.get(ids["P-NS"]).status == "noshow")
            await expect(page.locator("#message-text")).to_contain_text(
                f"Marked no-show P-NS, 09:00{DASH}09:30 on room-1: stored on")
            no_show = page.locator(f'#rows tr[data-id="{ids["P-NS"]}"]')
            await expect(no_show).to_have_attribute("data-status", "noshow")
            await expect(no_show.locator("button[data-action]")).to_have_count(1)  # only entered-in-error is left

            await page.click(f'#rows tr[data-id="{ids["P-FU"]}"] button[data-action="check in"]')
            await more("P-FU", "fulfil")
            await client.wait_for(lambda: calendar.get(ids["P-FU"]).status == "fulfilled")

            await more("P-EE", "mark entered-in-error")
            await expect(page.locator("#cancel-title")).to_have_text("Mark entered in error")
            await page.fill("#cancel-reason", "duplicate of P-NS")
            await page.click("#cancel-submit")
            await client.wait_for(lambda: calendar.get(ids["P-EE"]).status == "entered-in-error")
            assert calendar.get(ids["P-EE"]).reason == "duplicate of P-NS"

            # Undo of a booking made seconds ago is safe: it cancels it. Nothing else is undone.
            await _book_in_page(page, patient="P-OOPS", start="12:00", end="12:30")
            await expect(page.locator("#undo")).to_be_visible()
            await page.click("#undo")
            await client.wait_for(lambda: (f := _reservation_with(client, "P-OOPS")) is not None and "cancelled_at" in f)
            oops = _reservation_with(client, "P-OOPS")
            assert oops is not None and calendar.get(oops["id"]).status == "cancelled"
            assert calendar.get(oops["id"]).reason == "undone at the desk: booked by mistake"
            await expect(page.locator("#message-text")).to_contain_text("Undone (cancelled) the request for P-OOPS")
            await expect(page.locator("#undo")).to_be_hidden()
            assert page.errors == []
        finally:
            await client.__aexit__(None, None, None)


async def test_a_calendar_the_relay_does_not_hold_is_named_not_opened_empty(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("desk-secret terminal clinic-*\nwall-secret read-only clinic-*\n")
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        await relay.edit(CAL, lambda calendar: calendar.put_resource("room-1"))
        context = await _context(browser)
        page = await context.new_page()
        for token, can_create in (("wall-secret", False), ("desk-secret", True)):
            await page.goto(f"http://127.0.0.1:{relay.port}/board/clinic-typo?token={token}")
            await expect(page.locator("#missing")).to_be_visible()
            await expect(page.locator("#missing-text")).to_have_text("There is no calendar named “clinic-typo” on this relay.")
            await expect(page.locator("#main")).to_be_hidden()
            await expect(page.locator("#create-calendar")).to_be_visible(visible=can_create)
        assert "clinic-typo" not in await relay.calendars.known()  # looking opened nothing

        await page.click("#create-calendar")  # a writer may start it on purpose
        await expect(page.locator("#link")).to_have_attribute("data-state", "synced")
        assert "clinic-typo" in relay.calendars.loaded


async def test_the_board_shows_times_in_the_calendars_zone_like_the_cli(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    async with Relay(relay_config(tmp_path, "a")) as relay:
        page = await _open_board(await _context(browser), relay)
        assert await page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == "UTC"  # as launched here
        client = await _wire(relay)
        try:
            calendar = client.replica(CAL).calendar
            rid = calendar.book(resource="room-2", start=f"{DAY}T10:00Z", end=f"{DAY}T10:20Z", patient="P-0002", now=NOW).id
            await client.push(CAL)
            row = page.locator(f'#rows tr[data-id="{rid}"]')
            await expect(row).to_contain_text(f"10:00{DASH}10:20")
            # What `accord terminal time-zone Pacific/Auckland` sets: 10:00Z is 23:00 there in December.
            await relay.edit(CAL, lambda c: c.set_time_zone("Pacific/Auckland"))
            await expect(page.locator("#tz-name")).to_contain_text("Pacific/Auckland (the calendar's zone")
            await expect(row).to_contain_text(f"23:00{DASH}23:20")
            # A booking typed on the board is read in that zone too.
            await page.fill("#book-resource", "room-3")
            await page.fill("#book-patient", "P-0003")
            await page.fill("#book-date", DAY)
            await page.fill("#book-start", "08:00")
            await page.fill("#book-end", "08:30")
            await page.click("#book-submit")
            await client.wait_for(lambda: any(r.patient == "P-0003" for r in calendar.list()))
            made = next(r for r in calendar.list() if r.patient == "P-0003")
            assert made.start.isoformat() == f"{_previous(DAY)}T19:00:00+00:00"  # 08:00 in Auckland (UTC+13)
        finally:
            await client.__aexit__(None, None, None)


def _previous(day: str) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()
