"""Handing a calendar to another home relay: ``accord relay key`` and ``accord relay handover``.

A calendar's home changes only by a record the current home signs (see
:mod:`accord.engine.authority`). Both commands work on a relay's store file while that relay is
stopped (the running relay would not see a row written beside it):

1. on the new home's machine, ``accord relay key --db relay-2.sqlite`` prints its public key
   (making the key on a new store);
2. with the current home stopped, ``accord relay handover --db relay-1.sqlite --calendar clinic-1
   --to relay-2 --to-key KEY`` signs and stores the handover record;
3. start relay-1 without ``--home`` for that calendar and relay-2 with it. relay-2 signs again
   every decision relay-1 made (no booking is decided twice) and decides from then on; whatever
   relay-1 might still sign no longer counts anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from accord.engine.authority import HomeRecord, handover
from accord.engine.errors import AccordError, ExitCode, ValidationError
from accord.engine.model import check_calendar_name, check_text
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage

from .home import load_relay_key

EXAMPLES = """examples:
  accord relay key --db relay-2.sqlite
  accord relay handover --db relay-1.sqlite --calendar clinic-1 --to relay-2 --to-key 3q2-7w...
"""


async def relay_public_key(db: Path) -> str:
    """The public key of the relay whose store is ``db`` (made on first use)."""
    storage = await SqliteStorage.open(db)
    try:
        return (await load_relay_key(storage)).public
    finally:
        await storage.close()


async def hand_over(db: Path, calendar: str, to_relay: str, to_key: str) -> HomeRecord:
    """Sign and store, in the current home's store ``db``, the record handing ``calendar`` over.

    Raises:
        ValidationError: the store's relay is not the calendar's home, or the target is malformed.
    """
    name = check_calendar_name(calendar)
    check_text("actor", to_relay, required=True)
    storage = await SqliteStorage.open(db)
    try:
        key = await load_relay_key(storage)
        replica = Replica(name, actor="handover")
        replica.load(await storage.load(name))
        current = replica.calendar.home_record
        if current is None:
            raise ValidationError(f"calendar {name!r} has no home recorded in {db}; nothing to hand over")
        if current.public_key != key.public:
            raise ValidationError(f"the relay of {db} is not the home of {name!r} (its home is {current.relay_id}, "
                                  f"epoch {current.epoch}); run this on the current home's store")
        record, encoded = handover(current, key, to_relay, to_key)
        replica.calendar.add_home_record(record, encoded)
        for change in replica.take_changes():
            await storage.append(name, change.update)
        return record
    finally:
        await storage.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accord relay", description=__doc__.split("\n\n")[0],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    key = commands.add_parser("key", help="print this relay's public key (the new home gives it to the old one)")
    key.add_argument("--db", type=Path, required=True, help="the relay's store file")
    move = commands.add_parser("handover", help="sign the record that makes another relay a calendar's home")
    move.add_argument("--db", type=Path, required=True, help="the CURRENT home's store file (stop that relay first)")
    move.add_argument("--calendar", required=True, help="the calendar to hand over")
    move.add_argument("--to", required=True, dest="to_relay", help="the new home's relay id (its --id)")
    move.add_argument("--to-key", required=True, help="the new home's public key (from `accord relay key`)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "handover" and not args.db.is_file():
        print(f"accord relay {args.command}: no store at {args.db}", file=sys.stderr)
        return ExitCode.ERROR
    try:
        if args.command == "key":
            print(asyncio.run(relay_public_key(args.db)))
        else:
            record = asyncio.run(hand_over(args.db, args.calendar, args.to_relay, args.to_key))
            print(f"{record.calendar}: home is now {record.relay_id} (epoch {record.epoch}); start {record.relay_id} "
                  f"with --home for it, and this relay without")
    except AccordError as exc:
        print(f"accord relay {args.command}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    return ExitCode.OK
