"""Every error accord raises, under one root.

::

    AccordError
    ├── ValidationError            caller gave input the model cannot accept
    │   ├── InvalidCalendarName
    │   └── InvalidReservation
    ├── InvalidTransition          a status change the lifecycle does not allow
    ├── NotHome                    --home names a calendar another relay decides
    ├── NotFound
    │   └── ReservationNotFound
    ├── ProtocolError              something wrong on the wire
    │   ├── RemoteProtocolError    the peer sent bytes we cannot accept (close the connection)
    │   │   ├── MalformedMessage
    │   │   └── MessageTooLarge
    │   └── LocalProtocolError     this side misused the state machine (a bug in the caller)
    └── StorageError               the store could not do it (fatal unless transient)
        ├── CorruptRecord          a stored row cannot be decoded; names calendar and row
        ├── StoreUnavailable       the database file cannot be opened or is not an accord store
        ├── StoreCorrupt           the database file itself is damaged: never retried
        └── TransientStorageError  busy/locked, disk full, I/O error: nothing was written; retry later

Remote errors carry the websocket close code that ends the connection, so the I/O layer
never has to guess: ``await ws.close(exc.close_code, exc.reason)``.
"""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Every way an accord connection ends, as a websocket close code."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    TOO_MANY_SUBSCRIPTIONS = 4429  # a connection or token asked for more calendars than the relay allows


class ExitCode(enum.IntEnum):
    """Every way an accord command ends, as a process exit status (the same for every subcommand)."""

    OK = 0
    ERROR = 1  # an error the user can fix; the message says how
    USAGE = 2  # bad command line
    UNREACHABLE = 3  # the relay could not be reached; local work is kept
    REFUSED = 4  # the relay refused the credentials or the calendar
    REJECTED = 5  # the home relay rejected the booking
    INTERRUPTED = 130  # Ctrl-C


class AccordError(Exception):
    """Root of every error accord raises on purpose."""


class ValidationError(AccordError):
    """Input the model cannot accept; the message says which field and what is allowed."""


class InvalidCalendarName(ValidationError):
    """A calendar name outside 1-128 characters of ``A-Za-z0-9._-/``."""


class InvalidReservation(ValidationError):
    """A reservation field is missing, too long, or inconsistent (e.g. end before start)."""


class InvalidTransition(AccordError):
    """A lifecycle move the status table does not allow (e.g. check in a cancelled reservation)."""


class NotHome(AccordError):
    """This relay was told to decide a calendar whose recorded home is another relay (or key)."""

    def __init__(self, calendar: str, home: str, epoch: int) -> None:
        super().__init__(
            f"calendar {calendar!r} is decided by {home} (home record epoch {epoch}); this relay will not decide it. "
            f"Remove it from --home here, or have {home} hand it over (accord relay handover)"
        )
        self.calendar = calendar
        self.home = home
        self.epoch = epoch


class NotFound(AccordError):
    """The named object does not exist on this replica (yet)."""


class ReservationNotFound(NotFound):
    """No reservation with this id on this replica; it may not have synced here yet."""


class ProtocolError(AccordError):
    """Something is wrong with a message on the wire."""

    close_code: CloseCode = CloseCode.PROTOCOL_ERROR

    @property
    def reason(self) -> str:
        """A close reason that fits the 123-byte limit of a websocket close frame."""
        return str(self).encode()[:120].decode(errors="ignore")


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot accept; close that connection, keep serving others."""


class MalformedMessage(RemoteProtocolError):
    """Truncated, garbage or unknown message."""

    close_code = CloseCode.INVALID_DATA


class MessageTooLarge(RemoteProtocolError):
    """A message over the configured size limit."""

    close_code = CloseCode.MESSAGE_TOO_BIG


class TooMuchPresence(RemoteProtocolError):
    """A connection announced more presence (awareness) entries, or larger ones, than allowed."""

    close_code = CloseCode.POLICY_VIOLATION


class LocalProtocolError(ProtocolError):
    """This side used the state machine wrongly: a bug in the caller, not in the peer."""


class StorageError(AccordError):
    """The store cannot do what was asked."""


class CorruptRecord(StorageError):
    """A stored row cannot be decoded. Nothing is deleted; the operator decides (``accord store check``)."""

    def __init__(self, calendar: str, row: int, detail: str) -> None:
        super().__init__(
            f"calendar {calendar!r}: stored update row {row} is corrupt ({detail}); "
            f"other calendars are unaffected; inspect with `accord store check`"
        )
        self.calendar = calendar
        self.row = row


class StoreUnavailable(StorageError):
    """The database cannot be opened, is not an accord store, or is newer than this version."""


class StoreCorrupt(StorageError):
    """The database file itself is damaged (SQLite reports it corrupt or not a database).

    Never retried and never replaced: the operator restores the file from a backup
    (``accord store check`` shows what is readable)."""


class StoreFault(enum.StrEnum):
    """Why a store operation failed for now: each may pass by itself, so callers retry."""

    BUSY = "busy"  # another connection holds the database's write lock (SQLITE_BUSY, SQLITE_LOCKED)
    FULL = "full"  # no space left on the disk or in the quota (SQLITE_FULL, ENOSPC, EDQUOT)
    IO = "io"  # the operating system reported an I/O error (SQLITE_IOERR, EIO)
    UNREACHABLE = "unreachable"  # the database server cannot be reached (PostgreSQL down, restarting, connection lost)


FAULT_ADVICE = {
    StoreFault.BUSY: "another process holds the database's write lock; it is retried until that process lets go",
    StoreFault.FULL: "the disk is full; free space and it is retried",
    StoreFault.IO: "the disk reported an I/O error; check the disk, it is retried",
    StoreFault.UNREACHABLE: "the database server cannot be reached; check that it runs, it is retried",
}


class TransientStorageError(StorageError):
    """A store operation failed for a reason that may pass (:class:`StoreFault`); nothing of it
    was written, so retrying the same operation later is safe.

    Args:
        store: which store (its path), for the operator.
        fault: what kind of failure.
        detail: the driver's own message (e.g. ``database is locked``).
    """

    def __init__(self, store: str, fault: StoreFault, detail: str) -> None:
        super().__init__(f"store {store}: {detail} ({fault}): {FAULT_ADVICE[fault]}")
        self.store = store
        self.fault = fault
        self.detail = detail
