"""Relay settings, with the defaults a small clinic deployment wants."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES

MEMORY_DB = ":memory:"
DEFAULT_MAX_RESERVATIONS = 1_000_000
DEFAULT_MAX_CALENDAR_BYTES = 1 << 30


def utc_now() -> datetime:
    """The relay's clock (the default; tests give the relay another)."""
    return datetime.now(UTC)


@dataclass(slots=True)
class RelayConfig:
    """Everything ``accord relay`` can be told.

    Args:
        relay_id: this relay's name, used in logs, metrics, peering and decisions.
        host, port: where to listen (``port=0`` picks a free port; read ``Relay.port``).
        db_path: SQLite store; ``":memory:"`` keeps everything in memory (not durable); a
            ``postgresql://`` URL: a PostgreSQL database shared by a cluster of relay processes.
        peers: ``ws://`` URLs of relays to keep an outbound link to.
        peer_token: token presented on outbound peer links.
        peer_globs: calendars shared with peers (default: all).
        home_globs: calendars this relay decides bookings for.
        tokens_path: token file; without one the relay is open and only listens on loopback
            unless ``insecure_open``.
        tls_cert_path, tls_key_path: PEM certificate chain and unencrypted key: the relay then
            serves ``wss://`` and ``https://`` only (reloaded by :meth:`Relay.reload`, SIGHUP).
        insecure_plaintext: allow a non-loopback ``host`` without TLS (behind a TLS-terminating
            proxy on a trusted network); a warning is logged on every start.
        peer_ca_path: verify ``wss://`` peers against the CA certificates in this PEM file only
            (default: the system's CA store).
        audit: record every client change in the audit trail (see :mod:`accord.relay.audit`).
        max_reservations, max_calendar_bytes: per-calendar quotas; a write that would pass one
            is refused (the calendar stays as it was, readable by everyone).
        hold_ttl_s: the hold TTL of calendars that set none (``meta.hold_ttl``): as home, reject
            pending bookings that first reached a relay longer ago than this; as any relay,
            stamp the requests of its clients with receipts (see :mod:`accord.engine.receipts`).
        fhir_port: serve the FHIR facade (reads and writes) on this port as well (0: a free one;
            None: only FHIR reads, on ``port``; see :mod:`accord.relay.fhir`).
        max_subscriptions_per_connection, max_subscriptions_per_token: calendars one client
            connection, and all connections of one token together, may open (peers are not capped).
        lease_s: in a cluster on PostgreSQL, the home and peering leases' time (see
            :mod:`accord.relay.lease`): a frozen or cut-off holder is replaced after about this long.
    """

    relay_id: str
    host: str = "127.0.0.1"
    port: int = 8765
    db_path: Path | str = "accord-relay.sqlite"
    peers: list[str] = field(default_factory=list)
    peer_token: str | None = None
    peer_globs: list[str] = field(default_factory=lambda: ["*"])
    home_globs: list[str] = field(default_factory=list)
    tokens_path: Path | None = None
    insecure_open: bool = False
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    insecure_plaintext: bool = False
    peer_ca_path: Path | None = None
    hold_ttl_s: float | None = None
    fhir_port: int | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_connections: int = 1000
    audit: bool = False
    max_reservations: int = DEFAULT_MAX_RESERVATIONS
    max_calendar_bytes: int = DEFAULT_MAX_CALENDAR_BYTES
    max_subscriptions_per_connection: int = 1000
    max_subscriptions_per_token: int = 10_000
    outbox_messages: int = 4096
    idle_unload_s: float = 300.0
    lease_s: float = 3.0
    compact_rows: int = 1000
    handshake_timeout_s: float = 10.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
