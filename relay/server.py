"""The relay: a websocket server for one channel that persists, serves stock Yjs clients and
terminals, peers with other relays, and decides bookings for the calendars it is home to.

Endpoints on one port:

- ``ws://HOST:PORT/<calendar>``: y-websocket compatible, one calendar per connection;
  token as ``?token=``.
- ``ws://HOST:PORT/.accord/v1``: accord's multiplexed framing for terminals
  (``X-Accord-Role: terminal``) and peer relays (``X-Accord-Role: peer``); token as
  ``Authorization: Bearer`` or ``?token=``.
- ``GET /healthz`` (200 when the store answers), ``GET /metrics`` (Prometheus text), the board.
- ``/fhir/<calendar>/...``: the FHIR R4 facade (:mod:`.fhir`): reads on this port; reads and
  writes on ``fhir_port`` (websockets' HTTP side reads no request bodies).

With a TLS certificate (``tls_cert_path``/``tls_key_path``) every endpoint is served over TLS
on the same port (``wss://``, ``https://``) and plaintext connections fail their handshake. A
relay without TLS listens on loopback only, unless told ``insecure_plaintext`` (a reverse proxy
terminates TLS). :meth:`Relay.reload` (SIGHUP) re-reads the certificate without a restart.

:class:`Relay` is the composition root: it builds the parts, each with one job and explicit
inputs (:mod:`.routes` HTTP, :mod:`.admission` auth and update checks, :mod:`.hub`
subscriptions and events, :mod:`.pipeline` commit and fan-out, :mod:`.home` decisions,
:mod:`.peering` outbound links, :mod:`.cluster` the other processes on a shared PostgreSQL
store), wires them through named hooks, and runs their lifecycle: ``async with Relay(config) as
relay:``; on exit it stops accepting, closes peer links and clients with 1001, commits what is queued and closes the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import pycrdt
from websockets.asyncio.server import Server, serve

from accord import event_loop
from accord.engine.audit import AuditEntry
from accord.engine.backoff import Backoff
from accord.engine.calendar import Calendar
from accord.engine.errors import AccordError, CloseCode
from accord.engine.model import check_calendar_name
from accord.engine.storage import CompactionPolicy, MemoryStorage, Storage, open_storage
from accord.transport import client_tls_context

from . import board
from .admission import Admission
from .audit import Audit
from .auth import Grant, TokenBook
from .calendars import CalendarSet
from .cluster import Cluster, cluster_for, member_key, stored_member_key
from .cluster_home import ClusterHome
from .config import MEMORY_DB, RelayConfig, utc_now
from .connection import Connection
from .failover import HOME_LEASE, HomeFailover, PeeringFailover, cluster_home_key
from .fhir.api import FhirApi
from .fhir.http import HttpServer
from .home import Home, load_relay_key
from .hub import Hub
from .lease import Lease
from .metrics import Metrics
from .notice import Notice
from .peering import PeerLink
from .pipeline import CommitPipeline
from .receipts import Receipts
from .routes import Routes
from .tls import ServerCertificate

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
STORE_BUSY_TIMEOUT_MS = 250  # then the commit pipeline retries and reports it (see pipeline.py)
T = TypeVar("T")


@dataclass(slots=True)
class _Running:
    """The parts that exist while the relay runs (built by :meth:`Relay.start`)."""

    storage: Storage
    calendars: CalendarSet
    pipeline: CommitPipeline
    hub: Hub
    routes: Routes
    server: Server
    links: list[PeerLink]
    unloader: asyncio.Task[None]
    fhir: HttpServer | None = None
    cluster: Cluster | None = None  # on a store shared with other relay processes (PostgreSQL)
    failover: HomeFailover | None = None  # a cluster member with --home: the home lease
    peering: PeeringFailover | None = None  # a cluster member with --peer: the links are held once per cluster


@dataclass(frozen=True, slots=True)
class Reloaded:
    """What one :meth:`Relay.reload` did: the parts re-read (``"tls"``), and the parts that kept
    their old value, each with the error that stopped the new one."""

    reloaded: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)


class Relay:
    """One relay process's server. See the module docstring."""

    def __init__(self, config: RelayConfig, *, storage: Storage | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self._storage = storage  # given: used instead of opening config.db_path (tests, other stores)
        self.clock = clock  # the relay's UTC clock: decisions, receipts (tests pass another)
        self.metrics = Metrics()
        self.tokens = TokenBook.load(config.tokens_path)
        if self.tokens.is_open and config.host not in LOOPBACK and not config.insecure_open:
            raise AccordError(
                f"refusing to listen on {config.host} without --tokens: anyone could read patient data; "
                "give --tokens FILE, or --insecure-open if this network is trusted"
            )
        if (config.tls_cert_path is None) != (config.tls_key_path is None):
            raise AccordError("give both --tls-cert and --tls-key (the certificate chain and its private key), or neither")
        # Loaded now, so a bad certificate stops the relay before it binds (AccordError names the file).
        self.tls = (ServerCertificate(config.tls_cert_path, config.tls_key_path)
                    if config.tls_cert_path is not None and config.tls_key_path is not None else None)
        if self.tls is None and config.host not in LOOPBACK and not config.insecure_plaintext:
            raise AccordError(
                f"refusing to listen on {config.host} without TLS: tokens and patient data would cross the network "
                "in the clear; give --tls-cert FILE and --tls-key FILE, or --insecure-plaintext if a reverse proxy "
                "terminates TLS in front of this relay"
            )
        self._peer_tls = client_tls_context(config.peer_ca_path) if config.peer_ca_path is not None else None
        self.admission = Admission(self.tokens, max_reservations=config.max_reservations,
                                   max_calendar_bytes=config.max_calendar_bytes)
        self.notice = Notice()
        self.port = config.port
        self._running: _Running | None = None

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` of this relay (``wss://`` with TLS)."""
        return f"{'wss' if self.tls is not None else 'ws'}://{self.config.host}:{self.port}"

    @property
    def board_url(self) -> str:
        """Where a browser opens the front-desk board."""
        return self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1) + "/"

    @property
    def fhir_url(self) -> str:
        """The FHIR facade's root (``http(s)://HOST:FHIR_PORT/fhir``; reads only on the main port
        without ``fhir_port``). A calendar's FHIR base is this plus ``/<calendar>``."""
        running = self._running
        port = running.fhir.port if running is not None and running.fhir is not None else self.port
        return f"{'https' if self.tls is not None else 'http'}://{self.config.host}:{port}/fhir"

    @property
    def running(self) -> _Running:
        if self._running is None:
            raise AccordError("the relay is not running: use `async with Relay(config) as relay:`")
        return self._running

    @property
    def calendars(self) -> CalendarSet:
        return self.running.calendars

    @property
    def cluster(self) -> Cluster | None:
        """This process's part in a relay cluster (on a PostgreSQL store), or None."""
        return self.running.cluster

    @property
    def failover(self) -> HomeFailover | None:
        """The home lease of a cluster member started with ``--home`` (None otherwise)."""
        return self.running.failover

    @property
    def pipeline(self) -> CommitPipeline:
        return self.running.pipeline

    @property
    def connections(self) -> set[Connection]:
        return self.running.hub.connections

    async def start(self) -> None:
        """Open the store, wire the parts, listen, start peer links."""
        config = self.config
        pycrdt.Doc()  # pycrdt's first document in an event loop imports its async backend (~40 ms): not on a client's time
        storage: Storage
        if self._storage is not None:
            storage = self._storage
        elif str(config.db_path) == MEMORY_DB:
            storage = MemoryStorage()
        else:  # a SQLite file, or a postgresql:// URL (a cluster's shared store)
            storage = await open_storage(config.db_path, busy_timeout_ms=STORE_BUSY_TIMEOUT_MS)
        calendars = CalendarSet(storage)
        pipeline = CommitPipeline(storage, self.metrics, compaction=CompactionPolicy(config.compact_rows), notice=self.notice)
        cluster = cluster_for(storage, calendars, pipeline, self.notice)
        leased = cluster is not None and bool(config.home_globs)  # every member may be --home: one decides
        if leased:
            key = await cluster_home_key(storage)
        else:
            key = await (member_key(storage, config.relay_id) if cluster is not None else load_relay_key(storage))
        calendars.gate = pipeline.writable
        receipts = Receipts(config.relay_id, hold_ttl_s=config.hold_ttl_s, clock=self.clock)
        audit = Audit(config.relay_id, storage, clock=self.clock) if config.audit else None
        if audit is not None:
            pipeline.audit_source = audit.take
        hub = Hub(calendars, pipeline, self.admission, self.metrics, notice=self.notice, peer_globs=config.peer_globs,
                  max_message_bytes=config.max_message_bytes, outbox_messages=config.outbox_messages,
                  receipts=receipts, audit=audit,
                  max_subscriptions_per_connection=config.max_subscriptions_per_connection,
                  max_subscriptions_per_token=config.max_subscriptions_per_token)
        home = (ClusterHome if leased else Home)(config.relay_id, key, config.home_globs, pipeline, self.metrics,
                                                 hold_ttl_s=config.hold_ttl_s, clock=self.clock)
        hub.is_deciding = home.is_home_here
        hub.first_write = home.first_write
        calendars.loaded_hooks += [self.admission.calendar_loaded, home.calendar_loaded, hub.calendar_loaded]
        calendars.unloading_hooks += [home.calendar_unloading, hub.calendar_unloading, receipts.calendar_unloading,
                                      self.admission.forget]
        if audit is not None:
            calendars.unloading_hooks.append(audit.calendar_unloading)
        pipeline.change_hooks.append(self.admission.observe)
        pipeline.batch_hooks += [home.batch_stored, hub.batch_stored]
        failover = None
        if cluster is not None:  # first: a calendar's applied seq is set before the home decides it
            cluster.wants = lambda name: home.active and home.is_home_of(name)
            calendars.loaded_hooks.insert(0, cluster.calendar_loaded)
            calendars.unloading_hooks.append(cluster.calendar_unloading)
            if isinstance(home, ClusterHome):
                home.catch_up = cluster.catch_up
                home.member_key = lambda relay_id: stored_member_key(storage, relay_id)
                lease = Lease.lasting(cluster.storage.url, HOME_LEASE, config.relay_id, config.lease_s)
                failover = HomeFailover(lease, home, calendars, storage, self.metrics, self.notice, cluster.applied)
        pipeline.start()
        if cluster is not None:
            await cluster.start()
        if failover is not None:
            failover.start()
        peering = None
        if cluster is not None and config.peers:
            lease = Lease.lasting(cluster.storage.url, "peering", config.relay_id, config.lease_s)
            peering = PeeringFailover(lease, self._open_peers, self._close_peers, self.notice)
        reach = board.HomeReach(config.relay_id, calendars, is_deciding=home.is_deciding, peers=self._peers,
                                live_peers=lambda: sum(c.is_peer for c in hub.connections), clock=self.clock)
        routes = Routes(tokens=self.tokens, metrics=self.metrics, known_calendars=calendars.known,
                        store_health=pipeline.health, warnings=home.warnings, render_metrics=self.render_metrics,
                        open_connections=lambda: len(hub.connections), max_connections=config.max_connections,
                        reach=reach, relay_id=config.relay_id)
        fhir = FhirApi(tokens=lambda: self.tokens, calendars=calendars, hub=hub, clock=self.clock,
                       scheme="https" if self.tls is not None else "http")
        routes.fhir = fhir.handle
        # With TLS, websockets bounds the TLS handshake by open_timeout too (ssl_handshake_timeout).
        server = await serve(hub.serve, config.host, config.port, process_request=routes.process_request,
                             process_response=routes.process_response,
                             max_size=config.max_message_bytes, compression=None, open_timeout=config.handshake_timeout_s,
                             ssl=self.tls.context if self.tls is not None else None)
        sockets = list(server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else config.port
        unloader = asyncio.create_task(self._unload_idle(calendars, pipeline), name="idle-unloader")
        fhir_server = None
        if config.fhir_port is not None:
            fhir_server = HttpServer(fhir.handle, timeout_s=config.handshake_timeout_s)
            await fhir_server.start(config.host, config.fhir_port, self.tls.context if self.tls is not None else None)
        self._running = _Running(storage, calendars, pipeline, hub, routes, server, [], unloader, fhir_server, cluster,
                                 failover, peering)
        log.info("relay listening", extra={"relay": config.relay_id, "url": self.url, "board": self.board_url,
                                           "home": ",".join(config.home_globs) or "-",
                                           "auth": "open" if self.tokens.is_open else "tokens",
                                           "tls": self.tls.fingerprint if self.tls is not None else "off",
                                           "loop": event_loop.running_loop_name()})
        if self.tls is None and config.host not in LOOPBACK:
            log.warning("listening without TLS on a non-loopback address (--insecure-plaintext): tokens and patient "
                        "data cross the network in the clear unless a TLS proxy is in front of this relay",
                        extra={"relay": config.relay_id, "host": config.host})
        if peering is not None:
            peering.start()  # the links open once this process holds the cluster's peering lease
        else:
            self._open_peers()

    def _open_peers(self) -> None:
        for url in self.config.peers:
            self.add_peer(url)

    async def _close_peers(self) -> None:
        running = self._running
        if running is None:
            return
        links = [link for link in running.links if link.url in {spec.split()[0] for spec in self.config.peers}]
        running.links[:] = [link for link in running.links if link not in links]
        await asyncio.gather(*(link.close() for link in links))

    def add_peer(self, spec: str) -> PeerLink:
        """Keep an outbound link to a relay (as ``--peer`` does at start-up). ``spec`` is its URL,
        optionally followed by the calendar globs this link shares (``"wss://partner:8765 clinic-1
        shared/*"``); without them, the relay's ``peer_globs``."""
        config = self.config
        url, *globs = spec.split()
        calendars = tuple(globs) or tuple(config.peer_globs)
        hub = self.running.hub
        link = PeerLink(url, relay_id=config.relay_id, token=config.peer_token,
                        backoff=Backoff(initial_s=config.backoff_initial_s, max_s=config.backoff_max_s),
                        make_connection=lambda websocket, where: hub.peer_connection(websocket, where, calendars),
                        handler=hub,
                        max_message_bytes=config.max_message_bytes, open_timeout_s=config.handshake_timeout_s,
                        tls=self._peer_tls)
        self.running.links.append(link)
        link.start()
        return link

    async def reload(self) -> Reloaded:
        """Re-read what can change without a restart (SIGHUP runs this): the TLS certificate and
        key, and the token file.

        Handshakes after it present the new certificate; open connections keep streaming, except
        those whose token was revoked (4401) or narrowed (4403). A part whose new files are bad
        keeps its old value and is reported in ``failed`` (and logged as an error): fix the files
        and reload again. Works whether or not the relay is running.
        """
        reloaded: list[str] = []
        failed: dict[str, str] = {}
        if self.tls is not None:
            try:
                fingerprint = self.tls.reload()
            except AccordError as exc:
                failed["tls"] = str(exc)
                log.error("TLS certificate not reloaded; new handshakes keep the old one",
                          extra={"relay": self.config.relay_id, "error": str(exc), "tls": self.tls.fingerprint})
            else:
                reloaded.append("tls")
                log.info("TLS certificate reloaded", extra={"relay": self.config.relay_id, "tls": fingerprint})
        if self.config.tokens_path is not None:
            if await self.reload_tokens():
                reloaded.append("tokens")
            else:
                failed["tokens"] = "the token file did not parse (see the error above)"
        log.info("reloaded", extra={"relay": self.config.relay_id, "reloaded": ",".join(reloaded) or "-",
                                    "failed": ",".join(failed) or "-"})
        return Reloaded(tuple(reloaded), failed)

    async def reload_tokens(self) -> bool:
        """Re-read the token file and re-check every open connection (see
        :meth:`Hub.tokens_reloaded`); False if there is no file or it does not parse."""
        path = self.config.tokens_path
        if path is None:
            return False
        try:
            tokens = TokenBook.load(path)
        except AccordError as exc:
            log.error("token file not reloaded; the old tokens stay in force", extra={"error": str(exc)})
            return False
        self.tokens = self.admission.tokens = tokens
        running = self._running
        if running is None:
            return True
        running.routes.tokens = tokens
        closed, kept = await running.hub.tokens_reloaded(tokens)
        log.info("token file reloaded", extra={"connections_closed": closed, "connections_kept": kept})
        return True

    def _peers(self) -> dict[str, datetime | None]:
        """Relay id -> None if a peer link with it is up now, else when this relay's link to it
        went down (for the board's link badge). Ids are the ones relays name in their handshakes."""
        running = self._running
        if running is None:
            return {}
        found: dict[str, datetime | None] = {link.remote_id: link.down_since for link in running.links if link.remote_id}
        found |= {link.remote_id: None for link in running.links if link.remote_id and link.state == "up"}
        outbound = {link.url for link in running.links}
        found |= {c.peer_id: None for c in running.hub.connections
                  if c.is_peer and c.peer_id and c.peer_id not in outbound}
        return found

    async def stop(self) -> None:
        """Stop accepting, close peer links and clients with 1001, flush and close the store."""
        running, self._running = self._running, None
        if running is None:
            return
        running.server.close(close_connections=False)
        if running.fhir is not None:
            await running.fhir.close()
        running.pipeline.release_held()  # readers held by a failing store would keep their connections open
        if running.peering is not None:
            await running.peering.close()  # its links close just below with the others
        await asyncio.gather(*(link.close() for link in running.links))
        closing = [c.close(CloseCode.GOING_AWAY, "relay shutting down") for c in list(running.hub.connections)]
        await asyncio.gather(*closing, return_exceptions=True)
        await running.server.wait_closed()
        running.unloader.cancel()
        await asyncio.gather(running.unloader, return_exceptions=True)
        await running.pipeline.close()
        if running.failover is not None:  # after the last decision is stored: another process takes over
            await running.failover.close()
        if running.cluster is not None:
            await running.cluster.close()
        await running.storage.close()
        log.info("relay stopped", extra={"relay": self.config.relay_id})

    async def _unload_idle(self, calendars: CalendarSet, pipeline: CommitPipeline) -> None:
        interval = max(0.05, min(30.0, self.config.idle_unload_s / 4))
        while True:
            await asyncio.sleep(interval)
            if calendars.unload_idle(self.config.idle_unload_s, pipeline.busy):
                self.notice.notify()

    # ---- observing and writing (operators' tools and tests) ---------------------------------------

    def render_metrics(self) -> str:
        """The current metrics in Prometheus text format."""
        running = self._running
        roles = Counter(str(c.kind) for c in running.hub.connections) if running else Counter[str]()
        links = {link.url: link.state for link in running.links} if running else {}
        loaded = len(running.calendars.loaded) if running else 0
        loads = running.calendars.loads if running else 0
        text = self.metrics.render(connections=roles, calendars_loaded=loaded, peer_links=links, calendar_loads=loads)
        if running is not None and running.cluster is not None:
            text += running.cluster.render()
        if running is not None and running.failover is not None:
            text += running.failover.render()
        if running is not None and running.peering is not None:
            text += running.peering.render()
        return text

    async def wait_for(self, condition: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Wait until ``condition()`` is truthy; re-checked whenever a batch commits, a connection
        opens or closes, or calendars unload. Raises TimeoutError after ``timeout_s``."""
        return await self.notice.wait_for(condition, timeout_s)

    async def wait_committed(self, calendar: str, state_vector: bytes, timeout_s: float = 10.0) -> None:
        """Wait until ``calendar`` is committed to the store up to ``state_vector``."""
        await self.wait_for(lambda: self.calendars.is_committed(check_calendar_name(calendar), state_vector), timeout_s)

    async def edit(self, calendar: str, operation: Callable[[Calendar], T], *, by: Grant | None = None) -> T:
        """Run ``operation`` on the calendar as this relay's own write; return once it is stored
        (and forwarded). For seeding and operators' tools; clients write over websockets.

        ``by``: the token a request on this relay came with (the FHIR facade): the change is
        recorded in the audit trail as that token's, like a client's (without it: not recorded)."""
        handle = await self.running.calendars.get(check_calendar_name(calendar))
        audit = self.running.hub.audit
        if by is None or audit is None:
            result = operation(handle.replica.calendar)
            self.running.pipeline.submit_local(handle)
        else:
            self.running.pipeline.submit_local(handle)  # anything pending is not this edit's
            with audit.capture(handle, by):
                result = operation(handle.replica.calendar)
            change = audit.record_local(handle, by)
            if change is not None:
                await self.running.pipeline.submit(handle, change, None)
        await self.wait_committed(calendar, handle.replica.state_vector())
        return result

    async def audit(self, calendar: str, reservation_id: str | None = None) -> list[AuditEntry]:
        """The calendar's audit trail as stored here (every relay's entries for it, in the order
        this relay stored them), optionally of one reservation. See :mod:`accord.engine.audit`."""
        audit = self.running.hub.audit
        if audit is None:  # --no-audit
            return []
        return await audit.read(check_calendar_name(calendar), reservation_id)

    async def calendar(self, name: str) -> Calendar:
        """The relay's replica of calendar ``name`` (loaded if needed), for reading."""
        return (await self.running.calendars.get(check_calendar_name(name))).replica.calendar


__all__ = ["Grant", "Relay", "RelayConfig", "Reloaded"]
