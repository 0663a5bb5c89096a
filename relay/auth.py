"""Tokens: who may connect, in which role, to which calendars.

A token file has one token per line::

    # token                role       calendar globs (space separated)
    desk-secret-1          terminal   clinic-*  shared/*
    partner-relay-secret   peer       *
    wallboard-secret       read-only  clinic-1

Roles: ``terminal`` (read and write reservations), ``admin`` (a terminal that may also change
resources and calendar settings), ``peer`` (another relay), ``read-only`` (read; any write
closes the connection with 4403). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import enum
import fnmatch
import hmac
from dataclasses import dataclass
from pathlib import Path

from accord.engine.errors import ValidationError


class Role(enum.StrEnum):
    """What a connection may do."""

    TERMINAL = "terminal"
    PEER = "peer"
    READ_ONLY = "read-only"
    ADMIN = "admin"  # a terminal that may also change resources (names, capacity) and calendar settings


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: Role
    globs: tuple[str, ...]

    def allows(self, calendar: str) -> bool:
        """True if ``calendar`` matches one of the token's globs."""
        return any(fnmatch.fnmatchcase(calendar, glob) for glob in self.globs)

    @property
    def can_write(self) -> bool:
        return self.role is not Role.READ_ONLY


OPEN_GRANT = Grant(Role.ADMIN, ("*",))  # an open relay (no token file, loopback only) trusts its clients
OPEN_PEER_GRANT = Grant(Role.PEER, ("*",))


class TokenBook:
    """The tokens from a token file, or none (open relay)."""

    def __init__(self, entries: dict[str, Grant] | None) -> None:
        self._entries = entries

    @property
    def is_open(self) -> bool:
        """True when no token file was given: every connection is allowed."""
        return self._entries is None

    @classmethod
    def load(cls, path: Path | None) -> TokenBook:
        """Parse a token file (see module docstring); None means an open relay.

        Raises:
            ValidationError: a line is malformed (the message names the line, never the token).
        """
        if path is None:
            return cls(None)
        entries: dict[str, Grant] = {}
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValidationError(f"cannot read token file {path}: {exc.strerror}") from None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 3:
                raise ValidationError(f"{path}:{number}: expected 'TOKEN ROLE GLOB...', got {len(parts)} fields")
            token, role, globs = parts[0], parts[1], tuple(parts[2:])
            try:
                entries[token] = Grant(Role(role), globs)
            except ValueError:
                raise ValidationError(
                    f"{path}:{number}: unknown role {role!r}; use terminal, admin, peer or read-only"
                ) from None
        return cls(entries)

    def check(self, token: str | None, *, wants_peer: bool = False) -> Grant | None:
        """The grant for ``token``, or None if it is missing or wrong."""
        if self._entries is None:
            return OPEN_PEER_GRANT if wants_peer else OPEN_GRANT
        if not token:
            return None
        found = None
        for known, grant in self._entries.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = grant
        return found
