"""Tokens an operator can rotate: hashed in the file, named in logs, reloaded on SIGHUP without
dropping anyone else; monitor tokens for /metrics; read-only viewers announce no presence; one
connection's presence is bounded; outbound peer links share only what they are told to."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from relays import Relay, RelayProcess, relay_config
from test_relay_awareness import next_awareness
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wire import WireClient

from accord.engine.protocol import Awareness, AwarenessEntry, encode, encode_awareness
from accord.engine.session import MAX_PRESENCE_CLIENTS
from accord.relay.auth import TokenBook, token_hash
from accord.relay.token_cli import main as token_main

CAL = "clinic-1"


def write_tokens(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_minted_tokens_go_in_the_file_as_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert token_main(["new", "--name", "desk-1", "--role", "terminal", "--calendars", "clinic-*", "--json"]) == 0
    minted = json.loads(capsys.readouterr().out)
    assert minted["token"] not in minted["line"] and minted["line"].startswith("sha256:")
    book = TokenBook.load(write_tokens(tmp_path / "t.txt", minted["line"]))
    grant = book.check(minted["token"])
    assert grant is not None and grant.name == "desk-1" and grant.allows("clinic-9") and not grant.allows("other")
    assert book.check(minted["token"] + "x") is None and book.check(token_hash(minted["token"])) is None
    assert token_main(["new", "--name", "bad name"]) == 2


async def test_names_not_secrets_in_logs_and_monitor_tokens_for_metrics(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    tokens = write_tokens(tmp_path / "t.txt", f"{token_hash('desk-secret')} terminal clinic-* name=desk-1",
                          f"{token_hash('prom-secret')} monitor * name=prometheus", "admin-secret admin * name=ops")
    caplog.set_level(logging.INFO)
    async with Relay(relay_config(tmp_path, "home", tokens_path=tokens, home_globs=["clinic-*"])) as relay:
        async with WireClient(relay.url, token="desk-secret") as desk:
            await desk.open(CAL)
            await desk.book(CAL)
            await desk.wait_acked(CAL)
        base = relay.board_url.rstrip("/")
        assert (await asyncio.to_thread(get, base + "/metrics"))[0] == 401
        assert (await asyncio.to_thread(get, base + "/metrics", "desk-secret"))[0] == 401
        status, body = await asyncio.to_thread(get, base + "/metrics", "prom-secret")
        assert status == 200 and "accord_updates_in_total" in body
        assert (await asyncio.to_thread(get, base + "/metrics", "admin-secret"))[0] == 200
        assert (await asyncio.to_thread(get, base + "/healthz"))[0] == 200  # up or not: anyone may ask
        async with connect(relay.url + "/" + CAL, additional_headers={"Authorization": "Bearer prom-secret"}) as ws:
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    await ws.recv()
            assert ws.close_code == 4403  # a monitor token opens no calendar
    opened = [r for r in caplog.records if r.getMessage() == "connection opened"]
    assert any(getattr(r, "token", None) == "desk-1" for r in opened)
    everything = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "desk-secret" not in everything and "prom-secret" not in everything


async def test_reload_closes_revoked_and_narrowed_tokens_and_keeps_the_rest_streaming(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "t.txt", "keep-secret terminal clinic-* name=keep",
                          "drop-secret terminal clinic-* name=drop", "narrow-secret terminal clinic-* name=narrow")
    async with Relay(relay_config(tmp_path, "r1", tokens_path=tokens)) as relay:
        keep, drop, narrow = (WireClient(relay.url, token=f"{name}-secret", actor=name)
                              for name in ("keep", "drop", "narrow"))
        async with keep, drop, narrow:
            for client in (keep, drop, narrow):
                await client.open(CAL)
                await client.wait_synced(CAL)
            before = await keep.book(CAL, hour=9)
            write_tokens(tokens, "keep-secret terminal clinic-* name=keep", "narrow-secret terminal clinic-2 name=narrow")
            assert await relay.reload_tokens()
            await drop.wait_for(lambda: drop.closed.is_set())
            await narrow.wait_for(lambda: narrow.closed.is_set())
            assert (drop.close_code, narrow.close_code) == (4401, 4403)
            after = await keep.book(CAL, hour=10)  # the kept connection was never interrupted
            await keep.wait_acked(CAL)
            assert not keep.closed.is_set()
            held = (await relay.calendar(CAL)).reservations
            assert before in held and after in held
            # A file that does not parse changes nothing.
            tokens.write_text("keep-secret nonsense-role *\n")
            assert not await relay.reload_tokens()
            assert not keep.closed.is_set()


@pytest.mark.slow
async def test_sighup_reloads_the_token_file_of_a_running_relay(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "t.txt", "a-secret terminal * name=a", "b-secret terminal * name=b")
    relay = RelayProcess(tmp_path, "r1", "--tokens", str(tokens))
    await relay.start()
    try:
        async with WireClient(relay.url, token="a-secret") as a, WireClient(relay.url, token="b-secret") as b:
            for client in (a, b):
                await client.open(CAL)
                await client.wait_synced(CAL)
            write_tokens(tokens, "b-secret terminal * name=b")
            os.kill(relay.pid, signal.SIGHUP)
            await a.wait_for(lambda: a.closed.is_set())
            assert a.close_code == 4401
            await b.book(CAL)
            await b.wait_acked(CAL)
    finally:
        await relay.kill(signal.SIGTERM)


async def test_read_only_viewers_announce_no_presence_and_presence_is_bounded(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "t.txt", "desk-secret terminal *", "wall-secret read-only *")
    async with Relay(relay_config(tmp_path, "r1", tokens_path=tokens)) as relay:
        desk_url, auth = f"{relay.url}/{CAL}", "Authorization"
        async with connect(desk_url, additional_headers={auth: "Bearer desk-secret"}) as watcher, \
                connect(desk_url, additional_headers={auth: "Bearer wall-secret"}) as wall, \
                connect(desk_url, additional_headers={auth: "Bearer desk-secret"}) as desk:
            await wall.send(encode(Awareness(encode_awareness([AwarenessEntry(1, 1, '{"user":"wall"}')]))))
            await relay.wait_for(lambda: relay.metrics.updates_dropped["read_only_presence"] == 1)
            here = AwarenessEntry(2, 1, '{"user":"desk"}')
            await desk.send(encode(Awareness(encode_awareness([here]))))
            assert await next_awareness(watcher) == [here]  # the desk's, not the wall's
            flood = [AwarenessEntry(100 + i, 1, "{}") for i in range(MAX_PRESENCE_CLIENTS + 1)]
            await desk.send(encode(Awareness(encode_awareness(flood))))
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:
                        await desk.recv()
            assert desk.close_code == 1008


async def test_an_outbound_peer_link_shares_only_the_calendars_it_names(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "partner")) as partner:
        async with Relay(relay_config(tmp_path, "clinic", peers=[f"{partner.url} clinic-1"])) as clinic:
            await clinic.edit("clinic-1", lambda c: c.put_resource("room-1", capacity=1))
            await clinic.edit("clinic-2", lambda c: c.put_resource("room-9", capacity=1))
            await partner.wait_for(lambda: "clinic-1" in partner.calendars.loaded
                                   and partner.calendars.loaded["clinic-1"].replica.calendar.resource("room-1"))
            await clinic.pipeline.drain()
            assert "clinic-2" not in await partner.calendars.known()
