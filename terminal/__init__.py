"""accord's terminal: an offline-first client with its own store, synced with one relay.

``async with Terminal(relay="ws://127.0.0.1:8765", store="desk-1.sqlite", name="desk-1") as t:``
then ``book``/``reschedule``/``cancel``/``check_in``/``edit``/``get``/``reservations``, ``synced()``,
``decision()``, ``status()``, ``sync_state()``, ``on_change()``/``changes()``. The CLI is
``accord terminal`` (:mod:`accord.terminal.cli`).
"""

from .changes import ChangeKind, ChangeNotice, ChangeStream
from .client import Terminal
from .errors import DecisionTimeout, RelayRefused, RelayUnreachable, SyncTimeout, TerminalError
from .link import Backoff, LinkState
from .status import CalendarStatus, SyncState, TerminalStatus

__all__ = [
    "Backoff",
    "CalendarStatus",
    "ChangeKind",
    "ChangeNotice",
    "ChangeStream",
    "DecisionTimeout",
    "LinkState",
    "RelayRefused",
    "RelayUnreachable",
    "SyncState",
    "SyncTimeout",
    "Terminal",
    "TerminalError",
    "TerminalStatus",
]
