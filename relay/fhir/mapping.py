"""accord's model as FHIR R4 resources (Appointment, Schedule, Slot, Bundle, OperationOutcome).

The field-by-field table is in README (section "FHIR R4 facade"); in short:

- ``Appointment.id`` is the reservation id; ``status`` maps one to one except ``rejected``, which
  is ``cancelled`` with ``cancelationReason`` naming the home's reason and the conflicting
  reservation, and the tag :data:`STATUS_TAG` ``rejected`` (R4 has no ``rejected``; ``waitlist``
  would promise that accord books it later by itself, which it never does: a rejected request
  stays rejected until someone reschedules it, which makes it ``pending`` again);
- ``start``/``end`` the slot shown (the confirmed one while a reschedule waits for the home, whose
  times are then in ``requestedPeriod``); the resource is a participant (``Location/<id>``
  unless the request named another actor type), the patient another (``Patient/<id>``);
- ``meta.versionId`` a digest of the reservation's facts and its latest verdict (every replica
  computes the same one), ``meta.lastUpdated`` the reservation's ``updated_at``.

Nothing here logs: these dicts hold patient references.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pycrdt import Map

from accord.engine.audit import AuditEntry
from accord.engine.calendar import Calendar
from accord.engine.model import Reservation, Resource, Status, format_time
from accord.engine.slots import HOURS_KEY, ComputedSlot

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
ACTOR_TYPES = ("Location", "Practitioner", "Device", "HealthcareService", "PractitionerRole")
ACTOR_TYPE_FIELD = "fhir_actor_type"  # a request key a FHIR booking writes (free for terminals)
STATUS_TAG = "urn:accord:status"
SLOT_STATUSES = ("free", "busy", "busy-tentative")

FHIR_STATUS: dict[Status, str] = {
    Status.PENDING: "pending",
    Status.BOOKED: "booked",
    Status.REJECTED: "cancelled",
    Status.CANCELLED: "cancelled",
    Status.CHECKED_IN: "checked-in",
    Status.FULFILLED: "fulfilled",
    Status.NOSHOW: "noshow",
    Status.ENTERED_IN_ERROR: "entered-in-error",
}
PARTICIPANT_STATUS: dict[Status, str] = {Status.PENDING: "needs-action", Status.REJECTED: "declined",
                                         Status.CANCELLED: "declined", Status.ENTERED_IN_ERROR: "declined"}


def fhir_time(value: datetime) -> str:
    """A FHIR ``instant``: UTC, whole seconds, ``Z``."""
    return format_time(value)


def version_of(reservation: Reservation, fields: dict[str, Any], verdict_seq: int) -> str:
    """``meta.versionId``: changes with every fact and decision; the same on every replica."""
    facts = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    text = f"{facts}|{verdict_seq}|{reservation.status}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def patient_reference(patient: str) -> dict[str, str]:
    """The patient as a Reference: ``Patient/<id>`` when it is an id, else a display text."""
    return {"reference": f"Patient/{patient}"} if FHIR_ID.fullmatch(patient) else {"display": patient}


def appointment(reservation: Reservation, fields: dict[str, Any], verdict_seq: int,
                resource_name: str | None = None) -> dict[str, Any]:
    """The FHIR Appointment of one reservation (see the module docstring)."""
    r = reservation
    slot = r.slot
    meta: dict[str, Any] = {"versionId": version_of(r, fields, verdict_seq), "lastUpdated": fhir_time(r.updated_at)}
    if r.status is Status.REJECTED:
        meta["tag"] = [{"system": STATUS_TAG, "code": "rejected", "display": "rejected by the home relay"}]
    out: dict[str, Any] = {"resourceType": "Appointment", "id": r.id, "meta": meta, "status": FHIR_STATUS[r.status]}
    if r.status is Status.REJECTED:
        why = f"rejected by the home relay: {r.reason or 'conflict'}"
        if r.conflict_with:
            why += f" (conflicts with Appointment/{r.conflict_with})"
        out["cancelationReason"] = {"text": why}
    elif r.status in (Status.CANCELLED, Status.ENTERED_IN_ERROR) and r.reason:
        out["cancelationReason"] = {"text": r.reason}
    if r.service:
        out["serviceType"] = [{"text": r.service}]
    out["start"] = fhir_time(slot.start)
    out["end"] = fhir_time(slot.end)
    out["minutesDuration"] = max(1, int((slot.end - slot.start).total_seconds() // 60))
    if r.requested != slot:
        out["requestedPeriod"] = [{"start": fhir_time(r.start), "end": fhir_time(r.end)}]
    out["created"] = fhir_time(r.created_at)
    if r.note:
        out["comment"] = r.note
    actor_type = str(fields.get(ACTOR_TYPE_FIELD, "Location"))
    actor_type = actor_type if actor_type in ACTOR_TYPES else "Location"
    place: dict[str, str] = {"reference": f"{actor_type}/{slot.resource}"}
    if resource_name and resource_name != slot.resource:
        place["display"] = resource_name
    out["participant"] = [
        {"actor": place, "required": "required", "status": PARTICIPANT_STATUS.get(r.status, "accepted")},
        {"actor": patient_reference(r.patient), "required": "required", "status": "accepted"},
    ]
    return out


def appointment_of(calendar: Calendar, reservation: Reservation, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FHIR Appointment of a reservation of ``calendar`` (its raw ``fields`` if at hand)."""
    if fields is None:
        fields = json.loads(str(calendar.reservations[reservation.id]))
    seq = calendar.decision_state(reservation.id, fields).seq
    found = calendar.resource(reservation.slot.resource)
    return appointment(reservation, fields, seq, found.name if found else None)


def schedule_of(calendar: Calendar, resource: Resource, horizon: tuple[datetime, datetime]) -> dict[str, Any]:
    """The FHIR Schedule of a declared resource of ``calendar``."""
    hours = calendar.opening_hours(resource.id)
    entry = calendar.resources_map.get(resource.id)
    has_hours = isinstance(entry, Map) and HOURS_KEY in entry
    comment = (f"capacity {resource.capacity}; " + ("opening hours set" if has_hours else "open around the clock")
               + (f", {len(hours.exceptions)} exception dates" if hours.exceptions else ""))
    return schedule(resource, horizon, comment)


def schedule(resource: Resource, horizon: tuple[datetime, datetime], comment: str) -> dict[str, Any]:
    """The FHIR Schedule of one resource (its id is the resource id)."""
    actor: dict[str, str] = {"reference": f"Location/{resource.id}"}
    if resource.name != resource.id:
        actor["display"] = resource.name
    return {"resourceType": "Schedule", "id": resource.id, "active": True, "actor": [actor],
            "planningHorizon": {"start": fhir_time(horizon[0]), "end": fhir_time(horizon[1])}, "comment": comment}


@dataclass(frozen=True, slots=True)
class SlotId:
    """A computed slot's id: ``<resource>.<yyyymmddHHMMSS>.<seconds>`` (decodable, so a slot can be read)."""

    resource: str
    start: datetime
    seconds: int

    def __str__(self) -> str:
        return f"{self.resource}.{self.start.strftime('%Y%m%d%H%M%S')}.{self.seconds}"


def slot(item: ComputedSlot) -> dict[str, Any]:
    """The FHIR Slot of one computed stretch."""
    sid = str(SlotId(item.resource, item.start, int((item.end - item.start).total_seconds())))
    out: dict[str, Any] = {"resourceType": "Slot", "schedule": {"reference": f"Schedule/{item.resource}"},
                           "status": str(item.status), "start": fhir_time(item.start), "end": fhir_time(item.end)}
    if FHIR_ID.fullmatch(sid):
        out = {"resourceType": "Slot", "id": sid, **{k: v for k, v in out.items() if k != "resourceType"}}
    return out


def outcome(code: str, diagnostics: str, *, severity: str = "error", expression: str | None = None) -> dict[str, Any]:
    """An OperationOutcome with one issue (``code`` from the FHIR issue-type value set)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


_AUDIT_ACTIONS = {"create": "C", "update": "U", "delete": "D"}


def audit_event_of(entry: AuditEntry) -> dict[str, Any]:
    """An accord audit entry as a FHIR R4 AuditEvent: who (the token's name and role, and the
    terminal's actor), where (the relay, as observer), when, which Appointment and which fields
    changed (names only) with the status before and after."""
    agent: dict[str, Any] = {"who": {"display": f"{entry.by} ({entry.role})"}, "requestor": True}
    if entry.actor:
        agent["altId"] = entry.actor
    detail = [{"type": "fields", "valueString": ",".join(entry.fields) or "-"},
              {"type": "status", "valueString": f"{entry.status_before or '-'} -> {entry.status_after or '-'}"}]
    return {
        "resourceType": "AuditEvent",
        "id": event_id(entry),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction",
                     "code": "create" if entry.op == "create" else "update"}],
        "action": _AUDIT_ACTIONS.get(entry.op, "U"),
        "recorded": fhir_time(entry.at),
        "outcome": "0",
        "agent": [agent],
        "source": {"observer": {"display": entry.relay}},
        "entity": [{"what": {"reference": f"Appointment/{entry.reservation}"}, "detail": detail}],
    }


_PROVENANCE_ACTIVITY = {"create": "CREATE", "update": "UPDATE", "delete": "DELETE"}


def event_id(entry: AuditEntry) -> str:
    """The FHIR id of an audit entry's AuditEvent and Provenance (a digest of its unique key)."""
    return hashlib.sha256(entry.key.encode()).hexdigest()[:40]


def provenance_of(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as a FHIR R4 Provenance of the Appointment it changed: the author (the
    token's name and role, the terminal's actor) and the relay that recorded it (custodian), when,
    and the activity (CREATE/UPDATE). Like the AuditEvent, it names no field values."""
    author: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                             "code": "author"}]},
        "who": {"display": f"{entry.by} ({entry.role})" + (f", {entry.actor}" if entry.actor else "")},
    }
    custodian = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                             "code": "custodian"}]},
        "who": {"display": entry.relay},
    }
    return {
        "resourceType": "Provenance",
        "id": event_id(entry),
        "target": [{"reference": f"Appointment/{entry.reservation}"}],
        "recorded": fhir_time(entry.at),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": _PROVENANCE_ACTIVITY.get(entry.op, "UPDATE")}]},
        "agent": [author, custodian],
        "reason": [{"text": f"fields: {','.join(entry.fields) or '-'}; status: "
                            f"{entry.status_before or '-'} -> {entry.status_after or '-'}"}],
    }


def bundle(entries: list[dict[str, Any]], *, base: str, total: int, links: dict[str, str],
           included: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A ``searchset`` Bundle of ``entries`` (resources, search mode ``match``) and ``included``
    ones (``_revinclude``: mode ``include``, not counted in ``total``), with paging ``links``."""
    def entry(resource: dict[str, Any], mode: str) -> dict[str, Any]:
        full = {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}"} if "id" in resource else {}
        return full | {"resource": resource, "search": {"mode": mode}}

    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": rel, "url": url} for rel, url in links.items()],
        "entry": [entry(e, "match") for e in entries] + [entry(e, "include") for e in included],
    }
