"""A replica of one calendar: the pycrdt document plus what sync needs from it.

Both relays and terminals hold one :class:`Replica` per open calendar. It captures every
transaction's *incremental* update (local writes and applied remote updates alike) as a
:class:`Change`, which is what gets persisted and forwarded: never a full-state diff on the
hot path (see ``pycrdt-limits.md``: a diff carries the whole delete set).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycrdt import Doc, TransactionEvent

from .calendar import Calendar
from .errors import MalformedMessage
from .protocol import EMPTY_UPDATE, decode_state_vector


@dataclass(frozen=True, slots=True)
class Change:
    """One committed transaction: its update bytes and the document state right after it
    (and, for a captured transaction, right before it: empty if unknown)."""

    update: bytes
    state_vector: bytes
    before_state: bytes = b""


class Replica:
    """One calendar document and its change capture.

    Args:
        name: calendar name.
        actor: who local writes are attributed to.
        client_id: Yjs client id for local writes (random if None). Never share one between live replicas.
    """

    def __init__(self, name: str, *, actor: str = "local", client_id: int | None = None) -> None:
        self.doc: Doc[Any] = Doc(client_id=client_id) if client_id is not None else Doc()
        self.calendar = Calendar(name, self.doc, actor=actor)
        self.name = self.calendar.name
        self._changes: list[Change] = []
        self._subscription = self.doc.observe(self._capture)

    def _capture(self, event: TransactionEvent) -> None:
        self._changes.append(Change(event.update, event.after_state, event.before_state))  # type: ignore[attr-defined]

    def take_changes(self) -> list[Change]:
        """Changes committed since the last call (local writes and applied updates), oldest first."""
        changes, self._changes = self._changes, []
        return changes

    def apply(self, update: bytes, origin: object = None) -> Change | None:
        """Apply a remote update; return the change it made, or None if it brought nothing new.

        ``origin`` tags the transaction for observers that need to tell sources apart; leave it
        None on hot paths (an untagged apply is measurably cheaper).

        Raises:
            MalformedMessage: the bytes are not a Yjs update. The document is unchanged, except
                for an update that decodes but that Yrs refuses half way through integrating it
                (e.g. an item whose parent is not a map or array): what it integrated stays, and
                the next :meth:`take_changes` reports it, so that the store can keep up with the
                document (it cannot be rolled back).
        """
        if update == EMPTY_UPDATE or not update:
            return None
        before = len(self._changes)
        # The common case is untagged (about 25% cheaper in pycrdt). Opening a tagged transaction
        # inside another origin's transaction raises RuntimeError here: the caller's bug, not the peer's.
        transaction = contextlib.nullcontext() if origin is None else self.doc.transaction(origin=origin)
        try:
            with transaction:
                self.doc.apply_update(update)
        except (ValueError, RuntimeError) as exc:  # Yrs decode errors, and integration errors
            raise MalformedMessage(f"not a Yjs update: {exc}") from None
        except BaseException as exc:  # pyo3 PanicException derives from BaseException
            if type(exc).__name__ != "PanicException":
                raise
            raise MalformedMessage(f"not a Yjs update: {exc}") from None
        if len(self._changes) > before:
            return self._changes.pop()
        return None

    def load(self, updates: Iterable[bytes]) -> None:
        """Apply stored updates in one transaction; they are not reported as changes."""
        with self.doc.transaction(origin="load"):
            for update in updates:
                if update and update != EMPTY_UPDATE:
                    self.doc.apply_update(update)
        self._changes.clear()

    def state_vector(self) -> bytes:
        """The encoded state vector (a few bytes)."""
        return self.doc.get_state()

    def clocks(self) -> dict[int, int]:
        """The state vector as ``{client: clock}``."""
        return decode_state_vector(self.doc.get_state())

    def diff(self, state_vector: bytes) -> bytes:
        """Everything a replica at ``state_vector`` is missing, as one update.

        Raises:
            MalformedMessage: ``state_vector`` cannot be decoded.
        """
        decode_state_vector(state_vector)
        try:
            return self.doc.get_update(state_vector)
        except ValueError as exc:
            raise MalformedMessage(f"not a state vector: {exc}") from None

    def full_state(self) -> bytes:
        """The whole document as one update."""
        return self.doc.get_update()

    def close(self) -> None:
        """Stop capturing changes."""
        self.doc.unobserve(self._subscription)
