"""The FHIR R4 REST facade: routes, authorisation, search and writes.

One FHIR base per calendar: ``/fhir/<calendar>`` (a client is configured with
``http://relay:8766/fhir/clinic-1``); ``/fhir/metadata`` and ``/fhir/<calendar>/metadata``
answer the CapabilityStatement. The calendar is the path up to the first segment naming a
resource type (a calendar whose name has a segment ``Appointment``, ``Slot``, ``Schedule`` or
``metadata`` is not reachable here).

Tokens and roles are the websocket endpoints': ``Authorization: Bearer``; the calendar must
match the token's globs (403 otherwise), ``read-only`` reads, ``terminal`` and ``admin`` write,
``monitor`` opens no calendar. Writes are made with :meth:`Hub.client_edit`, i.e. judged by the
calendar's update policy and stored by the commit pipeline like a terminal's: a booking is
``pending`` until the calendar's home decides it; a client follows the decision by reading the
Appointment again (its ``meta.versionId`` and ETag change when the verdict arrives).

Every error is an OperationOutcome: 400 names the field, 401/403 the token, 404 the thing, 409
an impossible transition, 412 an ``If-Match`` that is not the current version.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from accord.engine.audit import AuditEntry
from accord.engine.calendar import Calendar
from accord.engine.errors import (
    InvalidCalendarName,
    InvalidReservation,
    InvalidTransition,
    ReservationNotFound,
    StorageError,
)
from accord.engine.model import CalendarId, Reservation, check_calendar_name
from accord.engine.session import parse_bearer
from accord.engine.slots import ComputedSlot, compute_slots, free_intervals, holds_on, open_intervals, split, zone_of

from ..auth import Grant, TokenBook
from ..calendars import CalendarSet, read_off_loop
from ..hub import EditRefused, Hub
from . import mapping
from .capability import capability_statement
from .http import HttpRequest, HttpResponse
from .params import Problem, among, instant, page_url, prefixed, time_test, whole
from .writes import Invalid, apply_changes, json_patch, merge_patch, read_booking

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json; charset=utf-8"
TYPES = ("Appointment", "Schedule", "Slot", "metadata", "AuditEvent", "Provenance")
DEFAULT_COUNT, MAX_COUNT = 50, 500
HORIZON = timedelta(days=90)
DEFAULT_SLOT_WINDOW = timedelta(days=7)
AUDIT_VIEWS: dict[str, Callable[[AuditEntry], dict[str, Any]]] = {
    "AuditEvent": mapping.audit_event_of, "Provenance": mapping.provenance_of}


@dataclass(frozen=True, slots=True)
class Route:
    calendar: CalendarId | None
    type: str
    id: str | None
    operation: str | None


def parse_route(path: str) -> Route:
    """Split ``/fhir/<calendar>/<Type>[/<id>][/$op]`` (see the module docstring)."""
    parts = [urllib.parse.unquote(p) for p in path.split("/")[2:] if p]
    where = next((i for i, p in enumerate(parts) if p in TYPES or p.startswith("$")), None)
    if where is None:
        raise Problem(404, "not-found", "name a calendar and a resource type: /fhir/<calendar>/Appointment")
    calendar = None
    if where:
        try:
            calendar = check_calendar_name("/".join(parts[:where]))
        except InvalidCalendarName as exc:
            raise Problem(404, "not-found", str(exc)) from None
    rest = parts[where + 1:]
    kind = parts[where]
    rid = rest[0] if rest and not rest[0].startswith("$") else None
    op = next((p for p in rest if p.startswith("$")), None)
    if len(rest) > 2 or (rest and rid is None and op is None):
        raise Problem(404, "not-found", f"no such path: {path}")
    if calendar is None and kind != "metadata":
        raise Problem(404, "not-found", f"name the calendar: /fhir/<calendar>/{kind}")
    return Route(calendar, kind, rid, op)


class FhirApi:
    """Answers FHIR requests for one relay.

    Args:
        tokens: the relay's token book (a callable, so a reload is seen).
        calendars: the relay's calendars.
        hub: writes go through :meth:`Hub.client_edit`.
        clock: the relay's UTC clock.
        scheme: ``http`` or ``https`` (for the URLs in Bundles and Location headers).
    """

    def __init__(self, *, tokens: Callable[[], TokenBook], calendars: CalendarSet, hub: Hub,
                 clock: Callable[[], datetime], scheme: str = "http") -> None:
        self.tokens = tokens
        self.calendars = calendars
        self.hub = hub
        self.clock = clock
        self.scheme = scheme

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """One request in, one response out (never raises for bad input)."""
        split_target = urllib.parse.urlsplit(request.target)
        try:
            route = parse_route(split_target.path)
            if route.type == "metadata":
                return _json(200, capability_statement(self.clock()))
            assert route.calendar is not None
            grant = self._authorise(request, route.calendar)
            query = urllib.parse.parse_qsl(split_target.query, keep_blank_values=True)
            base = f"{self.scheme}://{request.headers.get('host', 'localhost')}/fhir/{route.calendar}"
            return await self._dispatch(request, route, grant, query, base)
        except Problem as exc:
            response = _json(exc.status, mapping.outcome(exc.code, str(exc), expression=exc.expression))
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="accord"'
            return response
        except StorageError as exc:
            log.error("FHIR request: store unavailable", extra={"error": str(exc)})
            return _json(503, mapping.outcome("transient", "the relay's store is unavailable; retry later"))

    def _authorise(self, request: HttpRequest, calendar: CalendarId) -> Grant:
        book = self.tokens()
        token = parse_bearer(request.headers.get("authorization"))
        grant = book.check(token)
        if grant is None:
            raise Problem(401, "login", "missing or wrong token: send Authorization: Bearer TOKEN")
        if not grant.allows(calendar):
            raise Problem(403, "forbidden", f"this token may not open calendar {calendar}")
        if request.method not in ("GET", "HEAD") and not grant.can_write:
            raise Problem(403, "forbidden", "a read-only token may not write")
        return grant

    async def _dispatch(self, request: HttpRequest, route: Route, grant: Grant, query: list[tuple[str, str]],
                        base: str) -> HttpResponse:
        method, kind = request.method, route.type
        if kind in AUDIT_VIEWS:
            assert route.calendar is not None
            if method != "GET" or route.operation is not None:
                raise Problem(405, "not-supported", f"{kind} is read-only: the relay writes the audit trail itself")
            if route.id is None:
                return _json(200, await self._search_audit(kind, route.calendar, query, base))
            return _json(200, await self._read_audit(kind, route.calendar, route.id))
        assert route.calendar is not None
        name = route.calendar
        if kind == "Appointment" and route.operation == "$find" and method in ("GET", "POST"):
            params = query + _parameters(request) if method == "POST" else query
            return await self._find(name, params, base)
        if route.operation is not None:
            raise Problem(404, "not-supported", f"operation {route.operation} is not supported")
        if method == "GET" and route.id is None:
            calendar = await self._calendar(name)
            if kind == "Appointment":
                return _json(200, await self._search_appointments(name, calendar, query, base))
            if kind == "Schedule":
                return _json(200, self._search_schedules(calendar, query, base))
            return _json(200, self._search_slots(calendar, query, base))
        if method == "GET":
            assert route.id is not None
            calendar = await self._calendar(name)
            if kind == "Appointment":
                return self._read_appointment(calendar, route.id)
            if kind == "Schedule":
                return _json(200, self._schedule(calendar, route.id))
            return _json(200, self._read_slot(calendar, route.id))
        if kind != "Appointment":
            raise Problem(405, "not-supported", f"{kind} is read-only here")
        if method == "POST" and route.id is None:
            return await self._create(request, name, grant, base)
        if method in ("PUT", "PATCH") and route.id is not None:
            return await self._update(request, name, grant, route.id, patch=method == "PATCH")
        raise Problem(405, "not-supported", f"{method} is not supported on this path")

    async def _calendar(self, name: CalendarId) -> Calendar:
        """The calendar, or 404 for a name this relay holds nothing for (reading creates nothing)."""
        if name not in self.calendars.loaded and not await self.calendars.storage.state_vectors([name]):
            raise Problem(404, "not-found", f"this relay holds no calendar {name}")
        calendar = (await self.calendars.get(name)).replica.calendar
        await read_off_loop(calendar)
        return calendar

    # ---- reads ----------------------------------------------------------------------------

    @staticmethod
    def _appointment(calendar: Calendar, reservation: Reservation,
                     fields: dict[str, Any] | None = None) -> dict[str, Any]:
        return mapping.appointment_of(calendar, reservation, fields)

    def _read_appointment(self, calendar: Calendar, rid: str) -> HttpResponse:
        try:
            reservation = calendar.get(rid)
        except (ReservationNotFound, KeyError, InvalidReservation):
            raise Problem(404, "not-found", f"no Appointment/{rid} in this calendar") from None
        body = self._appointment(calendar, reservation)
        response = _json(200, body)
        response.headers["ETag"] = f'W/"{body["meta"]["versionId"]}"'
        return response

    async def _search_appointments(self, name: CalendarId, calendar: Calendar, query: list[tuple[str, str]],
                                   base: str) -> dict[str, Any]:
        count, offset, provenance = DEFAULT_COUNT, 0, False
        tests: list[Callable[[Reservation], bool]] = []
        for key, value in query:
            if key == "date":
                tests.append(time_test(value, "date", lambda r: (r.slot.start, r.slot.end)))
            elif key == "_lastUpdated":
                tests.append(time_test(value, "_lastUpdated", lambda r: (r.updated_at, r.updated_at)))
            elif key == "status":
                wanted = set(value.split(","))
                unknown = wanted - set(mapping.FHIR_STATUS.values()) - {"proposed", "arrived", "waitlist"}
                if unknown:
                    raise Problem(400, "invalid", f"status: unknown code {sorted(unknown)[0]!r}", "status")
                tests.append(among(wanted, lambda r: mapping.FHIR_STATUS[r.status]))
            elif key in ("actor", "location", "practitioner"):
                ids = {v.rsplit("/", 1)[-1] for v in value.split(",")}
                tests.append(among(ids, lambda r: r.slot.resource, lambda r: r.resource))
            elif key == "patient":
                ids = {v.removeprefix("Patient/") for v in value.split(",")}
                tests.append(among(ids, lambda r: r.patient))
            elif key == "_id":
                ids = set(value.split(","))
                tests.append(among(ids, lambda r: r.id))
            elif key == "_count":
                count = whole(value, "_count", 0, MAX_COUNT)
            elif key == "_offset":
                offset = whole(value, "_offset", 0, 10**9)
            elif key == "_revinclude":
                if value not in ("Provenance:target", "Provenance:target:Appointment"):
                    raise Problem(400, "not-supported", f"_revinclude: only Provenance:target, not {value!r}",
                                  "_revinclude")
                provenance = True
            elif key in ("_format", "_total", "_totalMethod", "_sort"):
                continue  # JSON only; totals are always counted; results are sorted by start
            else:
                raise Problem(400, "not-supported", f"unknown search parameter {key!r}", key)
        found = [r for r in calendar.list() if all(test(r) for test in tests)]
        page = found[offset:offset + count]
        others = [(k, v) for k, v in query if k not in ("_count", "_offset")]
        links = {"self": page_url(base, "Appointment", others, count, offset)}
        if offset + count < len(found) and count:
            links["next"] = page_url(base, "Appointment", others, count, offset + count)
        if offset > 0:
            links["previous"] = page_url(base, "Appointment", others, count, max(0, offset - count))
        every = calendar.fields_of(r.id for r in page)
        included: list[dict[str, Any]] = []
        if provenance and page:
            shown = {r.id for r in page}
            included = [mapping.provenance_of(e) for e in await self._audit_entries(name) if e.reservation in shown]
        return mapping.bundle([self._appointment(calendar, r, every[r.id]) for r in page], base=base, total=len(found),
                              links=links, included=included)

    async def _audit_entries(self, name: CalendarId, reservation: str | None = None) -> list[AuditEntry]:
        """The calendar's stored audit entries (none on a relay without ``--audit``)."""
        audit = self.hub.audit
        return await audit.read(name, reservation) if audit is not None else []

    async def _read_audit(self, kind: str, name: CalendarId, eid: str) -> dict[str, Any]:
        """One AuditEvent or Provenance by id (ids are digests of the entries' keys)."""
        for entry in await self._audit_entries(name):
            if mapping.event_id(entry) == eid:
                return AUDIT_VIEWS[kind](entry)
        raise Problem(404, "not-found", f"no {kind}/{eid} in this calendar's audit trail")

    async def _search_audit(self, kind: str, name: CalendarId, query: list[tuple[str, str]],
                            base: str) -> dict[str, Any]:
        """The calendar's audit trail as AuditEvents or Provenances, optionally of one Appointment
        (``entity=`` for AuditEvent, ``target=`` for Provenance)."""
        count, offset, reservation = DEFAULT_COUNT, 0, None
        by = "entity" if kind == "AuditEvent" else "target"
        for key, value in query:
            if key == by:
                reservation = value.removeprefix("Appointment/")
            elif key == "_count":
                count = whole(value, "_count", 0, MAX_COUNT)
            elif key == "_offset":
                offset = whole(value, "_offset", 0, 10**9)
            elif key not in ("_format", "_total"):
                raise Problem(400, "not-supported", f"unknown search parameter {key!r}", key)
        entries = await self._audit_entries(name, reservation)
        page = entries[offset:offset + count]
        others = [(k, v) for k, v in query if k not in ("_count", "_offset")]
        links = {"self": page_url(base, kind, others, count, offset)}
        if offset + count < len(entries) and count:
            links["next"] = page_url(base, kind, others, count, offset + count)
        return mapping.bundle([AUDIT_VIEWS[kind](e) for e in page], base=base, total=len(entries), links=links)

    def _horizon(self) -> tuple[datetime, datetime]:
        today = self.clock().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today, today + HORIZON

    def _schedule(self, calendar: Calendar, resource_id: str) -> dict[str, Any]:
        resource = calendar.resource(resource_id)
        if resource is None:
            raise Problem(404, "not-found", f"no Schedule/{resource_id}: the calendar declares no such resource")
        return mapping.schedule_of(calendar, resource, self._horizon())

    def _search_schedules(self, calendar: Calendar, query: list[tuple[str, str]], base: str) -> dict[str, Any]:
        ids: set[str] | None = None
        for key, value in query:
            if key in ("_id", "actor"):
                ids = {v.rsplit("/", 1)[-1] for v in value.split(",")}
            elif key not in ("_format", "_count", "_total"):
                raise Problem(400, "not-supported", f"unknown search parameter {key!r}", key)
        found = [self._schedule(calendar, r.id) for r in calendar.resources() if ids is None or r.id in ids]
        return mapping.bundle(found, base=base, total=len(found), links={"self": f"{base}/Schedule"})

    def _slots(self, calendar: Calendar, resource_id: str, lo: datetime, hi: datetime) -> list[ComputedSlot]:
        resource = calendar.resource(resource_id)
        if resource is None:
            raise Problem(400, "invalid", f"schedule: the calendar declares no resource {resource_id!r}", "schedule")
        try:
            intervals = open_intervals(calendar.opening_hours(resource_id), zone_of(calendar.time_zone), lo, hi)
        except InvalidReservation as exc:
            raise Problem(400, "invalid", f"start: {exc}", "start") from None
        holds = holds_on(calendar.list(resource=resource_id, between=(lo, hi)), resource_id)
        return compute_slots(resource_id, intervals, holds, resource.capacity)

    def _search_slots(self, calendar: Calendar, query: list[tuple[str, str]], base: str) -> dict[str, Any]:
        schedules: list[str] = []
        lo, hi = self.clock().replace(microsecond=0), None
        statuses: set[str] | None = None
        for key, value in query:
            if key == "schedule":
                schedules += [v.rsplit("/", 1)[-1] for v in value.split(",")]
            elif key == "start":
                prefix, when = prefixed(value, "start")
                if prefix in ("ge", "gt", "eq", "sa"):
                    lo = when
                elif prefix in ("lt", "le", "eb"):
                    hi = when
                else:
                    raise Problem(400, "invalid", f"start: use ge/lt prefixes, not {prefix}", "start")
            elif key == "status":
                statuses = set(value.split(","))
                if statuses - set(mapping.SLOT_STATUSES):
                    raise Problem(400, "invalid", f"status: use {', '.join(mapping.SLOT_STATUSES)}", "status")
            elif key not in ("_format", "_count", "_total"):
                raise Problem(400, "not-supported", f"unknown search parameter {key!r}", key)
        hi = hi or lo + DEFAULT_SLOT_WINDOW
        if hi <= lo:
            raise Problem(400, "invalid", "start: the upper bound is not after the lower one", "start")
        found: list[dict[str, Any]] = []
        for resource_id in schedules or [r.id for r in calendar.resources()]:
            found += [mapping.slot(s) for s in self._slots(calendar, resource_id, lo, hi)
                      if statuses is None or str(s.status) in statuses]
        return mapping.bundle(found, base=base, total=len(found), links={"self": f"{base}/Slot"})

    def _read_slot(self, calendar: Calendar, sid: str) -> dict[str, Any]:
        try:
            resource, stamp, seconds = sid.rsplit(".", 2)
            start = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            end = start + timedelta(seconds=int(seconds))
        except ValueError:
            raise Problem(404, "not-found", f"no Slot/{sid}") from None
        for item in self._slots(calendar, resource, start, end):
            if item.start == start and item.end == end:
                return mapping.slot(item)
        raise Problem(404, "not-found", f"Slot/{sid} is not a slot any more (bookings or hours changed); search again")

    async def _find(self, name: CalendarId, params: list[tuple[str, str]], base: str) -> HttpResponse:
        """``$find``: free appointments of ``duration`` minutes on a resource in ``[start, end)``."""
        calendar = await self._calendar(name)
        given = dict(params)
        for needed in ("start", "end"):
            if needed not in given:
                raise Problem(400, "required", f"{needed}: $find needs start and end", needed)
        resource = (given.get("resource") or given.get("actor") or given.get("schedule") or "").rsplit("/", 1)[-1]
        if not resource:
            raise Problem(400, "required", "resource: name the resource (resource=Location/room-1)", "resource")
        lo, hi = instant(given["start"], "start"), instant(given["end"], "end")
        minutes = whole(given.get("duration", "30"), "duration", 1, 24 * 60)
        free = free_intervals(self._slots(calendar, resource, lo, hi))
        proposals = [{"resourceType": "Appointment", "status": "proposed", "start": mapping.fhir_time(s.start),
                      "end": mapping.fhir_time(s.end), "minutesDuration": minutes,
                      "participant": [{"actor": {"reference": f"Location/{resource}"}, "status": "needs-action"}]}
                     for s in split(free, timedelta(minutes=minutes))][:MAX_COUNT]
        return _json(200, mapping.bundle(proposals, base=base, total=len(proposals), links={}))

    # ---- writes ---------------------------------------------------------------------------

    async def _create(self, request: HttpRequest, name: CalendarId, grant: Grant, base: str) -> HttpResponse:
        body = _body(request)
        booking = self._invalid(lambda: read_booking(body))
        now = self.clock()

        def book(cal: Calendar) -> str:
            if cal.resource(booking.resource) is None:
                raise Invalid("participant", f"participant: the calendar declares no resource {booking.resource!r}")
            made = cal.book(resource=booking.resource, start=booking.start, end=booking.end, patient=booking.patient,
                            now=now, service=booking.service, note=booking.note)
            if booking.actor_type != "Location":
                cal.reservations[made.id][mapping.ACTOR_TYPE_FIELD] = booking.actor_type  # type: ignore[index]
            return made.id

        rid = await self._edit(grant, name, book)
        calendar = (await self.calendars.get(name)).replica.calendar
        created = self._appointment(calendar, calendar.get(rid))
        log.info("FHIR booking stored", extra={"calendar": name, "reservation": rid, "token": grant.name})
        response = _json(201, created)
        response.headers["Location"] = f"{base}/Appointment/{rid}/_history/{created['meta']['versionId']}"
        response.headers["ETag"] = f'W/"{created["meta"]["versionId"]}"'
        return response

    async def _update(self, request: HttpRequest, name: CalendarId, grant: Grant, rid: str, *,
                      patch: bool) -> HttpResponse:
        calendar = await self._calendar(name)
        current = self._read_appointment(calendar, rid)
        now_body: dict[str, Any] = json.loads(current.body)
        version = now_body["meta"]["versionId"]
        wanted = request.headers.get("if-match")
        if wanted is not None and wanted.removeprefix("W/").strip('"') != version:
            raise Problem(412, "conflict", f"If-Match {wanted} is not the current version W/\"{version}\"; "
                                           "read the Appointment again and retry")
        body = _body(request)
        if patch:
            kind = request.headers.get("content-type", "")
            target = self._invalid(lambda: json_patch(now_body, body) if "json-patch" in kind
                                   else merge_patch(now_body, body))
        else:
            target = body
        if not isinstance(target, dict) or target.get("resourceType") != "Appointment":
            raise Problem(400, "invalid", "resourceType: the body must be an Appointment", "resourceType")
        if target.get("id", rid) != rid:
            raise Problem(400, "invalid", f"id: the body's id {target.get('id')!r} is not {rid!r}", "id")
        now = self.clock()
        await self._edit(grant, name, lambda cal: apply_changes(cal, rid, now_body, target, now))
        calendar = (await self.calendars.get(name)).replica.calendar
        log.info("FHIR update stored", extra={"calendar": name, "reservation": rid, "token": grant.name})
        return self._read_appointment(calendar, rid)

    @staticmethod
    def _invalid(run: Callable[[], Any]) -> Any:
        try:
            return run()
        except Invalid as exc:
            raise Problem(400, "invalid", str(exc), exc.field) from None
        except InvalidTransition as exc:
            raise Problem(409, "business-rule", str(exc)) from None
        except InvalidReservation as exc:
            raise Problem(400, "invalid", str(exc)) from None

    async def _edit(self, grant: Grant, name: CalendarId, operation: Callable[[Calendar], Any]) -> Any:
        try:
            return await self.hub.client_edit(grant, name, lambda cal: self._invalid(lambda: operation(cal)),
                                              actor=f"fhir:{grant.name}"[:64])
        except EditRefused as exc:
            raise Problem(403, "forbidden", str(exc)) from None
        except ReservationNotFound as exc:
            raise Problem(404, "not-found", str(exc)) from None
        except TimeoutError:
            raise Problem(503, "transient", "the write was not stored within 10 s; read it again") from None


# ---- small readers ------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": FHIR_JSON})


def _body(request: HttpRequest) -> Any:
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "structure", "the body is not valid JSON") from None


def _parameters(request: HttpRequest) -> list[tuple[str, str]]:
    """The name/value pairs of a ``Parameters`` body (POST ``$find``)."""
    body = _body(request) if request.body else {"resourceType": "Parameters", "parameter": []}
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise Problem(400, "invalid", "resourceType: POST $find takes a Parameters resource", "resourceType")
    out = []
    for item in body.get("parameter", []):
        value = next((v for k, v in item.items() if k.startswith("value")), None)
        if isinstance(item, dict) and isinstance(item.get("name"), str) and value is not None:
            out.append((item["name"], str(value.get("reference", "")) if isinstance(value, dict) else str(value)))
    return out


__all__ = ["FhirApi", "Problem", "parse_route"]
