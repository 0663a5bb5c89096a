"""FHIR writes as accord operations: a POSTed Appointment as a booking, and the difference
between an Appointment and its new version (PUT, or PATCH applied first) as calendar calls.

Status moves a client may ask for: ``cancelled`` (with ``cancelationReason.text``),
``checked-in``, ``fulfilled``, ``noshow``, ``entered-in-error``; ``booked`` is the home's
decision and cannot be written. New ``start``/``end`` (or a new resource participant) is a
reschedule, a new ``comment`` an edit of the note. Anything else that differs is ignored,
except fields accord cannot represent, which get 400 naming them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from accord.engine.calendar import Calendar
from accord.engine.errors import InvalidTransition
from accord.engine.model import parse_time

from .mapping import ACTOR_TYPES, FHIR_STATUS


class Invalid(ValueError):
    """A FHIR body accord cannot take; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Booking:
    """What a POSTed Appointment asks for."""

    resource: str
    actor_type: str
    start: datetime
    end: datetime
    patient: str
    service: str
    note: str


def _time(body: dict[str, Any], key: str) -> datetime:
    value = body.get(key)
    if value is None:
        raise Invalid(key, f"{key}: required (an instant such as 2026-12-01T09:00:00Z)")
    try:
        return parse_time(str(value))
    except Exception:
        raise Invalid(key, f"{key}: {value!r} is not an instant such as 2026-12-01T09:00:00Z") from None


def participants(body: dict[str, Any]) -> tuple[tuple[str, str] | None, str | None]:
    """The resource participant (actor type, id) and the patient, from ``participant``."""
    items = body.get("participant")
    if not isinstance(items, list):
        raise Invalid("participant", "participant: give the resource (Location/<id>) and the Patient")
    place: tuple[str, str] | None = None
    patient: str | None = None
    for item in items:
        actor = item.get("actor") if isinstance(item, dict) else None
        if not isinstance(actor, dict):
            raise Invalid("participant", "participant: each needs an actor reference")
        kind, _, ident = str(actor.get("reference", "")).partition("/")
        if kind == "Patient" and ident:
            patient = ident
        elif kind in ACTOR_TYPES and ident:
            place = (kind, ident)
        elif not kind and actor.get("display") and patient is None:
            patient = str(actor["display"])
        else:
            raise Invalid("participant", f"participant: actor {actor.get('reference')!r} is not a Patient or one of "
                                         f"{', '.join(ACTOR_TYPES)}")
    return place, patient


def read_booking(body: Any) -> Booking:
    """A POSTed Appointment as a booking request.

    Raises:
        Invalid: wrong resourceType, status, a missing start/end/participant (the field named).
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Appointment":
        raise Invalid("resourceType", "resourceType: the body must be an Appointment")
    if body.get("status", "proposed") not in ("proposed", "pending"):
        raise Invalid("status", "status: a new Appointment is proposed or pending; the home relay books it")
    start, end = _time(body, "start"), _time(body, "end")
    place, patient = participants(body)
    if place is None:
        raise Invalid("participant", "participant: name the resource, e.g. {\"actor\": {\"reference\": "
                                     "\"Location/room-1\"}}")
    if not patient:
        raise Invalid("participant", "participant: name the Patient, e.g. {\"actor\": {\"reference\": "
                                     "\"Patient/P-0042\"}}")
    service = ""
    kinds = body.get("serviceType")
    if isinstance(kinds, list) and kinds and isinstance(kinds[0], dict):
        codings = kinds[0].get("coding") or [{}]
        service = str(kinds[0].get("text") or codings[0].get("code") or "")
    return Booking(place[1], place[0], start, end, patient, service, str(body.get("comment", "")))


LIFECYCLE = {
    "cancelled": "cancel",
    "checked-in": "check_in",
    "fulfilled": "fulfil",
    "noshow": "no_show",
    "entered-in-error": "mark_entered_in_error",
}


def apply_changes(calendar: Calendar, rid: str, old: dict[str, Any], new: dict[str, Any], now: datetime) -> str:
    """Make ``calendar`` say what ``new`` says where it differs from ``old`` (see the module
    docstring). Returns ``rid``.

    Raises:
        Invalid: a field accord cannot take; InvalidTransition: a move the status forbids.
    """
    status = new.get("status")
    if status not in (*FHIR_STATUS.values(), "proposed"):
        raise Invalid("status", f"status: {status!r} is not an Appointment status")
    moves: list[tuple[str, dict[str, Any]]] = []
    start, end = _time(new, "start"), _time(new, "end")
    place, patient = participants(new)
    old_place, old_patient = participants(old)
    resource = place[1] if place else None
    if (start, end) != (_time(old, "start"), _time(old, "end")) or (place is not None and place != old_place):
        if resource is not None and calendar.resource(resource) is None:
            raise Invalid("participant", f"participant: the calendar declares no resource {resource!r}")
        moves.append(("reschedule", {"start": start, "end": end, "resource": resource}))
    if new.get("comment", "") != old.get("comment", "") or (patient and patient != old_patient):
        edits: dict[str, Any] = {"note": str(new.get("comment", ""))}
        if patient and patient != old_patient:
            edits["patient"] = patient
        moves.append(("edit", edits))
    if status != old.get("status") and status in LIFECYCLE:
        reason = new.get("cancelationReason", {})
        text = str(reason.get("text", "")) if isinstance(reason, dict) else ""
        args: dict[str, Any] = {"reason": text[:500]} if status in ("cancelled", "entered-in-error") else {}
        moves.append((LIFECYCLE[str(status)], args))
    elif status != old.get("status") and status in ("booked", "pending", "proposed") \
            and not (status in ("pending", "proposed") and moves and moves[0][0] == "reschedule"):
        raise InvalidTransition(f"status {status}: the calendar's home relay decides bookings; "
                                "cancel, check in, or reschedule instead")
    for method, kwargs in moves:
        getattr(calendar, method)(rid, now=now, **kwargs)
    return rid


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``target`` (a copy)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON Patch (add, replace, remove, test) applied to a copy of ``target``.

    Raises:
        Invalid: a malformed operation, a path that does not exist, a failed test.
    """
    if not isinstance(operations, list):
        raise Invalid("patch", "a JSON Patch is a list of operations")
    out = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str) or op.get("op") not in (
                "add", "replace", "remove", "test"):
            raise Invalid("patch", "each patch operation needs op (add, replace, remove, test) and path")
        steps = [s.replace("~1", "/").replace("~0", "~") for s in op["path"].split("/")[1:]]
        if not steps:
            raise Invalid("patch", "patch path must not be the whole resource")
        parent = out
        try:
            for step in steps[:-1]:
                parent = parent[int(step)] if isinstance(parent, list) else parent[step]
            last = steps[-1]
            if op["op"] == "test":
                got = parent[int(last)] if isinstance(parent, list) else parent[last]
                if got != op.get("value"):
                    raise Invalid("patch", f"patch test failed at {op['path']}")
            elif op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(index, op.get("value"))
                else:
                    parent[index] = op.get("value")
            else:
                if op["op"] == "replace" and last not in parent:
                    raise Invalid("patch", f"patch replace: nothing at {op['path']}")
                parent[last] = op.get("value")
        except (KeyError, IndexError, ValueError, TypeError):
            raise Invalid("patch", f"patch path {op['path']} does not exist") from None
    return out
