"""The CapabilityStatement: what the facade supports, and nothing more."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import mapping


def capability_statement(now: datetime) -> dict[str, Any]:
    """What this facade supports, and nothing more."""
    def param(name: str, kind: str, doc: str) -> dict[str, str]:
        return {"name": name, "type": kind, "documentation": doc}

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": mapping.fhir_time(now),
        "kind": "instance",
        "software": {"name": "accord relay"},
        "implementation": {"description": "accord FHIR facade: one base per calendar, /fhir/<calendar>"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {"cors": False, "description": "Authorization: Bearer TOKEN (the relay's token file and roles)"},
            "resource": [
                {"type": "Appointment",
                 "interaction": [{"code": c} for c in ("read", "search-type", "create", "update", "patch")],
                 "versioning": "versioned-update", "conditionalCreate": False, "conditionalUpdate": False,
                 "searchParam": [param("date", "date", "the shown slot overlaps (ge/gt/le/lt/eq)"),
                                 param("status", "token", "FHIR status codes, comma separated"),
                                 param("actor", "reference", "the resource (Location/<id>)"),
                                 param("patient", "reference", "Patient/<id>"),
                                 param("_id", "token", "reservation id"),
                                 param("_lastUpdated", "date", "the reservation's updated_at")],
                 "searchRevInclude": ["Provenance:target"],
                 "operation": [{"name": "find", "definition": "urn:accord:OperationDefinition/Appointment-find"}]},
                {"type": "Schedule", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [param("actor", "reference", "the resource"), param("_id", "token", "resource id")]},
                {"type": "AuditEvent", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [param("entity", "reference", "Appointment/<id>: that reservation's changes"),
                                 param("_count", "number", "page size")],
                 "documentation": "the relay's audit trail (accord relay --audit): who, where, when, which "
                                  "fields; never field values"},
                {"type": "Provenance", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [param("target", "reference", "Appointment/<id>: who made each version"),
                                 param("_count", "number", "page size")],
                 "documentation": "the audit trail as Provenance of each Appointment change (author and "
                                  "recording relay); also Appointment?_revinclude=Provenance:target"},
                {"type": "Slot", "interaction": [{"code": "read"}, {"code": "search-type"}],
                 "searchParam": [param("schedule", "reference", "Schedule/<resource>"),
                                 param("start", "date", "ge/lt bounds of the window (default: now + 7 days)"),
                                 param("status", "token", "free | busy | busy-tentative")]},
            ],
        }],
    }
