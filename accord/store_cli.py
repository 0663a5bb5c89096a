"""``accord store``: operator commands for a store file (relay or terminal).

``export PATH --fhir OUT.ndjson`` writes FHIR Bulk Data NDJSON (one resource per line: every
calendar's Schedules, Appointments, the Slots of the next ``--slot-days`` days and its audit trail as
AuditEvents; see
:func:`export_fhir`). ``check PATH`` verifies SQLite's pages, every row's checksum, that every calendar's log
decodes into a document, and each calendar's audit chain (:mod:`accord.engine.audit`: every
row links to the one before, and the log holds every entry the document holds, as the document
holds it); exit 1 and one line per problem otherwise. It also warns when the file looks like a
copy that may lack its WAL (see :func:`copy_warnings`). ``history PATH CALENDAR [ID]`` prints the
audit trail (who, where, when, what: field names, never values). ``compact PATH`` merges
each calendar's log into one row (atomically per calendar). Neither ever deletes a corrupt row.
``backup SRC DEST`` copies a store, even one a relay or terminal is using, with SQLite's online
backup API, runs the checks of ``check`` on the copy, and only then puts it at DEST.

Every command but ``backup`` also takes a ``postgresql://`` URL instead of a file (a relay
cluster's shared store, :mod:`accord.engine.storage.postgres`); ``check`` then checks each
calendar's counter row against its rows instead of SQLite's pages. Back PostgreSQL up with its
own tools (``pg_dump``, base backups and WAL archiving).

``compact`` is safe on a live store (a relay or terminal running on it): each calendar's
snapshot replaces only rows it has read, in one transaction; rows committed meanwhile stay, and
the relay's own compactions work the same way (``tests/test_store_backup.py`` compacts while a
relay writes and finds every acknowledged update).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from accord.engine.audit import compare_with_document, document_entries, read_entries, verify_chain
from accord.engine.errors import AccordError, CorruptRecord, ExitCode, StoreUnavailable
from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.slots import compute_slots, holds_on, open_intervals, zone_of
from accord.engine.storage import Storage, is_postgres_url, merge_log, open_storage, redact
from accord.engine.storage.backup import backup, fsync_path, make_standalone

SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_MODE = 2  # the file format version bytes (header offsets 18 and 19) of a database in WAL mode
Target = Path | str  # a SQLite file, or a postgresql:// URL


class CheckedStore(Storage, Protocol):
    """What ``check`` reads beyond the Storage Protocol (SQLite and PostgreSQL stores have both)."""

    async def rows(self, calendar: CalendarId) -> list[tuple[int, bytes, int]]: ...

    async def integrity_check(self) -> list[str]: ...


def store_target(value: str) -> Target:
    """A store argument: a ``postgresql://`` URL stays a string, anything else is a file path."""
    return value if is_postgres_url(value) else Path(value)


def shown(target: Target) -> str:
    """``target`` for reports and messages (a URL without its password)."""
    return str(target) if isinstance(target, Path) else redact(target)


async def open_checked(target: Target) -> CheckedStore:
    """Open the SQLite file or PostgreSQL database ``target`` names."""
    return cast(CheckedStore, await open_storage(target))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accord store",
        description="Inspect and maintain an accord store (a relay's or a terminal's SQLite file).",
        epilog="examples:\n  accord store check relay-a.sqlite\n  accord store compact relay-a.sqlite\n"
        "  accord store backup relay-a.sqlite /backups/relay-a-$(date +%F).sqlite   # while the relay runs\n"
        "  accord store export relay-a.sqlite --fhir clinic.ndjson",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="verify pages, row checksums and that every calendar decodes")
    check.add_argument("path", type=store_target, help="a store file, or a postgresql:// URL")
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")
    compact = sub.add_parser("compact", help="merge each calendar's update log into one row (safe while a relay runs)")
    compact.add_argument("path", type=store_target, help="a store file, or a postgresql:// URL")
    compact.add_argument("--json", action="store_true", help="print the result as one JSON object")
    copy = sub.add_parser("backup", help="copy a store consistently (also while a relay or terminal uses it), "
                          "check the copy, and only then write it to DEST")
    copy.add_argument("path", type=store_target, metavar="SRC", help="the store to copy")
    copy.add_argument("dest", type=Path, metavar="DEST", help="the backup file to write (or a folder to write it into)")
    copy.add_argument("--force", action="store_true", help="replace DEST if it exists (the old file stays until the "
                      "new copy has passed its check)")
    copy.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_export_parser(sub)
    add_history_parser(sub)
    return parser


def is_wal_mode(path: Path) -> bool:
    """True if the SQLite file's header says WAL mode (reads 20 bytes)."""
    with path.open("rb") as file:
        header = file.read(20)
    return header.startswith(SQLITE_MAGIC) and header[18:20] == bytes([WAL_MODE, WAL_MODE])


def copy_warnings(path: Path) -> list[str]:
    """What a copied store file may lack, judged from the file's header and the files beside it.

    A store in WAL mode keeps its newest commits in ``PATH-wal`` until a checkpoint; a copy of
    ``PATH`` without it opens fine, passes every check, and lacks those commits. Reads only.
    """
    warnings = []
    wal, journal = Path(f"{path}-wal"), Path(f"{path}-journal")
    if wal.exists():
        warnings.append(
            f"{wal.name} is beside it: a relay or terminal has the store open (or was killed). Its newest commits "
            f"are in {wal.name}, so a copy of {path.name} alone (cp, rsync, a snapshot of one file) would lack them; "
            f"copy it with `accord store backup {path} DEST`")
    elif is_wal_mode(path):
        warnings.append(
            f"{path.name} is in WAL mode and has no {wal.name} beside it. If it is a copy (cp, rsync) of a store a relay "
            f"or terminal was using, it lacks every commit that was still in {wal.name} then, and this check cannot "
            "tell: it can say ok on a copy that holds no calendars at all. A store whose relay or terminal stopped "
            "cleanly has no WAL either; then nothing is missing. Take copies with `accord store backup SRC DEST`")
    if journal.exists():
        warnings.append(
            f"{journal.name} is beside it: a write was interrupted and SQLite rolls it back on the next open; keep "
            f"the two files together (a copy of {path.name} without it may hold half a transaction)")
    return warnings


def add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``accord store export``: its own subcommand, so other store commands stay apart."""
    export = sub.add_parser("export", help="write FHIR Bulk Data NDJSON (Schedule, Appointment, Slot, AuditEvent)")
    export.add_argument("path", type=store_target, help="a store file, or a postgresql:// URL")
    export.add_argument("--fhir", type=Path, required=True, metavar="OUT.ndjson", help="the NDJSON file to write")
    export.add_argument("--calendar", action="append", default=None, help="only this calendar (repeatable)")
    export.add_argument("--slot-days", type=int, default=30, help="days of Slots from today, 0-62 (default 30)")
    export.add_argument("--json", action="store_true", help="print the counts as one JSON object")


async def export_fhir(path: Target, out: Path, *, calendars: list[str] | None = None, slot_days: int = 30,
                      now: datetime | None = None) -> dict[str, object]:
    """Write every calendar's Schedules, Appointments, the next ``slot_days`` days of Slots and
    the audit trail this store holds (AuditEvents, oldest first) as NDJSON to ``out``
    (atomically: a temporary file renamed at the end); return the counts.

    Ids are unique within a calendar; each resource's ``meta.source`` names its calendar
    (``urn:accord:calendar:<name>``), since two calendars may declare the same resource id.

    Raises:
        CorruptRecord: a calendar's log is damaged (nothing is written).
    """
    from accord.relay.fhir import mapping

    if not 0 <= slot_days <= 62:
        raise AccordError(f"--slot-days {slot_days}: use 0 to 62")
    today = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    horizon = (today, today + timedelta(days=slot_days))
    counts = {"Schedule": 0, "Appointment": 0, "Slot": 0, "AuditEvent": 0}
    store = await open_storage(path)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as sink:
            for name in await store.calendars():
                if calendars and name not in calendars:
                    continue
                replica = Replica(name, actor="store-export")
                replica.load(await store.load(name))
                calendar = replica.calendar
                source = {"source": f"urn:accord:calendar:{name}"}

                def emit(resource: dict[str, Any], source: dict[str, str] = source) -> None:
                    resource["meta"] = {**resource.get("meta", {}), **source}
                    sink.write(json.dumps(resource, separators=(",", ":")) + "\n")
                    counts[resource["resourceType"]] += 1

                every = calendar.all_fields()
                for resource in calendar.resources():
                    emit(mapping.schedule_of(calendar, resource, horizon))
                for item in calendar.list():
                    emit(mapping.appointment_of(calendar, item, every[item.id]))
                if slot_days:
                    for resource in calendar.resources():
                        intervals = open_intervals(calendar.opening_hours(resource.id), zone_of(calendar.time_zone),
                                                   *horizon)
                        holds = holds_on(calendar.list(resource=resource.id, between=horizon), resource.id)
                        for computed in compute_slots(resource.id, intervals, holds, resource.capacity):
                            emit(mapping.slot(computed))
                for entry in read_entries(await store.audit_log(name)):
                    emit(mapping.audit_event_of(entry))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        await store.close()
    return {"ok": True, "path": shown(path), "out": str(out), "counts": counts}


def add_history_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``accord store history PATH CALENDAR [ID]``."""
    history = sub.add_parser(
        "history", help="print the audit trail of a calendar (or of one reservation): who, where, when, what",
        description="Print the audit trail as this store holds it: every relay's entries for the calendar, "
                    "in the order this store recorded them. Entries name the fields that changed, never their values.",
        epilog="example:\n  accord store history relay-a.sqlite clinic-1 0193f1c2-...",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    history.add_argument("path", type=store_target, help="a store file, or a postgresql:// URL")
    history.add_argument("calendar", help="calendar name, e.g. clinic-1")
    history.add_argument("reservation", nargs="?", default=None, help="only this reservation id")
    history.add_argument("--json", action="store_true", help="print JSON lines, one entry each")


async def store_history(path: Target, calendar: str, reservation: str | None) -> dict[str, object]:
    """The calendar's audit entries as plain data: ``{"ok": True, "entries": [...]}``."""
    store = await open_storage(path)
    try:
        rows = await store.audit_log(CalendarId(calendar))
    finally:
        await store.close()
    return {"ok": True, "path": shown(path), "calendar": calendar,
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


async def audit_problems(store: Storage, name: CalendarId, replica: Replica | None) -> tuple[int, list[str]]:
    """``(rows, problems)`` of a calendar's audit chain, checked against its document if it decoded."""
    rows = await store.audit_log(name)
    problems = verify_chain(name, rows)
    if replica is not None:
        problems += compare_with_document(name, rows, document_entries(replica.calendar.receipts))
    return len(rows), problems


async def check_store(path: Target) -> dict[str, object]:
    """Return a report: ``{"ok": bool, "calendars": {...}, "problems": [...]}``. A file in
    rollback-journal mode (a backup) is left in that mode."""
    standalone = isinstance(path, Path) and not is_wal_mode(path)
    store = await open_checked(path)
    problems: list[str] = []
    calendars: dict[str, dict[str, int]] = {}
    try:
        pages = await store.integrity_check()
        if pages != ["ok"]:
            problems.extend(f"{'sqlite' if isinstance(path, Path) else 'postgres'}: {line}" for line in pages)
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
    if standalone and isinstance(path, Path) and is_wal_mode(path):
        await make_standalone(path)
    return {"ok": not problems, "path": shown(path), "calendars": calendars, "problems": problems}


async def backup_store(source: Path, dest: Path, *, force: bool = False) -> dict[str, object]:
    """Copy ``source`` with SQLite's online backup API, check the copy as ``check`` does, and
    only if it passes move it to ``dest``. Returns the check's report of the copy (``ok`` false
    and ``dest`` untouched if it failed).

    Raises:
        StoreUnavailable: ``source`` is not an accord store, or ``dest`` cannot be written.
    """
    if dest.is_dir():
        dest = dest / source.name
    if dest.resolve() == source.resolve():
        raise StoreUnavailable(f"{dest} is the store itself; write the backup to another file")
    if dest.exists() and not force:
        raise StoreUnavailable(f"{dest} exists; choose another file, or give --force to replace it")
    for suffix in ("-wal", "-shm", "-journal"):
        if Path(f"{dest}{suffix}").exists():
            raise StoreUnavailable(f"{dest}{suffix} exists: {dest} is a store in use (or not closed cleanly); "
                                   "back up to another file")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        await backup(source, partial)
        report = await check_store(partial)
        if report["ok"]:
            partial.replace(dest)
            fsync_path(dest.parent)  # the rename itself is durable
    finally:
        partial.unlink(missing_ok=True)
    return {**report, "path": str(dest), "source": str(source)}


async def compact_store(path: Target) -> dict[str, object]:
    """Merge every calendar's log into one row; return before/after row and byte counts."""
    store = await open_storage(path)
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
    return {"ok": True, "path": shown(path), "calendars": result}


def _export(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(export_fhir(args.path, args.fhir, calendars=args.calendar, slot_days=args.slot_days))
    except (AccordError, OSError) as exc:
        print(f"accord store: {exc} (nothing was written)", file=sys.stderr)
        return ExitCode.ERROR
    counts: dict[str, int] = report["counts"]  # type: ignore[assignment]
    print(json.dumps(report) if args.json else
          f"{args.fhir}: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if isinstance(args.path, str):  # a PostgreSQL URL
        if args.action == "backup":
            print("accord store: backup copies SQLite files; back a PostgreSQL store up with pg_dump or base backups",
                  file=sys.stderr)
            return ExitCode.USAGE
    elif not args.path.is_file():
        print(f"accord store: {args.path} does not exist or is not a file", file=sys.stderr)
        return ExitCode.ERROR
    elif args.path.stat().st_size == 0:  # opening it would turn it into a new, empty store
        print(f"accord store: {args.path} is empty: not an accord store (nothing was changed)", file=sys.stderr)
        return ExitCode.ERROR
    if args.action == "export":
        return _export(args)
    warnings = copy_warnings(args.path) if args.action == "check" and isinstance(args.path, Path) else []
    try:
        if args.action == "history":
            print_history(asyncio.run(store_history(args.path, args.calendar, args.reservation)), args.json)
            return ExitCode.OK
        if args.action == "check":
            report = asyncio.run(check_store(args.path))
        elif args.action == "backup":
            report = asyncio.run(backup_store(args.path, args.dest, force=args.force))
        else:
            report = asyncio.run(compact_store(args.path))
    except AccordError as exc:
        print(f"accord store: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    if args.action == "check":
        report["warnings"] = warnings
    if args.json:
        print(json.dumps(report))
    elif args.action in ("check", "backup"):
        for name, info in report["calendars"].items():  # type: ignore[attr-defined]
            print(f"{name}: {info['rows']} rows, {info['bytes']} bytes, {info['reservations']} reservations, "
                  f"{info['audit_rows']} audit rows")
        for problem in report["problems"]:  # type: ignore[attr-defined]
            print(f"problem: {problem}")
        for warning in warnings:
            print(f"warning: {warning}")
        if args.action == "backup":
            print(f"backed up {args.path} to {report['path']}; the copy passed its check" if report["ok"] else
                  f"the copy of {args.path} failed its check: {report['path']} was not written; the source may be "
                  "damaged: run `accord store check` on it")
        else:
            print("ok" if report["ok"] else "damaged: nothing was changed; restore the file from a backup "
                  "(README: Backups and restore)")
    else:
        for name, info in report["calendars"].items():  # type: ignore[attr-defined]
            print(f"{name}: {info['rows_before']} -> {info['rows_after']} rows, "
                  f"{info['bytes_before']} -> {info['bytes_after']} bytes")
    return ExitCode.OK if report["ok"] else ExitCode.ERROR
