"""Consistent copies of a store that may be in use: SQLite's online backup API.

A relay or terminal store is in WAL mode: recent commits live in ``<file>-wal`` until a
checkpoint moves them into the main file, so copying the main file alone (``cp``, ``rsync``)
can yield a file that opens fine and lacks those commits. :func:`backup` instead reads the
store through SQLite, in one read transaction: the copy holds exactly the commits made before
it began (writers go on meanwhile; WAL readers do not block them), and it is written in
rollback-journal mode, so the one file is the whole store and may be copied like any file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from ..errors import StoreUnavailable


async def backup(source: Path, dest: Path) -> None:
    """Copy the store at ``source`` to the new file ``dest`` and flush it to disk.

    ``source`` may be open in a running relay or terminal (another process or this one).
    ``dest`` must not exist. The copy is standalone (no ``-wal``); verify it before trusting it.

    Raises:
        StoreUnavailable: ``source`` cannot be read as SQLite, or ``dest`` cannot be written.
    """
    await asyncio.to_thread(_backup, source, dest)


async def make_standalone(path: Path) -> None:
    """Switch the closed store file at ``path`` to rollback-journal mode (what :func:`backup`
    writes), so that it needs no ``-wal`` beside it; a relay that opens it turns WAL on again."""
    await asyncio.to_thread(_make_standalone, path)


def _backup(source: Path, dest: Path) -> None:
    if dest.exists():
        raise StoreUnavailable(f"{dest} exists; a backup is written to a new file")
    try:
        # mode=rw: never create a missing source; a read-only open of a WAL file could fail
        # when no -shm exists (a stopped relay's store).
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open {source}: {exc}") from exc
    try:
        src.execute("PRAGMA busy_timeout=5000")
        dst = sqlite3.connect(dest)
        try:
            # pages=-1: every page in one step, i.e. one read snapshot. Copying in steps would
            # restart whenever another process commits, forever under steady writes.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        dest.unlink(missing_ok=True)
        raise StoreUnavailable(f"cannot back up {source}: {exc} (is it an accord store?)") from exc
    finally:
        src.close()
    fsync_path(dest)


def _make_standalone(path: Path) -> None:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot switch {path} to rollback-journal mode: {exc}") from exc
    finally:
        conn.close()
    fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's: its entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
