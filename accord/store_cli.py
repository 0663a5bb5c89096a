"""``accord store``: operator commands for a store file (relay or terminal).

``check PATH`` verifies SQLite's pages, every row's checksum, that every calendar's log
decodes into a document, and each calendar's audit chain (:mod:`accord.engine.audit`: every
row links to the one before, and the log holds every entry the document holds, as the document
holds it); exit 1 and one line per problem otherwise. ``history PATH CALENDAR [ID]`` prints the
audit trail (who, where, when, what: field names, never values). ``compact PATH`` merges
each calendar's log into one row (atomically per calendar). Neither ever deletes a corrupt row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import zlib
from pathlib import Path

from accord.engine.audit import compare_with_document, document_entries, read_entries, verify_chain
from accord.engine.errors import AccordError, CorruptRecord, ExitCode
from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage, merge_log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord store",
        description="Inspect and maintain an accord store (a relay's or a terminal's SQLite file).",
        epilog="examples:\n  accord store check relay-a.sqlite\n  accord store compact relay-a.sqlite",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="verify pages, row checksums and that every calendar decodes")
    check.add_argument("path", type=Path)
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    compact = sub.add_parser("compact", help="merge each calendar's update log into one row")
    compact.add_argument("path", type=Path)
    compact.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_history_parser(sub)
    return parser


def add_history_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``accord store history PATH CALENDAR [ID]``."""
    history = sub.add_parser(
        "history", help="print the audit trail of a calendar (or of one reservation): who, where, when, what",
        description="Print the audit trail as this store holds it: every relay's entries for the calendar, "
                    "in the order this store recorded them. Entries name the fields that changed, never their values.",
        epilog="example:\n  accord store history relay-a.sqlite clinic-1 0193f1c2-...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("path", type=Path)
    history.add_argument("calendar", help="calendar name, e.g. clinic-1")
    history.add_argument("reservation", nargs="?", default=None, help="only this reservation id")
    history.add_argument("--json", action="store_true", help="print JSON lines, one entry each")


async def store_history(path: Path, calendar: str, reservation: str | None) -> dict[str, object]:
    """The calendar's audit entries as plain data: ``{"ok": True, "entries": [...]}``."""
    store = await SqliteStorage.open(path)
    try:
        rows = await store.audit_log(CalendarId(calendar))
    finally:
        await store.close()
    return {"ok": True, "path": str(path), "calendar": calendar,
            "entries": [entry.to_json() for entry in read_entries(rows, reservation)]}


def print_history(report: dict[str, object], as_json: bool) -> None:
    """One line per entry (JSON lines under ``--json``)."""
    entries: list[dict[str, object]] = report["entries"]  # type: ignore[assignment]
    for entry in entries:
        if as_json:
            print(json.dumps(entry))
            continue
        fields = ",".join(entry["fields"])  # type: ignore[arg-type]
        more = f" (+{entry['more_fields']} more)" if entry["more_fields"] else ""
        actor = f" actor={entry['actor']}" if entry["actor"] else ""
        actor += f" via={entry['via']}" if entry.get("via") else ""
        print(f"{entry['at']} {entry['relay']} {entry['by']} ({entry['role']}){actor} {entry['op']} "
              f"{entry['reservation']} {entry['status_before'] or '-'} -> {entry['status_after'] or '-'} "
              f"fields={fields}{more}")
    if not as_json and not entries:
        print("no audit entries")


async def audit_problems(store: SqliteStorage, name: CalendarId, replica: Replica | None) -> tuple[int, list[str]]:
    """``(rows, problems)`` of a calendar's audit chain, checked against its document if it decoded."""
    rows = await store.audit_log(name)
    problems = verify_chain(name, rows)
    if replica is not None:
        problems += compare_with_document(name, rows, document_entries(replica.calendar.receipts))
    return len(rows), problems


async def check_store(path: Path) -> dict[str, object]:
    """Return a report: ``{"ok": bool, "calendars": {...}, "problems": [...]}``."""
    store = await SqliteStorage.open(path)
    problems: list[str] = []
    calendars: dict[str, dict[str, int]] = {}
    try:
        pages = await store.integrity_check()
        if pages != ["ok"]:
            problems.extend(f"sqlite: {line}" for line in pages)
        for name in await store.calendars():
            rows = await store.rows(name)
            good = []
            for seq, data, crc in rows:
                if not isinstance(data, bytes) or zlib.crc32(data) != crc:
                    problems.append(str(CorruptRecord(name, seq, "checksum mismatch")))
                else:
                    good.append(data)
            replica: Replica | None = None
            try:
                replica = Replica(name, actor="store-check")
                replica.load(good)
                count = len(replica.calendar.reservations)
            except Exception as exc:
                problems.append(f"calendar {name!r}: log does not decode ({exc})")
                count = -1
                replica = None
            audit_rows, audit_found = await audit_problems(store, name, replica)
            problems += audit_found
            calendars[name] = {"rows": len(rows), "bytes": sum(len(r[1] or b"") for r in rows), "reservations": count,
                               "audit_rows": audit_rows}
        for name in set(await store.audit_calendars()) - set(calendars):  # audit rows without a log
            problems.append(f"calendar {name!r}: audit rows but no update log")
    finally:
        await store.close()
    return {"ok": not problems, "path": str(path), "calendars": calendars, "problems": problems}


async def compact_store(path: Path) -> dict[str, object]:
    """Merge every calendar's log into one row; return before/after row and byte counts."""
    store = await SqliteStorage.open(path)
    result: dict[str, dict[str, int]] = {}
    try:
        for name in await store.calendars():
            rows, top = await store.log_length(name)
            updates = await store.load(name)  # raises CorruptRecord: never compact over damage
            before = sum(len(u) for u in updates)
            if rows > 1:
                snapshot = merge_log(updates)
                await store.compact(name, top, snapshot)
            after_rows, _ = await store.log_length(name)
            result[name] = {"rows_before": rows, "rows_after": after_rows, "bytes_before": before,
                            "bytes_after": sum(len(u) for u in await store.load(name))}
    finally:
        await store.close()
    return {"ok": True, "path": str(path), "calendars": result}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.path.is_file():
        print(f"accord store: {args.path} does not exist or is not a file", file=sys.stderr)
        return ExitCode.ERROR
    if args.path.stat().st_size == 0:  # opening it would turn it into a new, empty store
        print(f"accord store: {args.path} is empty: not an accord store (nothing was changed)", file=sys.stderr)
        return ExitCode.ERROR
    try:
        if args.action == "history":
            print_history(asyncio.run(store_history(args.path, args.calendar, args.reservation)), args.json)
            return ExitCode.OK
        report = asyncio.run(check_store(args.path) if args.action == "check" else compact_store(args.path))
    except AccordError as exc:
        print(f"accord store: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    if args.json:
        print(json.dumps(report))
    elif args.action == "check":
        for name, info in report["calendars"].items():  # type: ignore[attr-defined]
            print(f"{name}: {info['rows']} rows, {info['bytes']} bytes, {info['reservations']} reservations, "
                  f"{info['audit_rows']} audit rows")
        for problem in report["problems"]:  # type: ignore[attr-defined]
            print(f"problem: {problem}")
        print("ok" if report["ok"] else "damaged: nothing was changed; restore the file from a replica or backup")
    else:
        for name, info in report["calendars"].items():  # type: ignore[attr-defined]
            print(f"{name}: {info['rows_before']} -> {info['rows_after']} rows, "
                  f"{info['bytes_before']} -> {info['bytes_after']} bytes")
    return ExitCode.OK if report["ok"] else ExitCode.ERROR
