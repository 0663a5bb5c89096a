"""Stock Yjs clients (yjs + y-websocket's WebsocketProvider under node) against real relays.

The node side is ``interop/yclient.mjs``; its packages come from ``$ACCORD_NODE_MODULES``
(``make test`` installs them from ``interop/package-lock.json`` into ``.cache/node``).
Without node or those packages the tests are skipped, unless ``CI_REQUIRE_NODE=1``, which
turns the skip into a failure so CI cannot pass without running them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from wire import WireClient

from accord.relay.server import Relay, RelayConfig

pytestmark = pytest.mark.node

YCLIENT = Path(__file__).resolve().parent.parent / "interop" / "yclient.mjs"
CALENDAR = "clinic-1"
DESK_TOKEN = "desk-secret"
PEER_TOKEN = "peer-secret"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NODE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class NodeEnv:
    node: str
    modules: Path


def _missing_node() -> str | None:
    """Why the node interop tests cannot run here, or None if they can."""
    modules = os.environ.get("ACCORD_NODE_MODULES")
    if not modules:
        return "ACCORD_NODE_MODULES is unset: run `make test` (it installs interop/package-lock.json into .cache/node)"
    if not (Path(modules) / "yjs" / "package.json").is_file() or not (Path(modules) / "y-websocket").is_dir():
        return f"ACCORD_NODE_MODULES={modules} has no yjs/y-websocket: run `make node`"
    if shutil.which("node") is None:
        return "node is not on PATH: install Node 20+"
    return None


@pytest.fixture
def node_env() -> NodeEnv:
    reason = _missing_node()
    if reason is not None:
        if os.environ.get("CI_REQUIRE_NODE") == "1":
            pytest.fail(f"CI_REQUIRE_NODE=1 but {reason}")
        pytest.skip(reason)
    node = shutil.which("node")
    assert node is not None
    return NodeEnv(node, Path(os.environ["ACCORD_NODE_MODULES"]))


@dataclass(frozen=True)
class NodeRun:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def first(self, event: str) -> dict[str, Any]:
        found = [e for e in self.events if e.get("event") == event]
        assert found, f"no {event!r} event from yclient.mjs: {self.events} {self.stderr[-2000:]}"
        return found[0]


async def run_yclient(env: NodeEnv, *args: str) -> NodeRun:
    """Run interop/yclient.mjs to completion (the script has its own timeout; this one backs it up)."""
    proc = await asyncio.create_subprocess_exec(
        env.node, str(YCLIENT), *args, "--timeout", str(NODE_TIMEOUT_S),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ACCORD_NODE_MODULES": str(env.modules)},
    )
    try:
        async with asyncio.timeout(NODE_TIMEOUT_S + 10):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode is not None
    return NodeRun(proc.returncode, events, err.decode())


def note_of(client: WireClient, reservation_id: str) -> str | None:
    entry = client.replica(CALENDAR).calendar.reservations.get(reservation_id)
    return None if entry is None else entry.get("note")


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text(f"{DESK_TOKEN} terminal clinic-*\n{PEER_TOKEN} peer *\n")
    return path


def relay_config(tmp_path: Path, tokens: Path, relay_id: str, **kw: Any) -> RelayConfig:
    return RelayConfig(relay_id=relay_id, host="127.0.0.1", port=0, db_path=tmp_path / f"{relay_id}.sqlite",
                       tokens_path=tokens, peer_token=PEER_TOKEN, backoff_initial_s=0.05, backoff_max_s=0.5, **kw)


async def test_stock_yjs_client_edit_reaches_the_peered_relay(node_env: NodeEnv, tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, tokens, "r1")) as r1, \
            Relay(relay_config(tmp_path, tokens, "r2", peers=[r1.url])) as r2, \
            WireClient(r1.url, token=DESK_TOKEN, actor="desk-1") as desk, \
            WireClient(r2.url, token=DESK_TOKEN, actor="desk-2") as far:
        await far.open(CALENDAR)
        mine = await desk.open(CALENDAR)
        booked = mine.calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                                    patient="P-0042", note="first visit", now=NOW)
        await desk.push(CALENDAR)
        await desk.wait_acked(CALENDAR)

        run = await run_yclient(node_env, "edit", "--url", r1.url, "--calendar", CALENDAR, "--token", DESK_TOKEN,
                                "--reservation", booked.id, "--note", "edited in a stock Yjs client")

        assert run.code == 0, f"yclient.mjs failed: {run.events} {run.stderr[-2000:]}"
        seen = run.first("seen")["fields"]
        assert (seen["patient"], seen["start"], seen["note"]) == ("P-0042", "2026-12-01T09:00:00Z", "first visit")
        run.first("flushed")
        await far.wait_for(lambda: note_of(far, booked.id) == "edited in a stock Yjs client")
        await desk.wait_for(lambda: note_of(desk, booked.id) == "edited in a stock Yjs client")
        edited = far.replica(CALENDAR).calendar.get(booked.id)
        assert (edited.patient, edited.resource, edited.updated_by) == ("P-0042", "room-1", "yjs-client")


async def test_stock_yjs_client_without_token_is_refused(node_env: NodeEnv, tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, tokens, "r1")) as r1:
        run = await run_yclient(node_env, "edit", "--url", r1.url, "--calendar", CALENDAR,
                                "--reservation", "nope", "--note", "x")

    assert run.code == 1
    assert run.first("error")["close_code"] == 4401


async def test_awareness_is_relayed_between_stock_yjs_clients(node_env: NodeEnv, tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, tokens, "r1")) as r1:
        common = ("--url", r1.url, "--calendar", CALENDAR, "--token", DESK_TOKEN)
        alice, bob = await asyncio.gather(
            run_yclient(node_env, "awareness", *common, "--name", "alice", "--expect", "bob"),
            run_yclient(node_env, "awareness", *common, "--name", "bob", "--expect", "alice"),
        )

    assert (alice.code, bob.code) == (0, 0), f"{alice.events} {alice.stderr[-1000:]} {bob.events} {bob.stderr[-1000:]}"
    assert alice.first("awareness")["saw"] == "bob"
    assert bob.first("awareness")["saw"] == "alice"


@pytest.mark.parametrize("how", ["uncancel", "delete", "replace", "capacity"])
async def test_a_stock_yjs_client_cannot_undo_a_cancel_delete_replace_or_change_capacity(
        node_env: NodeEnv, tmp_path: Path, tokens: Path, how: str) -> None:
    """The board in a browser has exactly this power: an ordinary write token and the plain Yjs API."""
    async with Relay(relay_config(tmp_path, tokens, "r1", home_globs=["clinic-*"])) as r1, \
            Relay(relay_config(tmp_path, tokens, "r2", peers=[r1.url])) as r2, \
            WireClient(r1.url, token=DESK_TOKEN, actor="desk") as desk:
        calendar = (await desk.open(CALENDAR)).calendar
        await r1.edit(CALENDAR, lambda c: c.put_resource("front-desk"))  # a first write: the home takes it
        await desk.wait_for(lambda: calendar.home == "r1")
        first = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-1", now=NOW)
        await desk.push(CALENDAR)
        await desk.wait_for(lambda: str(calendar.get(first.id).status) == "booked")
        calendar.cancel(first.id, now=NOW)
        second = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-2", now=NOW)
        await desk.push(CALENDAR)
        await desk.wait_for(lambda: str(calendar.get(second.id).status) == "booked")

        run = await run_yclient(node_env, "attack", "--url", r2.url, "--calendar", CALENDAR, "--token", DESK_TOKEN,
                                "--reservation", first.id, "--how", how)

        assert run.code == 1, f"the relay accepted the attack: {run.events} {run.stderr[-2000:]}"
        assert run.first("error")["close_code"] == 4403
        for relay in (r1, r2):
            seen = await relay.calendar(CALENDAR)
            assert str(seen.get(first.id).status) == "cancelled"
            assert str(seen.get(second.id).status) == "booked"
            assert seen.capacity("room-1") == 1
        reason = {"uncancel": "mark_removed", "delete": "entry_deleted", "replace": "entry_overwritten",
                  "capacity": "admin_write"}[how]
        assert f'accord_updates_dropped_total{{reason="{reason}"}}' in r2.render_metrics()


async def test_a_stock_yjs_client_may_overwrite_a_mark_and_the_booking_stays_cancelled(
        node_env: NodeEnv, tmp_path: Path, tokens: Path) -> None:
    async with Relay(relay_config(tmp_path, tokens, "r1", home_globs=["clinic-*"])) as r1, \
            WireClient(r1.url, token=DESK_TOKEN, actor="desk") as desk:
        calendar = (await desk.open(CALENDAR)).calendar
        await r1.edit(CALENDAR, lambda c: c.put_resource("front-desk"))  # a first write: the home takes it
        await desk.wait_for(lambda: calendar.home == "r1")
        made = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-1", now=NOW)
        await desk.push(CALENDAR)
        calendar.cancel(made.id, now=NOW)
        await desk.push(CALENDAR)
        await desk.wait_acked(CALENDAR)
        run = await run_yclient(node_env, "attack", "--url", r1.url, "--calendar", CALENDAR, "--token", DESK_TOKEN,
                                "--reservation", made.id, "--how", "blank-mark")
        assert run.code == 0, f"{run.events} {run.stderr[-2000:]}"
        run.first("flushed")
        assert str((await r1.calendar(CALENDAR)).get(made.id).status) == "cancelled"


@pytest.mark.parametrize("how", ["bignote", "text-note"])
async def test_a_stock_yjs_client_cannot_store_a_huge_or_nested_field_and_the_calendar_stays_pullable(
        node_env: NodeEnv, tmp_path: Path, tokens: Path, how: str) -> None:
    async with Relay(relay_config(tmp_path, tokens, "r1", home_globs=["clinic-*"])) as r1, \
            WireClient(r1.url, token=DESK_TOKEN, actor="desk") as desk:
        calendar = (await desk.open(CALENDAR)).calendar
        made = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z", patient="P-1", now=NOW)
        await desk.push(CALENDAR)
        await desk.wait_acked(CALENDAR)

        run = await run_yclient(node_env, "attack", "--url", r1.url, "--calendar", CALENDAR, "--token", DESK_TOKEN,
                                "--reservation", made.id, "--how", how)

        assert run.code == 1, f"the relay accepted the attack: {run.events} {run.stderr[-2000:]}"
        assert run.first("error")["close_code"] == 4403
        assert {"bignote": "a reservation field holds at most 2000 characters",
                "text-note": "plain values"}[how] in run.first("error")["reason"]
        reason = {"bignote": "too_large", "text-note": "not_plain"}[how]
        assert f'accord_updates_dropped_total{{reason="{reason}"}}' in r1.render_metrics()
        # A new stock client still pulls the calendar, and the note is what the desk wrote.
        note = {"bignote": "fine", "text-note": "still fine"}[how]
        calendar.edit(made.id, note=note, now=NOW)
        await desk.push(CALENDAR)
        edit = await run_yclient(node_env, "edit", "--url", r1.url, "--calendar", CALENDAR, "--token", DESK_TOKEN,
                                 "--reservation", made.id, "--note", note + "!")
        assert edit.code == 0, f"{edit.events} {edit.stderr[-2000:]}"
        assert (await r1.calendar(CALENDAR)).get(made.id).note == note + "!"
