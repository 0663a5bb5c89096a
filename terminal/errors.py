"""Errors the terminal raises on top of the engine's :class:`~accord.engine.errors.AccordError` tree.

::

    AccordError
    └── TerminalError
        ├── RelayUnreachable   no connection to the relay (CLI exit 3); local work is kept
        ├── RelayRefused       the relay refused us (close 4401/4403, HTTP 401/403; CLI exit 4)
        ├── SyncTimeout        connected, but not everything was acknowledged in time (CLI exit 1)
        ├── DecisionTimeout    the home relay did not decide in time (CLI exit 1)
        └── AmbiguousId        a short reservation id matches several reservations (CLI exit 1)
"""

from __future__ import annotations

from accord.engine.errors import AccordError


class TerminalError(AccordError):
    """Root of the terminal's own errors."""


class RelayUnreachable(TerminalError):
    """The relay could not be reached; changes stay saved locally and go out on reconnect."""


class RelayRefused(TerminalError):
    """The relay refused this terminal (wrong or missing token, or a calendar outside its scope)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class SyncTimeout(TerminalError, TimeoutError):
    """Connected, but the relay did not acknowledge every local change before the deadline."""


class DecisionTimeout(TerminalError, TimeoutError):
    """The home relay has not decided on the reservation before the deadline."""


class AmbiguousId(TerminalError):
    """A shortened reservation id matches more than one reservation."""
