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

**In a relay cluster** (a shared PostgreSQL store, :mod:`.failover`) every process may be given
the same ``--home`` globs; only the holder of the cluster's home lease decides (``standby=True``:
nothing is decided until :meth:`Home.activate`). All of them sign with one cluster home key kept
in the store, and each home record names the process that wrote it, so a takeover is a handover
the new holder signs itself: for a calendar whose record names another process (or none), the
new holder writes the next epoch's record together with the previous epoch's verdicts signed
again (one update, so both are stored or neither), fenced by the lease epoch; once it is stored
the holder decides. Every decision it writes is fenced too: the store refuses it once another
process took the lease, so a deposed holder's late verdicts are never stored, applied or
forwarded, and every verdict that was stored before the takeover is carried over.
:meth:`Home.step_down` stops every decider at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pycrdt import Doc, Map

from accord.engine.authority import HomeRecord, RelayKey, Verdict, first_home, handover
from accord.engine.backoff import Backoff
from accord.engine.decisions import Decider, DecisionMade, carried_over, carry_over_plan
from accord.engine.errors import NotHome, StorageError
from accord.engine.model import CalendarId
from accord.engine.storage import Fence, Storage

from .calendars import CalendarHandle, check_verdicts_off_loop, matches
from .config import utc_now
from .metrics import Metrics
from .pipeline import CommitPipeline

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Deciding:
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

    def __init__(self, relay_id: str, key: RelayKey, globs: list[str], pipeline: CommitPipeline, metrics: Metrics, *,
                 hold_ttl_s: float | None = None, clock: Callable[[], datetime] = utc_now, standby: bool = False) -> None:
        self.clock = clock
        self.relay_id = relay_id
        self.key = key
        self.globs = globs
        self.pipeline = pipeline
        self.metrics = metrics
        self.hold_ttl = timedelta(seconds=hold_ttl_s) if hold_ttl_s else None
        self._deciding: dict[CalendarId, _Deciding] = {}
        self.not_home: dict[CalendarId, NotHome] = {}  # --home calendars another relay decides
        self._waiting: set[CalendarId] = set()  # --home calendars loaded empty: taken on their first write
        # A cluster member (standby) decides only between activate() and step_down(), with its
        # writes fenced; ``fence()`` says whether the lease is still valid (None: not any more).
        self.standby = standby
        self.active = not standby
        self.fence: Callable[[], Fence | None] = lambda: None
        self.catch_up: Callable[[CalendarId], Awaitable[None]] | None = None  # the cluster's: rows stored elsewhere
        # The key a cluster member had before the shared home key (relay_key:<id>), to hand its calendars over.
        self.member_key: Callable[[str], Awaitable[RelayKey | None]] | None = None
        self._taking: set[CalendarId] = set()  # takeover records submitted, not stored yet
        self._claims: dict[CalendarId, asyncio.Task[None]] = {}  # claims under way (claim_soon)
        self.fenced: Callable[[], None] = lambda: None  # the store refused a decision: the lease moved on
        self._fenced_seen = 0

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
        if handle.name in self._waiting and self._still_active():
            self._waiting.discard(handle.name)
            self._take(handle)

    def is_home_here(self, calendar: str) -> bool:
        """True if this relay decides ``calendar``, or will on its first write (loaded empty)."""
        return calendar in self._deciding or calendar in self._waiting

    async def calendar_loaded(self, handle: CalendarHandle) -> None:
        if self.standby:
            if self.active and self.is_home_of(handle.name):
                if handle.is_empty():  # taken on its first write (or claimed once rows come from elsewhere)
                    self._waiting.add(handle.name)
                else:
                    self.claim_soon(handle)
            return
        if self.is_home_of(handle.name):
            if handle.is_empty():
                self._waiting.add(handle.name)  # nothing to decide: no home record for a name only read
            else:
                await check_verdicts_off_loop(handle.replica.calendar)  # the decider reads every one
                if not handle.unloaded and handle.name not in self._deciding:
                    self._take(handle)

    # ---- a relay cluster's home lease ------------------------------------------------------------

    def activate(self) -> None:
        """This process holds the home lease now (:attr:`fence` gives its epoch): claim home
        calendars as they load (the caller loads those with work, :meth:`claim` each)."""
        self.active = True

    def step_down(self) -> None:
        """The lease is lost (or in doubt): stop deciding everything at once. Whatever this
        process submitted and has not stored yet is refused by the store if another took over."""
        if not self.active or not self.standby:
            return
        self.active = False
        for task in self._claims.values():
            task.cancel()
        self._claims.clear()
        for name in list(self._deciding):
            self._stop(name)
        self._waiting.clear()
        self._taking.clear()
        self.not_home.clear()
        log.warning("stepped down as the cluster's home: another process takes over", extra={"relay": self.relay_id})

    def _still_active(self) -> bool:
        """False (after stepping down) once a cluster member's lease is no longer valid."""
        if self.standby and self.active and self.fence() is None:
            self.step_down()
        return self.active

    def claim_soon(self, handle: CalendarHandle) -> None:
        """Claim ``handle`` (see :meth:`_claim`) in a task of its own (stepping down cancels it)."""
        if handle.name in self._claims:
            return
        task = asyncio.create_task(self._claim(handle), name=f"claim-{handle.name}")
        self._claims[handle.name] = task
        task.add_done_callback(self._claimed)

    def _claimed(self, task: asyncio.Task[None]) -> None:
        for name, claiming in list(self._claims.items()):
            if claiming is task:
                del self._claims[name]

    async def _claim(self, handle: CalendarHandle) -> None:
        retry = Backoff(initial_s=0.1, factor=2.0, max_s=2.0, jitter=0.25)
        attempt = 0
        while self.active and not handle.unloaded:
            try:
                await self._claim_once(handle)
                return
            except StorageError as exc:  # the store is failing: its rows are needed first; try again
                log.warning("home calendar not claimed yet", extra={"calendar": handle.name, "error": str(exc)})
            except Exception:  # a bug: log it; the other calendars go on
                log.exception("home claim error", extra={"calendar": handle.name})
                return
            await asyncio.sleep(retry.delay_s(attempt))
            attempt += 1

    def close(self) -> None:
        """Stop claiming (the relay stops)."""
        for task in self._claims.values():
            task.cancel()
        self._claims.clear()

    async def _claim_once(self, handle: CalendarHandle) -> None:
        """Decide ``handle`` as the lease holder: catch it up with every row stored before the
        takeover (so that every verdict a replica may have counted is carried over), then take
        it, directly (its record names this process and key) or by a takeover record."""
        name = handle.name
        if name in self._deciding or name in self._taking or name in self._waiting:
            return
        if self.catch_up is not None:
            await self.catch_up(name)
        if handle.unloaded or not self._still_active():
            return
        if handle.is_empty():
            self._waiting.add(name)
            return
        home = handle.replica.calendar.home_record
        if home is not None and home.relay_id == self.relay_id and home.public_key == self.key.public:
            await check_verdicts_off_loop(handle.replica.calendar)  # the decider reads every one
            if not handle.unloaded and self._still_active() and name not in self._deciding:
                self._take(handle)
            return
        signer = self.key
        if home is not None and home.public_key != self.key.public:  # a home from before the shared key?
            found = await self.member_key(home.relay_id) if self.member_key is not None else None
            if found is None or found.public != home.public_key:
                self._refuse(handle, NotHome(name, home.relay_id, home.epoch))
                return  # a home outside this cluster: only it can hand the calendar over
            signer = found
        if not handle.unloaded and self._still_active() and handle.replica.calendar.home_record == home:
            await self._take_over(handle, home, signer)

    async def _take_over(self, handle: CalendarHandle, current: HomeRecord | None, signer: RelayKey) -> None:
        """Write, fenced, the record that makes this process the calendar's home (epoch 1 if it
        has none; else signed by ``signer``, ``current``'s key) and, in the same update, the
        previous home's verdicts signed again (checked and signed in a worker thread)."""
        started = time.perf_counter()
        calendar = handle.replica.calendar
        if current is None:
            record, encoded = first_home(handle.name, self.relay_id, self.key)
            signed: list[tuple[str, str, Verdict]] = []
        else:
            record, encoded = handover(current, signer, self.relay_id, self.key.public)
            signed = await asyncio.to_thread(self._sign_again, handle.name, carry_over_plan(calendar, skip_decided=False),
                                             current, record.epoch)
        fence = self.fence()
        moved_on = calendar.home_record != current or handle.name in self._deciding or handle.name in self._taking
        if fence is None or handle.unloaded or moved_on:
            return  # stepped down, or the calendar moved on meanwhile: claimed again if need be
        sink: Doc[Any] = Doc()
        captured: list[bytes] = []
        sink.observe(lambda event: captured.append(event.update))
        homes, verdicts = sink.get("homes", type=Map), sink.get("verdicts", type=Map)
        origin = ("decider", self.relay_id)
        with sink.transaction(origin=origin):
            for entry_key, text, _verdict in signed:
                verdicts[entry_key] = text
            homes[record.entry_key(encoded)] = encoded
        # Once the record is applied, reads of these verdicts under it need no signature check.
        calendar.verifier.remember({(key, text): verdict for key, text, verdict in signed}, record)
        self._taking.add(handle.name)
        log.info("taking over as home", extra={"calendar": handle.name, "epoch": record.epoch,
                                               "previous": current.relay_id if current else "-",
                                               "lease_epoch": fence.epoch, "verdicts": len(signed),
                                               "ms": round((time.perf_counter() - started) * 1000, 1)})
        for update in captured:
            self.pipeline.submit_withheld(handle, update, origin, fence)

    def _sign_again(self, calendar: str, plan: Any, previous: HomeRecord, epoch: int) -> list[tuple[str, str, Verdict]]:
        """``(entry key, encoded, verdict)`` of every verdict carried over (in a worker thread)."""
        out = []
        for _rid, again, _current in carried_over(calendar, plan, previous, self.relay_id, epoch):
            text = again.sign(self.key)
            out.append((again.entry_key(text), text, again))
        return out

    # ---- deciding --------------------------------------------------------------------------------

    def _take(self, handle: CalendarHandle) -> None:
        sink: Doc[Any] = Doc()  # a fresh Yjs client per take: its clocks start where nobody has been
        captured: list[bytes] = []
        sink.observe(lambda event: captured.append(event.update))
        try:
            decider = Decider(handle.replica.calendar, self.relay_id, self.key, self.hold_ttl,
                              sink=sink.get("verdicts", type=Map))
        except NotHome as exc:
            self._refuse(handle, exc)
            return
        self.not_home.pop(handle.name, None)
        deciding = self._deciding[handle.name] = _Deciding(decider, sink, captured)
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

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        self._waiting.discard(handle.name)
        self._taking.discard(handle.name)
        self._stop(handle.name)

    def batch_stored(self, handles: list[CalendarHandle]) -> None:
        """Decide the requests that just became durable here (and notice a change of home)."""
        if self.standby:
            self._cluster_batch_stored(handles)
            return
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

    def _cluster_batch_stored(self, handles: list[CalendarHandle]) -> None:
        if self.metrics.fenced_writes != self._fenced_seen:  # another process took over the lease
            self._fenced_seen = self.metrics.fenced_writes
            if self.active:
                log.warning("the store refused this home's decisions (fenced): stepping down",
                            extra={"relay": self.relay_id, "fenced": self._fenced_seen})
                self.step_down()
                self.fenced()
        if not self._still_active():
            return
        now = self.clock()
        for handle in handles:
            name = handle.name
            if name in self._waiting:
                if not handle.is_empty():  # content came from elsewhere: take it as any claim does
                    self._waiting.discard(name)
                    self.claim_soon(handle)
                continue
            if name in self._taking:
                home = handle.replica.calendar.home_record
                if home is not None and home.relay_id == self.relay_id and home.public_key == self.key.public:
                    self._taking.discard(name)  # the takeover record is stored: decide from now on
                    self._take(handle)
                continue
            deciding = self._deciding.get(name)
            if deciding is None:
                continue
            if not deciding.decider.still_home():  # another epoch's record won (raced first records)
                self._stop(name)
                self.claim_soon(handle)
                continue
            self._record(handle, deciding, deciding.decider.decide_queued(now))

    def warnings(self) -> list[str]:
        """One line per --home calendar this relay does not decide (for /healthz)."""
        return [f"not home of {name}: {exc}" for name, exc in sorted(self.not_home.items())]

    def _record(self, handle: CalendarHandle, deciding: _Deciding, made: list[DecisionMade]) -> None:
        fence = self.fence() if self.standby else None
        if self.standby and fence is None:
            self.step_down()  # the lease went while deciding: these verdicts are not written
            return
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
