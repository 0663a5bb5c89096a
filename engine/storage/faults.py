"""Which store failures pass by themselves and which do not.

A relay retries a commit that failed for a *transient* reason (another process holds the
write lock, the disk is full, an I/O error) and holds its writers back meanwhile; a terminal
reports it to the caller, who may try again. A *fatal* failure (the file is corrupt or not a
database, a bug) is reported as it is and never retried: retrying would not help, and a
corrupt database is never replaced or read as empty.

:func:`classify_error` maps the driver's exceptions (``sqlite3`` and ``OSError``) to the
:mod:`engine.errors` tree, once, here, so that neither the adapters nor their callers guess
from message text.
"""

from __future__ import annotations

import errno
import sqlite3

from ..errors import StorageError, StoreCorrupt, StoreFault, TransientStorageError

# SQLite primary result codes (extended codes carry the primary one in their low byte).
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_PROTOCOL = 15  # a WAL-index lock race: transient by SQLite's own documentation
SQLITE_NOTADB = 26
SQLITE_IOERR_CORRUPTFS = SQLITE_IOERR | (33 << 8)

SQLITE_FAULTS = {
    SQLITE_BUSY: StoreFault.BUSY,
    SQLITE_LOCKED: StoreFault.BUSY,
    SQLITE_PROTOCOL: StoreFault.BUSY,
    SQLITE_FULL: StoreFault.FULL,
    SQLITE_IOERR: StoreFault.IO,
}
OS_FAULTS = {errno.ENOSPC: StoreFault.FULL, errno.EDQUOT: StoreFault.FULL, errno.EIO: StoreFault.IO}
# Drivers built without result codes on their exceptions still say what happened.
MESSAGE_FAULTS = (
    ("database is locked", StoreFault.BUSY),
    ("database table is locked", StoreFault.BUSY),
    ("database or disk is full", StoreFault.FULL),
    ("disk i/o error", StoreFault.IO),
)


def classify_error(exc: BaseException, store: str, doing: str) -> StorageError:
    """The :class:`StorageError` for ``exc``, raised while ``doing`` (e.g. ``"commit"``) on ``store``.

    Returns a :class:`TransientStorageError` (retry later) for busy/locked, disk full and I/O
    errors, :class:`StoreCorrupt` for a damaged file, and a plain :class:`StorageError` for
    anything else. A :class:`StorageError` passes through unchanged. The caller raises the
    result ``from exc``.
    """
    if isinstance(exc, StorageError):
        return exc
    detail = f"{doing} failed: {exc}"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == SQLITE_IOERR_CORRUPTFS or (code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)):
            return StoreCorrupt(f"store {store} is damaged ({detail}); it is not retried or replaced: "
                                "restore it from a backup (`accord store check` shows what is readable)")
        fault = SQLITE_FAULTS.get(code & 0xFF) if code is not None else _fault_from_message(str(exc))
        if fault is not None:
            return TransientStorageError(store, fault, detail)
    elif isinstance(exc, OSError) and exc.errno in OS_FAULTS:
        return TransientStorageError(store, OS_FAULTS[exc.errno], detail)
    return StorageError(f"store {store}: {detail}")


def _fault_from_message(message: str) -> StoreFault | None:
    lowered = message.lower()
    return next((fault for text, fault in MESSAGE_FAULTS if text in lowered), None)
