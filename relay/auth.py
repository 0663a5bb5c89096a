"""Tokens: who may connect, in which role, to which calendars.

A token file has one token per line::

    # token (or its sha256)   role       calendar globs (space separated)   [name=NAME]
    sha256:9f86d08...         terminal   clinic-*  shared/*                 name=desk-1
    partner-relay-secret      peer       *                                  name=partner
    wallboard-secret          read-only  clinic-1
    sha256:60303ae...         monitor    *                                  name=prometheus

A token is written either as itself or as ``sha256:`` and the hex SHA-256 of it (``accord token
new`` mints a token and prints its line), so the file need not hold secrets. ``name=`` names the
token in logs and metrics (default ``line-N``); the secret itself is never logged.

Roles: ``terminal`` (read and write reservations), ``admin`` (a terminal that may also change
resources and calendar settings), ``peer`` (another relay), ``read-only`` (read; any write
closes the connection with 4403; no presence), ``monitor`` (``/metrics`` and ``/healthz``
detail only: no calendar). Tokens are compared in constant time.

The relay re-reads the file on SIGHUP (:meth:`TokenBook.load`, then the relay re-checks every
open connection's token: revoked ones are closed with 4401, narrowed ones with 4403).
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from accord.engine.errors import ValidationError


class Role(enum.StrEnum):
    """What a connection may do."""

    TERMINAL = "terminal"
    PEER = "peer"
    READ_ONLY = "read-only"
    ADMIN = "admin"  # a terminal that may also change resources (names, capacity) and calendar settings
    MONITOR = "monitor"  # /metrics and /healthz detail; opens no calendar


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token allows."""

    role: Role
    globs: tuple[str, ...]
    name: str = "open"  # how logs and metrics name the token (never the secret)

    def allows(self, calendar: str) -> bool:
        """True if ``calendar`` matches one of the token's globs (a monitor token opens none)."""
        return self.role is not Role.MONITOR and any(fnmatch.fnmatchcase(calendar, glob) for glob in self.globs)

    @property
    def can_write(self) -> bool:
        return self.role not in (Role.READ_ONLY, Role.MONITOR)

    @property
    def can_monitor(self) -> bool:
        """May read /metrics and /healthz detail."""
        return self.role in (Role.MONITOR, Role.ADMIN)

    def covers(self, other: Grant) -> bool:
        """True if this grant allows at least what ``other`` does (same role, no glob lost)."""
        return self.role is other.role and set(other.globs) <= set(self.globs)


OPEN_GRANT = Grant(Role.ADMIN, ("*",))  # an open relay (no token file, loopback only) trusts its clients
OPEN_PEER_GRANT = Grant(Role.PEER, ("*",))
HASH_PREFIX = "sha256:"


def token_hash(token: str) -> str:
    """The ``sha256:<hex>`` form of a token, as a token file may hold it."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class TokenBook:
    """The tokens from a token file, or none (open relay)."""

    def __init__(self, entries: dict[str, Grant] | None) -> None:
        self._entries = entries  # token, or sha256:<hex> of it -> grant

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
            names = [p.removeprefix("name=") for p in parts if p.startswith("name=")]
            parts = [p for p in parts if not p.startswith("name=")]
            if len(parts) < 3:
                raise ValidationError(f"{path}:{number}: expected 'TOKEN ROLE GLOB... [name=NAME]', "
                                      f"got {len(parts)} fields")
            token, role, globs = parts[0], parts[1], tuple(parts[2:])
            if token.startswith(HASH_PREFIX):
                digest = token.removeprefix(HASH_PREFIX)
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                    raise ValidationError(f"{path}:{number}: a sha256: token needs 64 hex digits")
                token = HASH_PREFIX + digest.lower()
            try:
                grant = Grant(Role(role), globs, names[-1] if names else f"line-{number}")
            except ValueError:
                raise ValidationError(
                    f"{path}:{number}: unknown role {role!r}; use terminal, admin, peer, read-only or monitor"
                ) from None
            if token in entries:
                raise ValidationError(f"{path}:{number}: the same token is on an earlier line")
            entries[token] = grant
        return cls(entries)

    def check(self, token: str | None, *, wants_peer: bool = False) -> Grant | None:
        """The grant for ``token``, or None if it is missing or wrong."""
        if self._entries is None:
            return OPEN_PEER_GRANT if wants_peer else OPEN_GRANT
        if not token:
            return None
        hashed = token_hash(token).encode()
        found = None
        for known, grant in self._entries.items():  # every entry, so the time does not tell which matched
            if hmac.compare_digest(known.encode(), hashed if known.startswith(HASH_PREFIX) else token.encode()):
                found = grant
        return found
