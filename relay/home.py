"""The home's decisions: for the calendars this relay is home to, book or reject pending requests.

A :class:`~accord.engine.decisions.Decider` is made for each home calendar when it loads (it
takes the calendar with a signed home record if nobody has, then decides every pending request,
oldest first) and after each stored batch decides the requests that just became durable here,
in arrival order: terminal clocks drift, arrival order at the home does not. Decisions are
verdicts signed with this relay's key (kept in its store; see :func:`load_relay_key`) and are
the relay's own writes: they go through the commit pipeline like any update.

A calendar that holds nothing yet (a name a client only read) is not taken when it loads: the
home record is written with the calendar's first real write (just before a client's first
write is applied, :meth:`Home.first_write`, or once a peer's first content is stored,
:meth:`Home.batch_stored`), so reading a name stores nothing. Until then the relay still counts as its home for admission
(:meth:`Home.is_home_here`).

``--home`` is a request, not a claim: a calendar whose records name another home is not
decided here. The relay logs why once, counts it in /metrics and lists it in /healthz; if the
records later name this relay (a handover), it starts deciding.

In a relay cluster on PostgreSQL the home is a :class:`~accord.relay.cluster_home.ClusterHome`:
it decides only while its process holds the cluster's home lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pycrdt import Doc, Map

from accord.engine.authority import RelayKey
from accord.engine.decisions import Decider, DecisionMade
from accord.engine.errors import NotHome
from accord.engine.model import CalendarId
from accord.engine.storage import Fence, Storage

from .calendars import CalendarHandle, matches, read_off_loop
from .config import utc_now
from .metrics import Metrics
from .pipeline import CommitPipeline

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Deciding:
    """A calendar this relay decides. Its decider writes verdicts into a document of its own
    (``sink``); what is captured there is stored before the calendar, and so any reader, gets
    it: no decision leaks uncommitted."""

    decider: Decider
    sink: Doc[Any]
    captured: list[bytes]


class Home:
    """Decides bookings for the calendars matching ``globs``.

    Plug :meth:`calendar_loaded`, :meth:`calendar_unloading` and :meth:`batch_stored` into the
    calendar set's and the pipeline's hooks.
    """

    active = True  # decides now (a cluster's home only while it holds the lease)

    def __init__(self, relay_id: str, key: RelayKey, globs: list[str], pipeline: CommitPipeline, metrics: Metrics, *,
                 hold_ttl_s: float | None = None, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        self.relay_id = relay_id
        self.key = key
        self.globs = globs
        self.pipeline = pipeline
        self.metrics = metrics
        self.hold_ttl = timedelta(seconds=hold_ttl_s) if hold_ttl_s else None
        self._deciding: dict[CalendarId, Deciding] = {}
        self.not_home: dict[CalendarId, NotHome] = {}  # --home calendars another relay decides
        self._waiting: set[CalendarId] = set()  # --home calendars loaded empty: taken on their first write
        # (epoch, serial) of the last verdict signed here per calendar, kept across Deciders: a
        # serial is never signed twice in an epoch (what a takeover adopts relies on it).
        self._serials: dict[CalendarId, tuple[int, int, str]] = {}

    def is_home_of(self, calendar: str) -> bool:
        """True if this relay decides bookings of ``calendar``."""
        return matches(calendar, self.globs)

    @property
    def deciding_count(self) -> int:
        """How many calendars this relay decides now."""
        return len(self._deciding)

    def is_deciding(self, calendar: str) -> bool:
        """True while this relay decides ``calendar`` (it is the recorded home, and loaded)."""
        return calendar in self._deciding

    def first_write(self, handle: CalendarHandle) -> None:
        """A client's first write to an empty calendar is about to be applied: take it now, so
        that its home record comes before any content and no reader sees requests without it.
        (First content from a peer is taken after it is stored instead, :meth:`batch_stored`:
        it may name another home, which this relay must not race.)"""
        if handle.name in self._waiting:
            self._waiting.discard(handle.name)
            self._take(handle)

    def is_home_here(self, calendar: str) -> bool:
        """True if this relay decides ``calendar``, or will on its first write (loaded empty)."""
        return calendar in self._deciding or calendar in self._waiting

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        if self.is_home_of(handle.name):
            if handle.is_empty():
                self._waiting.add(handle.name)  # nothing to decide: no home record for a name only read
            else:
                await read_off_loop(handle.replica.calendar)  # the decider reads every reservation
                if not handle.unloaded and handle.name not in self._deciding:
                    self._take(handle)

    # ---- deciding --------------------------------------------------------------------------------

    def _take(self, handle: CalendarHandle) -> None:
        sink: Doc[Any] = Doc()  # a fresh Yjs client per take: its clocks start where nobody has been
        captured: list[bytes] = []
        sink.observe(lambda event: captured.append(event.update))
        try:
            decider = Decider(handle.replica.calendar, self.relay_id, self.key, self.hold_ttl,
                              sink=sink.get("verdicts", type=Map), last_signed=self._serials.get(handle.name))
        except NotHome as exc:
            self._refuse(handle, exc)
            return
        self.not_home.pop(handle.name, None)
        deciding = self._deciding[handle.name] = Deciding(decider, sink, captured)
        log.info("deciding as home", extra={"calendar": handle.name, "epoch": decider.epoch})
        self._record(handle, deciding, decider.decide_all_pending(self.clock()))

    def _refuse(self, handle: CalendarHandle, exc: NotHome) -> None:
        if handle.name not in self.not_home:
            log.warning("not deciding: another relay is this calendar's home",
                        extra={"calendar": handle.name, "home": exc.home, "epoch": exc.epoch, "reason": str(exc)})
            self.metrics.home_conflicts[handle.name] = 1
        self.not_home[handle.name] = exc

    def _stop(self, name: CalendarId) -> None:
        deciding = self._deciding.pop(name, None)
        if deciding is not None:
            deciding.decider.close()
            self._serials[name] = deciding.decider.last_signed

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        self._waiting.discard(handle.name)
        self._stop(handle.name)

    def batch_stored(self, handles: list[CalendarHandle]) -> None:
        """Decide the requests that just became durable here (and notice a change of home)."""
        now = self.clock()
        for handle in handles:
            if handle.name in self._waiting:
                if not handle.is_empty():  # its first write is stored: take it now
                    self._waiting.discard(handle.name)
                    self._take(handle)
                continue
            deciding = self._deciding.get(handle.name)
            if deciding is None:
                if handle.name in self.not_home and handle.replica.calendar.home == self.relay_id:
                    self._take(handle)  # handed over to this relay
                continue
            if not deciding.decider.still_home():
                self._stop(handle.name)
                home = handle.replica.calendar.home_record
                self._refuse(handle, NotHome(handle.name, home.relay_id if home else "?", home.epoch if home else 0))
                continue
            self._record(handle, deciding, deciding.decider.decide_queued(now))

    def warnings(self) -> list[str]:
        """One line per --home calendar this relay does not decide (for /healthz)."""
        return [f"not home of {name}: {exc}" for name, exc in sorted(self.not_home.items())]

    def _record(self, handle: CalendarHandle, deciding: Deciding, made: list[DecisionMade],
                fence: Fence | None = None) -> None:
        """Log and count ``made``, and submit what the decider wrote (fenced by ``fence``)."""
        for decision in made:
            self.metrics.decisions[str(decision.outcome)] += 1
            log.info("booking decided", extra={"calendar": handle.name, "reservation": decision.reservation_id,
                                               "outcome": str(decision.outcome), "reason": decision.reason or "-",
                                               "conflict_with": decision.conflict_with or "-"})
        self.pipeline.submit_local(handle)  # the home record, written to the calendar itself
        updates, deciding.captured[:] = list(deciding.captured), []
        for update in updates:  # the verdicts: stored, then applied and forwarded
            self.pipeline.submit_withheld(handle, update, deciding.decider.origin, fence)


async def load_relay_key(storage: Storage) -> RelayKey:
    """This relay's signing key, made and stored on first start (a relay keeps its key with its
    data: a restored store restores the key; a new store is a new relay identity)."""
    stored = await storage.get_meta("relay_key")
    if stored:
        return RelayKey.from_bytes(bytes.fromhex(stored))
    key = RelayKey.generate()
    await storage.set_meta("relay_key", key.to_bytes().hex())
    return key
