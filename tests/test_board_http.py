"""The board's plain HTTP routes on the relay port: what is served, with which headers, to whom.

No browser needed: a real relay on 127.0.0.1 and urllib. The browser tests are in test_board_browser.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from relays import Relay, relay_config
from wire import WireClient

from accord.relay import board

STATIC = Path(board.__file__).resolve().parent / "static"
CAL = "clinic-1"


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("desk-secret terminal clinic-*\nwall-secret read-only clinic-1\n")
    return path


async def _get(relay: Relay, path: str) -> tuple[int, dict[str, str], bytes]:
    def fetch() -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=5) as reply:
                return reply.status, dict(reply.headers), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    return await asyncio.to_thread(fetch)


async def _seed(relay: Relay, *names: str) -> None:
    """Make calendars exist in the relay's store (as if terminals had written them)."""
    for name in names:
        await relay.edit(name, lambda calendar: calendar.put_resource("room-1"))


async def test_calendar_list_shows_only_what_the_token_may_open(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        await _seed(relay, "clinic-1", "clinic-2", "other-1")
        status, headers, body = await _get(relay, "/?token=desk-secret")
        page = body.decode()
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert 'href="/board/clinic-1"' in page and 'href="/board/clinic-2"' in page
        assert "other-1" not in page

        status, _, body = await _get(relay, "/?token=wall-secret")
        assert status == 200 and 'href="/board/clinic-1"' in body.decode() and "clinic-2" not in body.decode()
        assert "read-only" in body.decode()


async def test_calendar_list_without_a_valid_token_asks_to_sign_in(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        await _seed(relay, "clinic-1")
        for path, problem in (("/", False), ("/?token=nope", True)):
            status, headers, body = await _get(relay, path)
            page = body.decode()
            assert status == 401 and headers["Content-Type"].startswith("text/html")
            assert '<input id="token" name="token"' in page and "clinic-1" not in page
            assert ("not known to this relay" in page) is problem


async def test_open_relay_lists_every_calendar(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        await _seed(relay, "clinic-1", "shared/lab")
        status, _, body = await _get(relay, "/")
        assert status == 200
        assert 'href="/board/clinic-1"' in body.decode() and 'href="/board/shared/lab"' in body.decode()


async def test_access_endpoint_tells_the_page_its_role(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        cases = {
            f"/access/{CAL}?token=desk-secret": (200, {"calendar": CAL, "role": "terminal", "can_write": True}),
            f"/access/{CAL}?token=wall-secret": (200, {"calendar": CAL, "role": "read-only", "can_write": False}),
            "/access/clinic-2?token=wall-secret": (403, None),
            f"/access/{CAL}?token=nope": (401, None),
            f"/access/{CAL}": (401, None),
        }
        for path, (want_status, want_body) in cases.items():
            status, headers, body = await _get(relay, path)
            assert status == want_status, path
            assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
            if want_body is not None:
                assert json.loads(body) == want_body
            else:
                assert json.loads(body)["message"]


async def test_board_page_and_assets_have_their_content_types(tmp_path: Path) -> None:
    expected = {
        f"/board/{CAL}": "text/html; charset=utf-8",
        "/board/shared/lab": "text/html; charset=utf-8",
        "/static/board.js": "text/javascript; charset=utf-8",
        "/static/board-model.js": "text/javascript; charset=utf-8",
        "/static/yjs-bundle.min.js": "text/javascript; charset=utf-8",
        "/static/board.css": "text/css; charset=utf-8",
        "/static/yjs-bundle.LICENSES.txt": "text/plain; charset=utf-8",
        "/static/yjs-bundle.sha256": "text/plain; charset=utf-8",
        "/static/favicon.svg": "image/svg+xml",
    }
    async with Relay(relay_config(tmp_path, "a")) as relay:
        for path, content_type in expected.items():
            status, headers, body = await _get(relay, path)
            assert (status, headers["Content-Type"]) == (200, content_type), path
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert int(headers["Content-Length"]) == len(body) > 0
        _, headers, _ = await _get(relay, f"/board/{CAL}")
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "default-src 'none'" in policy
        for path in ("/static/../board.py", "/static/%2e%2e/board.py", "/static/nope.js", "/board/..", "/board/.hidden",
                     "/nowhere"):
            status, headers, _ = await _get(relay, path)
            assert status == 404, path
            assert headers["X-Content-Type-Options"] == "nosniff"


async def test_websocket_upgrades_still_reach_the_sync_endpoint(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with WireClient(relay.url, calendar=CAL) as stock:  # the y-websocket path /<calendar>
            await stock.wait_synced(CAL)
        async with WireClient(relay.url) as terminal:  # the multiplexed /.accord/v1
            await terminal.open(CAL)
            await terminal.wait_synced(CAL)


def test_bundle_matches_its_checksum_file_and_ships_its_licences() -> None:
    lines = (STATIC / "yjs-bundle.sha256").read_text().splitlines()
    sums = dict(reversed(line.split("  ", 1)) for line in lines)  # type: ignore[misc]
    assert set(sums) == {"yjs-bundle.min.js", "yjs-bundle.LICENSES.txt"}
    for name, digest in sums.items():
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, f"{name}: run sh board/build.sh"
    licences = (STATIC / "yjs-bundle.LICENSES.txt").read_text()
    for package in ("yjs", "y-websocket", "y-indexeddb", "y-protocols", "lib0"):
        assert re.search(rf"==== {re.escape(package)} [0-9.]+ \(MIT\) ====", licences), package
    assert licences.count("Permission is hereby granted, free of charge") == 5
    banner = (STATIC / "yjs-bundle.min.js").read_text().splitlines()[0]
    assert banner.startswith("/*! accord board bundle: yjs 13.6.33, y-websocket 3.1.0, y-indexeddb 9.0.12")


def test_board_pins_its_bundle_inputs() -> None:
    package = json.loads((STATIC.parent.parent / "board" / "package.json").read_text())
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in package["devDependencies"].values())
    lock = json.loads((STATIC.parent.parent / "board" / "package-lock.json").read_text())
    for name, version in package["devDependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version


def test_pages_load_nothing_from_other_hosts() -> None:
    """Own HTML, CSS and JS name no other host; imports are relative or same-origin absolute."""
    for path in STATIC.iterdir():
        if path.suffix in {".html", ".css", ".js"} and not path.name.startswith("yjs-bundle"):
            text = path.read_text()
            assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
    bundle = (STATIC / "yjs-bundle.min.js").read_text()
    assert not re.search(r"\bimport\s*\(?\s*[\"']https?:", bundle)  # no remote module loads in the bundle


async def test_status_is_token_checked_and_names_unknown_calendars(tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", tokens_path=tokens)) as relay:
        await _seed(relay, CAL)
        cases = {
            f"/status/{CAL}?token=nope": 401,
            "/status/clinic-2?token=wall-secret": 403,  # outside the token's globs: its existence is not told
            "/status/clinic-2?token=desk-secret": 404,
            f"/status/{CAL}?token=wall-secret": 200,
            "/status/..?token=desk-secret": 404,
        }
        for path, want in cases.items():
            status, headers, body = await _get(relay, path)
            assert status == want, path
            assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
        _, _, body = await _get(relay, "/status/clinic-2?token=desk-secret")
        assert json.loads(body) == {"error": "no_calendar", "calendar": "clinic-2",
                                    "message": "no calendar named clinic-2 on this relay"}
        assert "clinic-2" not in relay.calendars.loaded  # asking did not create it
        _, _, body = await _get(relay, f"/status/{CAL}?token=wall-secret")
        assert json.loads(body) == {"calendar": CAL, "relay": "a", "home": None, "link": "no-home", "since": None,
                                    "peers_up": 0, "stored": None}


async def test_status_says_how_far_the_store_holds_a_stock_clients_writes(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with WireClient(relay.url, calendar=CAL) as stock:
            await stock.wait_synced(CAL)
            replica = stock.replica(CAL)
            client = replica.doc.client_id
            _, _, body = await _get(relay, f"/status/{CAL}?client={client}")
            assert json.loads(body)["stored"] == 0
            await stock.book(CAL, patient="P-1")
            clock = replica.clocks()[client]
            await relay.wait_committed(CAL, replica.state_vector())
            _, _, body = await _get(relay, f"/status/{CAL}?client={client}")
            assert json.loads(body)["stored"] == clock > 0


async def test_status_follows_the_link_to_the_calendars_home(tmp_path: Path) -> None:
    home_config = relay_config(tmp_path, "a", home_globs=["clinic-*"])
    home = Relay(home_config)
    await home.start()
    try:
        async with Relay(relay_config(tmp_path, "b", peers=[home.url])) as b:
            await home.edit(CAL, lambda calendar: calendar.put_resource("room-1"))
            await b.wait_for(lambda: CAL in b.calendars.loaded and b.calendars.loaded[CAL].replica.calendar.home == "a")
            _, _, body = await _get(home, f"/status/{CAL}")
            assert json.loads(body)["link"] == "home"
            _, _, body = await _get(b, f"/status/{CAL}")
            assert json.loads(body) | {"stored": None} == {"calendar": CAL, "relay": "b", "home": "a", "link": "linked",
                                                           "since": None, "peers_up": 1, "stored": None}

            before = datetime.now(UTC).replace(microsecond=0)
            await home.stop()
            await b.wait_for(lambda: not any(c.is_peer for c in b.connections))
            _, _, body = await _get(b, f"/status/{CAL}")
            down = json.loads(body)
            assert down["link"] == "unreachable" and down["home"] == "a" and down["peers_up"] == 0
            assert before <= datetime.fromisoformat(down["since"]) <= datetime.now(UTC)

            home = Relay(dataclasses.replace(home_config, port=home.port))
            await home.start()
            await b.wait_for(lambda: any(c.is_peer for c in b.connections))
            _, _, body = await _get(b, f"/status/{CAL}")
            assert json.loads(body)["link"] == "linked"
    finally:
        await home.stop()
