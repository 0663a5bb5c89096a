"""The FHIR R4 facade against real relays: fhirpy's async client (written elsewhere) searches,
reads, creates, cancels and pages; every answer validates against the R4B models of
``fhir.resources``; a booking made through FHIR on one relay reaches a terminal on another and
the home's decision comes back; errors are OperationOutcomes and store nothing."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhirpy import AsyncFHIRClient
from relays import Relay, relay_config

from accord.cli import main as accord_main
from accord.engine.calendar import Calendar
from accord.engine.model import Status
from accord.terminal.client import Terminal
from accord.terminal.link import Backoff

CAL = "clinic-1"
DAY = "2026-12-01"
TOKENS = {"desk-secret": "terminal", "admin-secret": "admin", "viewer-secret": "read-only",
          "other-secret": "terminal other-*", "peer-secret": "peer"}


def write_tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    lines = [f"{token} {spec if ' ' in spec else spec + ' *'} name={token.split('-')[0]}" for token, spec in TOKENS.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def validated(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` after checking it against the FHIR R4B model of its resourceType (raises if invalid)."""
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    for entry in body.get("entry", []):
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    return body


def call(url: str, method: str = "GET", body: object = None, token: str | None = "desk-secret",
         raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One blocking HTTP request (run it in a thread): status, JSON body, headers."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = {"Content-Type": "application/fhir+json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


async def http(*args: Any, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await asyncio.to_thread(call, *args, **kw)


def appointment(start: str, minutes: int = 30, resource: str = "room-1", patient: str = "P-0042") -> dict[str, Any]:
    from accord.engine.model import format_time, parse_time
    begin = parse_time(start)
    return {"resourceType": "Appointment", "status": "proposed", "start": format_time(begin),
            "end": format_time(begin + timedelta(minutes=minutes)), "comment": "first visit",
            "participant": [{"actor": {"reference": f"Location/{resource}"}, "status": "needs-action"},
                            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}]}


async def seed(relay: Relay, capacity: int = 1) -> None:
    await relay.edit(CAL, lambda c: (c.put_resource("room-1", name="Room 1", capacity=capacity),
                                     c.put_resource("room-2", name="Room 2")))


async def test_fhirpy_creates_reads_searches_pages_and_cancels(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0,
                                  tokens_path=write_tokens(tmp_path))) as relay:
        await seed(relay)
        client = AsyncFHIRClient(f"{relay.fhir_url}/{CAL}", authorization="Bearer desk-secret")
        made = []
        for hour in (9, 10, 11):
            resource = client.resource("Appointment", **appointment(f"{DAY}T{hour:02d}:00:00Z"))
            await resource.save()
            assert resource["status"] in ("pending", "booked")  # this relay is the home: it may have decided already
            made.append(resource.id)
        calendar = await relay.calendar(CAL)
        await relay.wait_for(lambda: all(calendar.get(rid).status is Status.BOOKED for rid in made))

        fetched = await client.reference("Appointment", made[0]).to_resource()
        assert fetched["status"] == "booked" and fetched["start"] == f"{DAY}T09:00:00Z"
        validated(fetched.serialize())

        paged = client.resources("Appointment").search(date=f"ge{DAY}", patient="Patient/P-0042").limit(2)
        assert [r.id for r in await paged.fetch_all()] == made  # page 1 (2 of 3) and, by its next link, page 2
        raw = await client.resources("Appointment").search(date=f"ge{DAY}").limit(2).fetch_raw()
        assert raw["total"] == 3 and [link["relation"] for link in raw["link"]] == ["self", "next"]
        assert await client.resources("Appointment").search(date=f"lt{DAY}").fetch_all() == []
        assert len(await client.resources("Appointment").search(actor="Location/room-1", status="booked").fetch_all()) == 3

        await fetched.patch(status="cancelled", cancelationReason={"text": "patient called"})
        await relay.wait_for(lambda: calendar.get(made[0]).status is Status.CANCELLED)
        again = await client.reference("Appointment", made[0]).to_resource()
        assert again["status"] == "cancelled" and again["cancelationReason"]["text"] == "patient called"
        assert calendar.get(made[0]).reason == "patient called"

        status, bundle, _ = await http(f"{relay.fhir_url}/{CAL}/Appointment?_count=1&status=booked")
        assert status == 200 and validated(bundle)["total"] == 2
        status, schedules, _ = await http(f"{relay.fhir_url}/{CAL}/Schedule")
        assert [e["resource"]["id"] for e in validated(schedules)["entry"]] == ["room-1", "room-2"]
        status, capability, _ = await http(f"{relay.fhir_url}/metadata", token=None)
        assert status == 200 and validated(capability)["fhirVersion"] == "4.0.1"
        # Reads are answered on the websocket port too (GET only: websockets reads no bodies).
        status, read, _ = await http(f"http://127.0.0.1:{relay.port}/fhir/{CAL}/Appointment/{made[1]}")
        assert status == 200 and validated(read)["status"] == "booked"


async def test_a_fhir_booking_reaches_a_terminal_on_a_peer_and_the_decision_comes_back(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home, \
            Relay(relay_config(tmp_path, "edge", peers=[home.url], fhir_port=0)) as edge:
        await seed(home)
        async with Terminal(relay=home.url, store=tmp_path / "desk.sqlite", name="desk",
                            backoff=Backoff(initial_s=0.05, max_s=0.5)) as desk:
            await desk.open(CAL)
            await desk.synced(timeout=10)
            edge_calendar = await edge.calendar(CAL)
            await edge.wait_for(lambda: edge_calendar.resource("room-1") is not None)
            base = f"{edge.fhir_url}/{CAL}"
            status, first, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z"))
            assert status == 201 and validated(first)["status"] == "pending"
            status, second, _ = await http(f"{base}/Appointment", "POST",
                                           appointment(f"{DAY}T09:15:00Z", patient="P-0043"))
            assert status == 201
            # The booking reaches the desk on the other relay; the home's decision comes back to the edge.
            await desk.wait_for(lambda: desk.peek(CAL, first["id"]) is not None
                                and desk.peek(CAL, first["id"]).status is Status.BOOKED, timeout=10)  # type: ignore[union-attr]
            await edge.wait_for(lambda: edge_calendar.get(second["id"]).status is Status.REJECTED, timeout_s=10)
            status, booked, _ = await http(f"{base}/Appointment/{first['id']}")
            assert validated(booked)["status"] == "booked"
            status, rejected, _ = await http(f"{base}/Appointment/{second['id']}")
            assert validated(rejected)["status"] == "cancelled"
            assert rejected["meta"]["tag"][0]["code"] == "rejected"
            assert first["id"] in rejected["cancelationReason"]["text"]
            assert rejected["meta"]["versionId"] != second["meta"]["versionId"]


async def test_errors_are_operation_outcomes_and_store_nothing(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0,
                                  tokens_path=write_tokens(tmp_path))) as relay:
        await seed(relay)
        base = f"{relay.fhir_url}/{CAL}"
        status, made, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z"))
        assert status == 201
        calendar = await relay.calendar(CAL)
        await relay.wait_for(lambda: calendar.get(made["id"]).status is Status.BOOKED)
        stored = await relay.calendars.storage.log_length(CAL)
        before = calendar.to_py()
        missing_start = appointment(f"{DAY}T10:00:00Z")
        del missing_start["start"]
        cases: list[tuple[str, dict[str, Any], int, str | None]] = [
            ("POST", {"raw": b"{not json"}, 400, None),
            ("POST", {"body": {**appointment(f"{DAY}T10:00:00Z"), "resourceType": "Patient"}}, 400, "resourceType"),
            ("POST", {"body": missing_start}, 400, "start"),
            ("POST", {"body": appointment(f"{DAY}T10:00:00Z", resource="room-9")}, 400, "participant"),
            ("POST", {"body": appointment(f"{DAY}T10:00:00Z"), "token": "other-secret"}, 403, None),
            ("POST", {"body": appointment(f"{DAY}T10:00:00Z"), "token": "viewer-secret"}, 403, None),
            ("POST", {"body": appointment(f"{DAY}T10:00:00Z"), "token": "wrong"}, 401, None),
            ("POST", {"body": appointment(f"{DAY}T10:00:00Z"), "token": None}, 401, None),
            ("GET", {"path": "/Appointment/nope"}, 404, None),
            ("GET", {"path": "/Appointment?colour=red"}, 400, "colour"),
            ("PUT", {"path": f"/Appointment/{made['id']}", "body": {**made, "status": "noshow"},
                     "headers": {"If-Match": 'W/"stale"'}}, 412, None),
            ("PATCH", {"path": f"/Appointment/{made['id']}", "body": {"status": "booked", "start": "x"}}, 400, "start"),
        ]
        for method, spec, expected, field in cases:
            status, body, _ = await http(base + spec.get("path", "/Appointment"), method, spec.get("body"),
                                         token=spec.get("token", "desk-secret"), raw=spec.get("raw"),
                                         headers=spec.get("headers"))
            assert status == expected, (method, spec, body)
            assert validated(body)["resourceType"] == "OperationOutcome"
            if field:
                assert body["issue"][0]["expression"] == [field], body
                assert field in body["issue"][0]["diagnostics"]
        status, body, _ = await http(f"{relay.fhir_url}/unknown-cal/Appointment")
        assert status == 404 and validated(body)["issue"][0]["code"] == "not-found"
        # A move the lifecycle forbids is a conflict (409), and a read-only token still reads.
        await http(f"{base}/Appointment/{made['id']}", "PATCH", {"status": "checked-in"})
        status, body, _ = await http(f"{base}/Appointment/{made['id']}", "PATCH", {"status": "noshow"})
        assert status == 409 and validated(body)["issue"][0]["code"] == "business-rule"
        status, read, _ = await http(f"{base}/Appointment/{made['id']}", token="viewer-secret")
        assert status == 200 and read["status"] == "checked-in"
        after = calendar.to_py()
        changed = {k for k in after["reservations"][made["id"]] if after["reservations"][made["id"]][k] !=
                   before["reservations"][made["id"]].get(k)}
        assert changed - {"updated_at", "updated_by"} == {"checked_in_at"}  # only the one allowed write
        assert set(after["reservations"]) == set(before["reservations"])
        rows, _top = await relay.calendars.storage.log_length(CAL)
        assert rows == stored[0] + 1


async def test_if_match_with_the_current_version_updates_and_a_reschedule_waits_for_the_home(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0)) as relay:
        await seed(relay)
        base = f"{relay.fhir_url}/{CAL}"
        status, made, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z"))
        calendar = await relay.calendar(CAL)
        await relay.wait_for(lambda: calendar.get(made["id"]).status is Status.BOOKED)
        status, current, headers = await http(f"{base}/Appointment/{made['id']}")
        moved = {**current, "start": f"{DAY}T14:00:00Z", "end": f"{DAY}T14:30:00Z"}
        status, answer, _ = await http(f"{base}/Appointment/{made['id']}", "PUT", moved,
                                       headers={"If-Match": headers["ETag"]})
        assert status == 200, answer
        await relay.wait_for(lambda: calendar.get(made["id"]).booked is not None
                             and calendar.get(made["id"]).slot.start.hour == 14)
        status, done, _ = await http(f"{base}/Appointment/{made['id']}")
        assert validated(done)["start"] == f"{DAY}T14:00:00Z" and "requestedPeriod" not in done
        status, body, _ = await http(f"{base}/Appointment/{made['id']}", "PUT", moved,
                                     headers={"If-Match": headers["ETag"]})  # the old version now
        assert status == 412 and validated(body)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("patch_type", ["application/json-patch+json"])
async def test_json_patch_cancels(tmp_path: Path, patch_type: str) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0)) as relay:
        await seed(relay)
        base = f"{relay.fhir_url}/{CAL}"
        _, made, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z"))
        operations = [{"op": "replace", "path": "/status", "value": "cancelled"},
                      {"op": "add", "path": "/cancelationReason", "value": {"text": "duplicate"}}]
        status, body, _ = await http(f"{base}/Appointment/{made['id']}", "PATCH", operations,
                                     headers={"Content-Type": patch_type})
        assert status == 200 and validated(body)["status"] == "cancelled"
        assert (await relay.calendar(CAL)).get(made["id"]).reason == "duplicate"


async def test_with_tls_the_fhir_port_serves_https_only(tmp_path: Path) -> None:
    from test_tls import make_pki

    pki = make_pki(tmp_path / "pki", "fhir")
    config = relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0, tls_cert_path=pki.cert_file,
                          tls_key_path=pki.key_file)
    async with Relay(config) as relay:
        await seed(relay)
        assert relay.fhir_url.startswith("https://")
        context = pki.client_context()

        def post() -> tuple[int, dict[str, Any]]:
            request = urllib.request.Request(f"{relay.fhir_url}/{CAL}/Appointment", method="POST",
                                             data=json.dumps(appointment(f"{DAY}T09:00:00Z")).encode(),
                                             headers={"Content-Type": "application/fhir+json"})
            with urllib.request.urlopen(request, timeout=10, context=context) as response:
                return response.status, json.loads(response.read())

        status, made = await asyncio.to_thread(post)
        assert status == 201 and validated(made)["resourceType"] == "Appointment"
        assert made["id"] in (await relay.calendar(CAL)).all_fields()
        plain = relay.fhir_url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            await asyncio.to_thread(call, f"{plain}/metadata", token=None)


async def test_the_fhir_port_bounds_bodies_headers_and_slow_clients(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "home", fhir_port=0, handshake_timeout_s=0.5)
    async with Relay(config) as relay:
        port = int(relay.fhir_url.rsplit(":", 1)[1].split("/")[0])

        async def exchange(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()  # the server answers and closes (or just closes)
            writer.close()
            return answer

        too_big = b"POST /fhir/clinic-1/Appointment HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"
        assert (await exchange(too_big)).startswith(b"HTTP/1.1 413")
        chunked = b"POST /fhir/clinic-1/Appointment HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert (await exchange(chunked)).startswith(b"HTTP/1.1 411")
        huge_header = b"GET /fhir/metadata HTTP/1.1\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n"
        assert (await exchange(huge_header)).startswith(b"HTTP/1.1 431")
        assert await exchange(b"GET /fhir/metadata HTTP/1.1\r\n") == b""  # never finished: closed at the deadline
        answer = await exchange(b"GET /fhir/metadata HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"CapabilityStatement" in answer


async def test_fhir_writes_are_judged_like_a_terminals_updates(tmp_path: Path) -> None:
    """The relay's quota (part of the update admission) refuses a FHIR booking as it would a desk's."""
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0, max_reservations=1)) as relay:
        await seed(relay)
        base = f"{relay.fhir_url}/{CAL}"
        status, made, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z"))
        assert status == 201
        handle = await relay.calendars.get(CAL)  # the home's verdict is stored too before the log is measured
        await relay.wait_for(lambda: handle.replica.calendar.get(made["id"]).status is Status.BOOKED
                             and relay.calendars.is_committed(CAL, handle.replica.state_vector()))
        rows = await relay.calendars.storage.log_length(CAL)
        status, body, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T10:00:00Z"))
        assert status == 403 and "calendar is full" in validated(body)["issue"][0]["diagnostics"]
        assert len((await relay.calendar(CAL)).all_fields()) == 1
        assert await relay.calendars.storage.log_length(CAL) == rows
        assert 'accord_updates_dropped_total{reason="calendar_full"} 1' in relay.render_metrics()

        # The facade keeps its copy of the calendar between writes: a refused write leaves nothing
        # in it, and what the calendar gains meanwhile from elsewhere is there for the next write.
        def desk(c: Calendar) -> str:  # the relay's own write (an operator's): no quota applies to it
            return c.book(resource="room-1", start=f"{DAY}T11:00:00Z", end=f"{DAY}T11:30:00Z", patient="P-9",
                          note="from the desk", now=datetime.now(UTC)).id

        status, _, _ = await http(f"{base}/Appointment/{made['id']}", "PATCH", {"comment": "kept copy"})
        assert status == 200  # the facade's copy is kept after this write
        other = await relay.edit(CAL, desk)
        await relay.wait_for(lambda: handle.replica.calendar.get(other).status is Status.BOOKED)  # its ETag is final
        status, current, headers = await http(f"{base}/Appointment/{other}")
        assert current["comment"] == "from the desk"
        status, patched, _ = await http(f"{base}/Appointment/{other}", "PATCH", {"status": "cancelled"},
                                        headers={"If-Match": headers["ETag"]})
        assert status == 200 and (patched["status"], patched["comment"]) == ("cancelled", "from the desk"), patched
        stored = (await relay.calendar(CAL)).get(other)
        assert (stored.status, stored.note) == (Status.CANCELLED, "from the desk")
        assert len((await relay.calendar(CAL)).all_fields()) == 2


async def test_fhir_writes_are_audited_and_the_trail_reads_as_audit_events(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "home", home_globs=["clinic-*"], fhir_port=0, audit=True,
                          tokens_path=write_tokens(tmp_path))
    async with Relay(config) as relay:
        await seed(relay)
        base = f"{relay.fhir_url}/{CAL}"
        status, made, _ = await http(f"{base}/Appointment", "POST", appointment(f"{DAY}T09:00:00Z", patient="P-7781"))
        assert status == 201, made
        calendar = await relay.calendar(CAL)
        await relay.wait_for(lambda: calendar.get(made["id"]).status is Status.BOOKED)
        status, _, _ = await http(f"{base}/Appointment/{made['id']}", "PATCH",
                                  {"status": "cancelled", "cancelationReason": {"text": "patient called"}})
        assert status == 200
        status, trail, _ = await http(f"{base}/AuditEvent?entity=Appointment/{made['id']}", token="viewer-secret")
        assert status == 200
        validated(trail)
        events = [entry["resource"] for entry in trail["entry"]]
        assert [e["action"] for e in events] == ["C", "U"]
        assert {e["agent"][0]["who"]["display"] for e in events} == {"desk (terminal)"}
        assert events[1]["entity"][0]["detail"][1]["valueString"].endswith("-> cancelled")
        assert "P-7781" not in json.dumps(trail) and "patient called" not in json.dumps(trail)  # names, never values

        # The same entries as Provenance of the Appointment: searched, read one by one, revincluded.
        status, history, _ = await http(f"{base}/Provenance?target=Appointment/{made['id']}", token="viewer-secret")
        assert status == 200 and validated(history)["total"] == 2
        provenances = [entry["resource"] for entry in history["entry"]]
        assert [p["activity"]["coding"][0]["code"] for p in provenances] == ["CREATE", "UPDATE"]
        assert {p["target"][0]["reference"] for p in provenances} == {f"Appointment/{made['id']}"}
        assert [a["who"]["display"] for a in provenances[0]["agent"]] == ["desk (terminal), fhir:desk", "home"]
        assert [p["recorded"] for p in provenances] == [e["recorded"] for e in events]
        status, one, _ = await http(f"{base}/Provenance/{provenances[1]['id']}", token="viewer-secret")
        assert status == 200 and validated(one) == provenances[1]
        status, event, _ = await http(f"{base}/AuditEvent/{events[0]['id']}", token="viewer-secret")
        assert status == 200 and validated(event) == events[0]
        status, missing, _ = await http(f"{base}/Provenance/{'0' * 40}", token="viewer-secret")
        assert status == 404 and validated(missing)["resourceType"] == "OperationOutcome"
        status, refused, _ = await http(f"{base}/Provenance", "POST", provenances[0])
        assert status == 405 and validated(refused)["issue"][0]["code"] == "not-supported"
        status, found, _ = await http(f"{base}/Appointment?_id={made['id']}&_revinclude=Provenance:target",
                                      token="viewer-secret")
        assert status == 200 and validated(found)["total"] == 1
        assert [(e["resource"]["resourceType"], e["search"]["mode"]) for e in found["entry"]] == [
            ("Appointment", "match"), ("Provenance", "include"), ("Provenance", "include")]
        status, bad, _ = await http(f"{base}/Appointment?_revinclude=AuditEvent:entity", token="viewer-secret")
        assert status == 400 and validated(bad)["issue"][0]["expression"] == ["_revinclude"]
    out = tmp_path / "export.ndjson"
    assert await asyncio.to_thread(accord_main, ["store", "export", str(config.db_path), "--fhir", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    trail_out = [r for r in exported if r["resourceType"] == "AuditEvent"]
    assert [get_fhir_model_class("AuditEvent").model_validate(r) and r["id"] for r in trail_out] == [e["id"] for e in events]
    assert {r["meta"]["source"] for r in trail_out} == {f"urn:accord:calendar:{CAL}"}
    async with Relay(relay_config(tmp_path, "plain", fhir_port=0)) as plain:  # no --audit: an empty trail
        status, empty, _ = await http(f"{plain.fhir_url}/{CAL}/AuditEvent", token=None)
        assert status == 200 and empty["total"] == 0
